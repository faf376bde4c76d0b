"""Score fusion of a dense and a lexical (BM25) hit list, per query, in the client.

Milvus' own rankers are RRF (ranks only) and WeightedRanker, which squashes each side's raw
scores with a fixed function (arctan for BM25 on a server): BM25 scores of 10-40 all land near
1, so the dense side decides. Measured on synth and the dev titles (results/quality_log.md,
section 9), neither beats BM25 alone, while standardising each side's scores *within the
query's candidates* does (OpenSearch's normalization processor does the same). Pure
functions: the store, tests and benchmarks call the same code.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Hits = list[dict[str, Any]]
NORMALISERS = ("zscore", "minmax")


def _normalise(scores: np.ndarray, how: str) -> np.ndarray:
    if len(scores) == 0:
        return scores
    if how == "zscore":
        spread = scores.std()
        return (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)
    lo, hi = scores.min(), scores.max()
    return (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)


def fuse_one(dense: Hits, lexical: Hits, weights: Sequence[float], top_k: int,
             how: str = "zscore", dense_higher_better: bool = True) -> Hits:
    """One query's fused list: each side's scores normalised over its own candidates, an item
    a side did not list scored as that side's last candidate, then ``weights`` = (dense,
    lexical) summed. BM25 scores are non-negative; Milvus Lite reports them negated, so
    their magnitude is used. Each hit keeps its fields and carries the fused ``score``."""
    if how not in NORMALISERS:
        raise ValueError(f"unknown normaliser {how!r}; known: {NORMALISERS}")
    sides = []
    for hits, sign, weight in ((dense, 1.0 if dense_higher_better else -1.0, weights[0]),
                               (lexical, None, weights[1])):
        raw = np.array([h["score"] for h in hits], dtype=np.float64)
        good = np.abs(raw) if sign is None else sign * raw
        norm = _normalise(good, how)
        sides.append(({h["id"]: float(s) for h, s in zip(hits, norm)},
                      float(norm.min()) if len(norm) else 0.0, weight))
    fields: dict[Any, dict[str, Any]] = {}
    for hits in (lexical, dense):  # the dense side's fields win (both come from one row)
        for h in hits:
            fields[h["id"]] = h
    fused = {i: sum(w * by_id.get(i, floor) for by_id, floor, w in sides) for i in fields}
    order = sorted(fused, key=lambda i: -fused[i])[:top_k]
    return [{**fields[i], "score": fused[i]} for i in order]


def fuse(dense: Sequence[Hits], lexical: Sequence[Hits], weights: Sequence[float], top_k: int,
         how: str = "zscore", dense_higher_better: bool = True) -> list[Hits]:
    """:func:`fuse_one` for each query."""
    return [fuse_one(d, lx, weights, top_k, how, dense_higher_better)
            for d, lx in zip(dense, lexical, strict=True)]
