"""Client-side hybrid fusion: each side normalised within the query's candidates."""

import numpy as np
import pytest

from egecmp_ray.retrieval.fusion import fuse, fuse_one


def hits(pairs):
    return [{"id": i, "score": s} for i, s in pairs]


def test_zscore_fusion_by_hand():
    dense = hits([("a", 0.9), ("b", 0.5), ("c", 0.1)])  # z: 1.2247, 0, -1.2247
    lexical = hits([("c", -30.0), ("d", -10.0)])  # Lite negates BM25: magnitudes 30, 10 -> z 1, -1
    out = fuse_one(dense, lexical, (0.5, 0.5), top_k=4)
    z = 1.224744871
    want = {"a": 0.5 * z + 0.5 * -1,  # not listed lexically: that side's last candidate
            "b": 0.0 + 0.5 * -1, "c": 0.5 * -z + 0.5 * 1, "d": 0.5 * -z + 0.5 * -1}
    assert [h["id"] for h in out] == sorted(want, key=lambda i: -want[i])
    assert all(h["score"] == pytest.approx(want[h["id"]]) for h in out)
    # a server's positive BM25 scores give the same list
    assert fuse_one(dense, hits([("c", 30.0), ("d", 10.0)]), (0.5, 0.5), 4) == out


def test_minmax_weights_and_top_k():
    dense = hits([("a", 0.9), ("b", 0.7)])
    lexical = hits([("b", 12.0), ("a", 2.0)])
    assert [h["id"] for h in fuse_one(dense, lexical, (0.9, 0.1), 2, "minmax")] == ["a", "b"]
    assert [h["id"] for h in fuse_one(dense, lexical, (0.1, 0.9), 2, "minmax")] == ["b", "a"]
    assert len(fuse_one(dense, lexical, (0.5, 0.5), 1, "minmax")) == 1


def test_one_side_empty_and_l2_and_fields():
    dense = hits([("a", 0.1), ("b", 0.4)])  # L2 distances: a is nearer
    only = fuse_one(dense, [], (0.5, 0.5), 2, dense_higher_better=False)
    assert [h["id"] for h in only] == ["a", "b"]
    rich = fuse_one([{"id": "x", "score": 1.0, "title": "t"}], [], (0.5, 0.5), 1)
    assert rich[0]["title"] == "t" and np.isfinite(rich[0]["score"])
    assert fuse([[], []], [[], []], (0.5, 0.5), 3) == [[], []]
    with pytest.raises(ValueError, match="unknown normaliser"):
        fuse_one(dense, [], (0.5, 0.5), 1, "softmax")
    with pytest.raises(ValueError):
        fuse([[]], [], (0.5, 0.5), 1)  # one list per query on both sides
