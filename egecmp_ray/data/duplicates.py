"""Repeated item ids: the first valid row of an id (in input order) is kept, later valid rows
with that id are quarantined as ``duplicate_id`` (Milvus and the shards are keyed by id, so a
repeat would silently replace or shadow the first).

Two passes, both distributed: a ``groupby(item_id).count()`` over the ids alone (one Parquet
column; no images) finds the repeated ids, and only if there are any, a scan validates just
their rows to find where each one's first valid row lies. Only the repeated ids (and the
origins of their rows) reach the driver. Input order is the source's file order, then the row (or byte offset) in the file.
"""

from __future__ import annotations

from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from egecmp_ray.config import DataConfig
from egecmp_ray.data.sources import Source, read_ids, read_tagged
from egecmp_ray.data.validate import VALIDATE_BATCH_ROWS, Limits, validate_table
from egecmp_ray.placement import cpu_task


def valid_rows_of(batch: pa.Table, ids: pa.Array, limits: Limits) -> pa.Table:
    """Ray Data fn: ``item_id, origin`` of the valid rows whose id is in ``ids``."""
    rows = batch.filter(pc.is_in(batch["item_id"], ids))
    rows = validate_table(rows, limits)
    return rows.filter(pc.is_null(rows["reason"])).select(["item_id", "origin"])


def origin_order(origin: str, rank: dict[str, int]) -> tuple[int, int]:
    """Sort key of an origin ``<file>:<row or byte offset>``: file order, then position."""
    path, position = origin.rsplit(":", 1)
    return rank[path], int(position)


def first_origins(source: Source, cfg: DataConfig, images_dir: Optional[str] = None,
                  split: Optional[str] = None) -> dict[str, str]:
    """Repeated id -> origin of its first valid row ({} when no id repeats)."""
    import ray
    from ray.data.expressions import col

    partitions = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    counts = (read_ids(source, split=split, chunk_bytes=cfg.read_chunk_bytes)
              .groupby("item_id", num_partitions=partitions).count()
              .filter(expr=col("count()") > 1))
    repeated = [v for b in counts.iter_batches(batch_format="pyarrow")
                for v in b["item_id"].to_pylist()]
    if not repeated:
        return {}
    rows = read_tagged(source, images_dir=images_dir, split=split,
                       chunk_bytes=cfg.read_chunk_bytes).map_batches(
        valid_rows_of, batch_format="pyarrow", batch_size=VALIDATE_BATCH_ROWS,
        fn_kwargs={"ids": pa.array(repeated, pa.string()), "limits": Limits.from_config(cfg)},
        **cpu_task())
    rank = {f: i for i, f in enumerate(source.files)}
    first: dict[str, str] = {}
    for batch in rows.iter_batches(batch_format="pyarrow"):
        for item_id, origin in zip(batch["item_id"].to_pylist(), batch["origin"].to_pylist()):
            if item_id not in first or origin_order(origin, rank) < origin_order(first[item_id], rank):
                first[item_id] = origin
    return first
