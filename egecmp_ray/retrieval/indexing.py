"""The ``index`` stage: embed a source with the Ray Data actor pool and upsert it into Milvus
through the single store actor. Re-indexing the same items replaces them (upsert by id); new
items are added without a rebuild."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from egecmp_ray.config import Config
from egecmp_ray.data import storage
from egecmp_ray.data.ingest import reconcile
from egecmp_ray.data.sources import Source, count_source_rows, resolve_source
from egecmp_ray.data.validate import clear_quarantine, reason_counts
from egecmp_ray.model.model_dir import item_dim
from egecmp_ray.retrieval.milvus_store import is_lite

KEEP = ("id", "label", "labels", "title")
STORE_FIELDS = ("id", "vector", "label", "title", "price", "category")
IN_FLIGHT = 2  # upserts queued at the store actor while the pool keeps embedding


def reconcile_source(source: Source, kept: int, quarantine: str) -> int:
    """Rows quarantined under ``quarantine``; fails if kept + quarantined != rows in."""
    fs, qpath = storage.resolve(quarantine)
    quarantined = sum(reason_counts(fs, qpath).values()) if storage.exists(fs, qpath) else 0
    reconcile(count_source_rows(source), kept, quarantined)
    return quarantined


def index_source(store, source: Source, model_dir: str, cfg: Config, quarantine: str,
                 use_gpu: bool = False) -> tuple[dict[str, list], dict[str, Any]]:
    """Embed every valid row of ``source`` into ``store`` (a store actor); returns the kept
    rows' ids/labels/titles and counts + timings."""
    import ray

    from egecmp_ray.retrieval.embed import embed_rows

    t0 = time.perf_counter()
    kept: dict[str, list] = {c: [] for c in KEEP}
    pending = []
    batches = embed_rows(source, model_dir, cfg, quarantine, use_gpu=use_gpu).iter_batches(
        batch_size=cfg.index.insert_batch, batch_format="numpy")
    for batch in batches:
        pending.append(store.upsert.remote({k: batch[k] for k in STORE_FIELDS}))
        for c in KEEP:
            kept[c] += list(batch[c])
        if len(pending) > IN_FLIGHT:
            ray.get(pending.pop(0))
    ray.get(pending)
    elapsed = time.perf_counter() - t0
    quarantined = reconcile_source(source, len(kept["id"]), quarantine)
    return kept, {"rows": len(kept["id"]), "quarantined": quarantined,
                  "seconds": round(elapsed, 2),
                  "rows_per_s": round(len(kept["id"]) / elapsed, 1) if elapsed else None}


def default_quarantine(milvus_uri: str) -> str:
    """Where ``index`` puts bad rows unless told: ``<file stem>_quarantine/`` beside a Milvus
    Lite file (with the index they were left out of; not ``quarantine/``, which a Lite file
    kept in a preprocess output would share with preprocess's), ``./egecmp_index_quarantine``
    for a server."""
    if is_lite(milvus_uri):
        path = Path(milvus_uri).expanduser().resolve()
        return str(path.parent / f"{path.stem}_quarantine")
    return str(Path("egecmp_index_quarantine").resolve())


def run_index(model_dir: str, data: str, cfg: Config, collection: Optional[str] = None,
              quarantine: Optional[str] = None, use_gpu: bool = False) -> dict[str, Any]:
    """Embed ``data`` and upsert it into ``collection`` (config default); returns a summary.
    The quarantine holds this run's bad rows: a previous run's are replaced."""
    import ray

    from egecmp_ray.retrieval.milvus_store import close_store_actor, store_actor

    source = resolve_source(data, splits=["gallery"])
    q_dir = quarantine or default_quarantine(cfg.index.milvus_uri)
    clear_quarantine(q_dir)
    store = store_actor(cfg.index, item_dim(model_dir), collection)
    try:  # closed on failure too: the rows upserted so far are written out whole
        _, stats = index_source(store, source, model_dir, cfg, q_dir, use_gpu)
        total = ray.get(store.count.remote(flush=True))
    finally:
        close_store_actor(store)
    return {**stats, "collection": collection or cfg.index.collection, "total": total,
            "milvus_uri": cfg.index.milvus_uri, "index_type": cfg.index.index_type,
            "quarantine": q_dir}
