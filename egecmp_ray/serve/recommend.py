"""``/recommend``: split a multi-product query into the single products it names.

The query's entities (the model's own extractor: brand, series, category words) are its spans.
Each span is embedded and searched on its own; spans whose best hit names the same product
(the hit's label, or its id for unlabelled items) are one instance, so ``sk2 神仙水`` merges into
one group while ``ahc 面霜`` forms another. A span whose best hit scores below the threshold
names nothing in the index (``正品``-like leftovers) and is dropped.
"""

from __future__ import annotations

from typing import Any


def group_instances(spans: list[str], hits: list[list[dict[str, Any]]], min_score: float,
                    top_k: int) -> list[dict[str, Any]]:
    """``[{"span", "hits"}]`` in order of first appearance; an item is listed under one
    instance only (where it scored best)."""
    groups: dict[str, dict[str, Any]] = {}
    for span, span_hits in zip(spans, hits):
        if not span_hits or span_hits[0]["score"] < min_score:
            continue
        key = span_hits[0].get("label") or f"id:{span_hits[0]['id']}"
        group = groups.setdefault(key, {"spans": [], "hits": {}})
        group["spans"].append(span)
        for h in span_hits:
            prev = group["hits"].get(h["id"])
            if h["score"] >= min_score and (prev is None or h["score"] > prev["score"]):
                group["hits"][h["id"]] = h
    best: dict[str, float] = {}
    for g in groups.values():
        for item_id, h in g["hits"].items():
            best[item_id] = max(best.get(item_id, h["score"]), h["score"])
    out: list[dict[str, Any]] = []
    claimed: set[str] = set()  # ties go to the earlier instance
    for g in groups.values():
        ranked = sorted((h for i, h in g["hits"].items() if h["score"] >= best[i] and i not in claimed),
                        key=lambda h: -h["score"])[:top_k]
        claimed.update(h["id"] for h in ranked)
        if ranked:
            out.append({"span": " ".join(g["spans"]), "hits": ranked})
    return out
