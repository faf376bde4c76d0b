"""Product1M retrieval metrics exactly as DESIGN.md section 5 defines them (CAPTURE's
``evaluate_suit.py``).

Per query with labels ``L`` (a list, duplicates kept) and a ranked gallery list (the query's own
id removed), for R in (10, 50, 100), with n(l) = #gallery items whose first label is l:

- positives: per label *occurrence*, |P| = sum over l in L of n(l) (a label listed twice counts
  its items twice); k = min(R, |P|, len(list));
- AP@R = (1/h) * sum over positive items i <= k of (hits up to i) / i, h = hits in the top k;
- Prec@R = hits in the top k / k;
- AR@R: quota e_l = min(mult(l) * floor(R / |L|), n(l)); r_l = min(#top-R items with l, e_l);
  AR = (sum over distinct l with e_l > 0 of r_l / e_l) / #distinct labels of L, so a label the
  gallery cannot answer stays in the denominator.

When the query item is itself in the gallery (dev as both), it is removed from its list and from
n(l) of its own first label: it can never be retrieved. A query with no positive scores 0 on each
metric and still counts in the mean.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Optional, Sequence

CUTOFFS = (10, 50, 100)
IDENTICAL_CUTOFFS = (1, 5, 10)


class _CountsWithout(Mapping[str, int]):
    """n(l) with one item of ``label`` taken away (the query's own gallery entry), no copy."""

    def __init__(self, counts: Mapping[str, int], label: Optional[str]):
        self.counts, self.label = counts, label

    def __getitem__(self, key: str) -> int:
        return self.counts[key] - (key == self.label)

    def get(self, key, default=0):  # type: ignore[override]
        return self[key] if key in self.counts else default

    def __contains__(self, key: object) -> bool:
        return key in self.counts

    def __iter__(self):
        return iter(self.counts)

    def __len__(self) -> int:
        return len(self.counts)


def average_precision(ranked_labels: Sequence[str], wanted: set[str], k: int) -> float:
    hits, total = 0, 0.0
    for i, label in enumerate(ranked_labels[:k], start=1):
        if label in wanted:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def precision(ranked_labels: Sequence[str], wanted: set[str], k: int) -> float:
    return sum(label in wanted for label in ranked_labels[:k]) / k if k else 0.0


def average_recall(ranked_labels: Sequence[str], labels: Sequence[str], r: int,
                   gallery_counts: Mapping[str, int]) -> float:
    mult = Counter(labels)
    top = Counter(ranked_labels[:r])
    total = 0.0
    for label, m in mult.items():
        quota = min(m * (r // len(labels)), gallery_counts.get(label, 0))
        if quota > 0:
            total += min(top.get(label, 0), quota) / quota
    return total / len(mult) if mult else 0.0


def query_metrics(ranked_labels: Sequence[str], labels: Sequence[str],
                  gallery_counts: Mapping[str, int], cutoffs: Iterable[int] = CUTOFFS
                  ) -> dict[int, tuple[float, float, float]]:
    """{R: (AP, Prec, AR)} for one query; ``ranked_labels`` are the first labels of the
    ranked gallery items, ``gallery_counts`` n(l) with the query's own item already taken out."""
    wanted = set(labels)
    positives = sum(gallery_counts.get(label, 0) for label in labels)  # per occurrence
    out = {}
    for r in cutoffs:
        k = min(r, positives, len(ranked_labels))
        out[r] = (average_precision(ranked_labels, wanted, k), precision(ranked_labels, wanted, k),
                  average_recall(ranked_labels, labels, r, gallery_counts))
    return out


def counts_for(qid: str, gallery_counts: Mapping[str, int],
               gallery_labels: Mapping[str, str]) -> Mapping[str, int]:
    """n(l) as query ``qid`` sees it: its own gallery item (if any) cannot be retrieved."""
    return _CountsWithout(gallery_counts, gallery_labels.get(qid))


def evaluate_rankings(rankings: Mapping[str, Sequence[str]], query_labels: Mapping[str, Sequence[str]],
                      gallery_labels: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """``{"top10": {"mAP", "Prec", "mAR"}, ...}`` over all queries, plus ``"identical"``
    (mAP/Prec @1/5/10 over single-label queries) when there are any."""
    gallery_counts = Counter(gallery_labels.values())
    sums = {r: [0.0, 0.0, 0.0] for r in CUTOFFS}
    ident = {r: [0.0, 0.0] for r in IDENTICAL_CUTOFFS}
    n_ident = 0
    for qid, labels in query_labels.items():
        ranked = [gallery_labels[g] for g in rankings.get(qid, []) if g in gallery_labels and g != qid]
        counts = counts_for(qid, gallery_counts, gallery_labels)
        for r, values in query_metrics(ranked, labels, counts).items():
            for j, v in enumerate(values):
                sums[r][j] += v
        if len(set(labels)) == 1:
            n_ident += 1
            for r, (ap, prec, _) in query_metrics(ranked, labels, counts,
                                                  IDENTICAL_CUTOFFS).items():
                ident[r][0] += ap
                ident[r][1] += prec
    n = max(len(query_labels), 1)
    result: dict[str, dict[str, float]] = {
        f"top{r}": {"mAP": s[0] / n, "Prec": s[1] / n, "mAR": s[2] / n} for r, s in sums.items()}
    if n_ident:
        result["identical"] = {f"{name}@{r}": v / n_ident for r, (ap, prec) in ident.items()
                               for name, v in (("mAP", ap), ("Prec", prec))}
    result["counts"] = {"queries": len(query_labels), "identical_queries": n_ident,
                        "gallery": len(gallery_labels)}
    return result


def queries_without_positives(query_labels: Mapping[str, Sequence[str]],
                              gallery_labels: Mapping[str, str]) -> int:
    """Queries no gallery item other than themselves answers: they score 0 whatever the
    ranking."""
    gallery_counts = Counter(gallery_labels.values())
    return sum(1 for qid, labels in query_labels.items()
               if not any(counts_for(qid, gallery_counts, gallery_labels).get(label, 0) > 0
                          for label in labels))
