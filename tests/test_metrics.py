"""The Product1M metrics on hand-computed cases (DESIGN.md section 5)."""

import pytest

from egecmp_ray.retrieval.metrics import evaluate_rankings, queries_without_positives, query_metrics

GALLERY = {"g1": "A", "g2": "A", "g3": "A", "g4": "B", "g5": "C", "g6": "C"}
COUNTS = {"A": 3, "B": 1, "C": 2}


def test_single_label_query():
    # positives A at ranks 2 and 4 of [C, A, B, A]; 3 A items exist
    ranked = ["C", "A", "B", "A"]
    ap, prec, ar = query_metrics(ranked, ["A"], COUNTS, cutoffs=[10])[10]
    # k = min(10, 3, 4) = 3: hits at rank 2 only -> AP = (1/2) / 1, Prec = 1/3
    assert ap == pytest.approx(0.5) and prec == pytest.approx(1 / 3)
    assert ar == pytest.approx(2 / 3)  # quota min(10, 3) = 3, found 2


def test_multi_label_query_with_repeated_labels():
    ranked = ["A", "C", "B", "A", "C", "A"]
    out = query_metrics(ranked, ["A", "A", "B"], COUNTS, cutoffs=[10, 2])
    ap, prec, ar = out[10]
    # positives per label occurrence: |P| = n(A) + n(A) + n(B) = 3 + 3 + 1 = 7, so
    # k = min(10, 7, 6) = 6; hits at 1, 3, 4, 6 -> AP = (1 + 2/3 + 3/4 + 4/6) / 4, Prec = 4/6
    assert ap == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 6) / 4) and prec == pytest.approx(4 / 6)
    # floor(10/3) = 3: e_A = min(2 * 3, 3) = 3 (3 found), e_B = min(3, 1) = 1 (1 found)
    assert ar == pytest.approx(1.0)
    ap2, prec2, ar2 = out[2]
    assert ap2 == pytest.approx(1.0) and prec2 == pytest.approx(0.5)
    assert ar2 == 0.0  # floor(2/3) = 0: every quota is 0; the labels stay in the denominator


def test_repeated_label_changes_k_not_membership():
    # [A, A, B] vs [A, B]: with 7 vs 4 positives, k at R=10 over a 6-long list is 6 vs 4
    ranked = ["A", "C", "B", "A", "C", "A"]
    once = query_metrics(ranked, ["A", "B"], COUNTS, cutoffs=[10])[10]
    twice = query_metrics(ranked, ["A", "A", "B"], COUNTS, cutoffs=[10])[10]
    assert once[1] == pytest.approx(3 / 4) and twice[1] == pytest.approx(4 / 6)


def test_label_absent_from_gallery_stays_in_the_recall_denominator():
    ap, prec, ar = query_metrics(["B", "A"], ["B", "Z"], COUNTS, cutoffs=[10])[10]
    # Z has no gallery item: positives are B's 1 item; k = 1
    assert (ap, prec) == (1.0, 1.0)
    # B: quota min(5, 1) = 1, found -> 1; Z: quota 0, contributes 0 but counts: (1 + 0) / 2
    assert ar == pytest.approx(0.5)


def test_self_match_leaves_list_and_counts():
    """Dev as both: the query g1 (label A) is in the gallery; n(A) is 2 for it, not 3."""
    out = evaluate_rankings({"g1": ["g1", "g2", "g4", "g3"]}, {"g1": ["A"]}, GALLERY)
    # list after removal: [A, B, A]; |P| = 2 -> k = 2: hit at 1 only -> AP 1, Prec 1/2
    assert out["top10"]["mAP"] == pytest.approx(1.0)
    assert out["top10"]["Prec"] == pytest.approx(0.5)
    # AR: quota min(10, 2) = 2, both A items in the top 10 -> 1 (with n(A) = 3 it would be 2/3)
    assert out["top10"]["mAR"] == pytest.approx(1.0)
    assert out["identical"]["Prec@1"] == 1.0


def test_a_query_only_itself_answers_has_no_positive():
    gallery = {"g1": "A", "g4": "B"}
    assert queries_without_positives({"g1": ["A"], "q": ["B"]}, gallery) == 1
    out = evaluate_rankings({"g1": ["g4"]}, {"g1": ["A"]}, gallery)
    assert out["top10"] == {"mAP": 0.0, "Prec": 0.0, "mAR": 0.0}


def test_queries_with_no_positive_score_zero_and_count():
    out = evaluate_rankings({"q1": ["g4", "g1"], "q2": ["g1"]}, {"q1": ["B"], "q2": ["Z"]},
                            GALLERY)
    assert out["top10"]["mAP"] == pytest.approx(0.5)  # q1: 1.0, q2: 0.0
    assert out["counts"] == {"queries": 2, "identical_queries": 2, "gallery": 6}
    assert set(out) >= {"top10", "top50", "top100", "identical"}
    assert out["identical"]["mAP@1"] == pytest.approx(0.5)
    assert out["identical"]["Prec@5"] == pytest.approx(0.5)  # q1: k = min(5, 1, 2) = 1


def test_metrics_are_fractions_and_multi_label_queries_skip_identical():
    out = evaluate_rankings({"q": ["g1", "g5", "g4"]}, {"q": ["A", "B"]}, GALLERY)
    assert "identical" not in out
    for r in ("top10", "top50", "top100"):
        assert all(0.0 <= v <= 1.0 for v in out[r].values())
