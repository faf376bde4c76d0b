"""The evaluation harness (DESIGN.md section 5): rank a gallery for every query, drop the query
itself, write ``retrieval_id_list.txt`` and ``metric_results.json``.

Methods share everything but the ranking: ``model`` embeds both sides with a model directory
(Ray Data actor pool), indexes the gallery in Milvus and searches it in batches; ``tfidf``
ranks by character n-gram TF-IDF cosine. Bad rows of either input are quarantined and counted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Optional

import numpy as np

from egecmp_ray.config import Config, InputError
from egecmp_ray.data import storage
from egecmp_ray.data.ingest import validated_rows
from egecmp_ray.data.sources import Source, resolve_source, source_counts
from egecmp_ray.placement import cpu_task
from egecmp_ray.retrieval.indexing import reconcile_source
from egecmp_ray.retrieval.metrics import evaluate_rankings, queries_without_positives

log = logging.getLogger(__name__)

METHODS = ("model", "hybrid", "tfidf")  # dense (the model), dense + BM25 fused, the baseline
COLUMNS = ("id", "label", "labels", "title")


def _collect(ds, columns: tuple[str, ...], batch_size: int) -> dict[str, list]:
    out: dict[str, list] = {c: [] for c in columns}
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        for c in columns:
            out[c] += list(batch[c])
    return out


def _raw_items(source: Source, cfg: Config, quarantine: str) -> dict[str, list]:
    """ids, titles and labels of the valid rows (no model needed: the TF-IDF path)."""
    def shape(batch: dict[str, Any]) -> dict[str, Any]:
        labels = [list(x) if x is not None else [] for x in batch["labels"]]
        return {"id": np.array([str(i) for i in batch["item_id"]], dtype=object),
                "title": batch["title"],
                "label": np.array([x[0] if x else "" for x in labels], dtype=object),
                "labels": np.array(["\t".join(x) for x in labels], dtype=object)}

    ds = validated_rows(source, cfg.data, quarantine).map_batches(shape, batch_format="numpy",
                                                                     **cpu_task())
    return _collect(ds, COLUMNS, 4096)


def _rank_tfidf(queries: dict[str, list], gallery: dict[str, list], top_k: int
                ) -> list[list[str]]:
    from egecmp_ray.retrieval.tfidf import TfidfIndex

    _, idx = TfidfIndex(gallery["title"]).search(queries["title"], top_k + 1)
    ids = gallery["id"]
    return [[ids[j] for j in row] for row in idx.tolist()]


def _ids(hits: list[list[dict[str, Any]]]) -> list[list[str]]:
    return [[h["id"] for h in row] for row in hits]


def _rank_model(model_dir: str, q_src: Source, g_src: Source, cfg: Config, q_dir: str,
                collection: Optional[str], top_k: int, use_gpu: bool, hybrid: bool = False
                ) -> tuple[dict[str, list], dict[str, list], list[list[str]],
                           dict[str, list[list[str]]], dict[str, Any]]:
    """Index the gallery, embed the queries, search: the dense ranking, or (``hybrid``) the
    fused one plus each side alone as components."""
    import ray

    from egecmp_ray.retrieval.embed import embed_rows
    from egecmp_ray.model.model_dir import item_dim
    from egecmp_ray.retrieval.indexing import index_source
    from egecmp_ray.retrieval.milvus_store import close_store_actor, store_actor

    dim = item_dim(model_dir)
    name = collection or "egecmp_eval"
    # Strong reads: on a Milvus server a search at the default bounded consistency may miss
    # gallery rows upserted seconds before, and the metrics would read low.
    store = store_actor(cfg.index, dim, name, fresh=collection is None, consistency="Strong")
    try:
        gallery, g_stats = index_source(store, g_src, model_dir, cfg,
                                         storage.child(q_dir, "gallery"), use_gpu)
        t0 = time.perf_counter()
        q = _collect(embed_rows(q_src, model_dir, cfg, storage.child(q_dir, "queries"),
                                use_gpu=use_gpu), (*COLUMNS, "vector"), cfg.index.embed_batch)
        vectors = np.stack(q.pop("vector")) if q["id"] else np.zeros((0, dim), np.float32)
        dense = _ids(ray.get(store.search.remote(vectors, top_k + 1)))
        components: dict[str, list[list[str]]] = {}
        ranked = dense
        if hybrid:
            ranked = _ids(ray.get(store.hybrid_search.remote(vectors, q["title"], top_k + 1)))
            lexical = ray.get(store.lexical_search.remote(q["title"], top_k + 1))
            components = {"dense": dense, "lexical": _ids(lexical)}
        stats = {"indexed": ray.get(store.count.remote()), "collection": name,
                 "milvus_uri": cfg.index.milvus_uri, "index_type": cfg.index.index_type,
                 "gallery_embed_index_s": g_stats["seconds"],
                 "query_embed_search_s": round(time.perf_counter() - t0, 2)}
    finally:
        close_store_actor(store)
    return q, gallery, ranked, components, stats


def positives_warning(without: int, queries: int) -> Optional[str]:
    """What to tell the user when queries have no positive in the gallery (they score 0, so
    the metrics mean less than they seem), or None."""
    if not without:
        return None
    if without == queries:
        return (f"none of the {queries:,} labelled queries has a positive in the gallery: every "
                "metric is 0; are --queries and --gallery labelled with the same instances?")
    return (f"{without:,} of {queries:,} labelled queries have no positive in the gallery; "
            "they score 0 in every metric")


def run_evaluate(queries: str, gallery: str, out: str, cfg: Config, method: str = "model",
                 model_dir: Optional[str] = None, collection: Optional[str] = None,
                 use_gpu: bool = False) -> dict[str, Any]:
    """Evaluate ``method`` on ``queries`` against ``gallery``; returns the metrics + summary."""
    if method not in METHODS:
        raise InputError(f"--method must be one of {list(METHODS)}, got {method!r}")
    if method in ("model", "hybrid") and not model_dir:
        raise InputError(f"--model is required for --method {method}")
    storage.check_out_dir(out)
    # A synth directory gives its query split as queries and its gallery split as gallery.
    q_src = resolve_source(queries, splits=["query"])
    g_src = resolve_source(gallery, splits=["gallery"])
    repaired = {}
    for flag, role, src in (("--queries", "queries", q_src), ("--gallery", "gallery", g_src)):
        rows, repaired[role] = source_counts(src)
        if rows == 0:  # before a gallery is embedded and indexed for nothing
            raise InputError(f"{flag} {src.uri}: no rows; nothing to evaluate")
    out_fs, out_dir = storage.resolve(out)  # a local path or an object-store URI
    q_dir = storage.child(storage.absolute(out), "quarantine")
    storage.remove(out_fs, storage.join(out_dir, "quarantine"))
    storage.makedirs(out_fs, out_dir)
    top_k = cfg.index.top_k
    t0 = time.perf_counter()
    stats: dict[str, Any] = {}
    components: dict[str, list[list[str]]] = {}
    if method == "tfidf":
        q = _raw_items(q_src, cfg, storage.child(q_dir, "queries"))
        g = _raw_items(g_src, cfg, storage.child(q_dir, "gallery"))
        ranked = _rank_tfidf(q, g, top_k)
    else:
        q, g, ranked, components, stats = _rank_model(
            model_dir, q_src, g_src, cfg, q_dir, collection, top_k, use_gpu,
            hybrid=method == "hybrid")

    def without_self(rows: list[list[str]]) -> dict[str, list[str]]:
        return {qid: [gid for gid in row if gid != qid][:top_k] for qid, row in zip(q["id"], rows)}

    rankings = without_self(ranked)
    storage.write_text(out_fs, storage.join(out_dir, "retrieval_id_list.txt"),
                       "".join(",".join([qid, *rankings[qid]]) + "\n" for qid in q["id"]))
    query_labels = {qid: labs.split("\t") for qid, labs in zip(q["id"], q["labels"]) if labs}
    gallery_labels = {gid: lab for gid, lab in zip(g["id"], g["label"]) if lab}
    if not query_labels:
        raise InputError(f"--queries {queries}: no valid row has labels; nothing to score")
    if not gallery_labels:
        raise InputError(f"--gallery {gallery}: no valid row has labels; nothing to score")
    metrics = evaluate_rankings(rankings, query_labels, gallery_labels)
    if components:  # hybrid: each side alone, from the same collection and queries
        metrics["components"] = {
            name: {k: v for k, v in evaluate_rankings(without_self(rows), query_labels,
                                                     gallery_labels).items() if k != "counts"}
            for name, rows in components.items()}
    without = queries_without_positives(query_labels, gallery_labels)
    warning = positives_warning(without, len(query_labels))
    if warning:
        log.warning(warning)
    metrics["counts"]["queries_without_positives"] = without
    metrics["counts"]["unlabelled_queries"] = len(q["id"]) - len(query_labels)
    metrics["counts"]["quarantined"] = {
        role: reconcile_source(src, len(items["id"]), storage.child(q_dir, role))
        for role, src, items in (("queries", q_src, q), ("gallery", g_src, g))}
    metrics["counts"]["repaired"] = repaired
    storage.write_text(out_fs, storage.join(out_dir, "metric_results.json"),
                       json.dumps(metrics, indent=2))
    summary = {"method": method, "model": model_dir, "queries": queries, "gallery": gallery,
               "elapsed_s": round(time.perf_counter() - t0, 1), **stats, "metrics": metrics,
               "index_config": dataclasses.asdict(cfg.index)}
    storage.write_text(out_fs, storage.join(out_dir, "evaluate.json"),
                       json.dumps(summary, indent=2, default=str))
    return summary
