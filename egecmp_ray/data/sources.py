"""Open any supported input as a Ray Dataset of tagged sample rows.

An input is a Product1M ``*.txt`` annotation file, a directory written by ``egecmp synth``
(all its splits, or the ``splits`` asked for), or any directory of Parquet files in the
sample schema. Every stage downstream sees the same columns whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from egecmp_ray.config import InputError
from egecmp_ray.data import product1m, storage
from egecmp_ray.data.schema import SAMPLE_SCHEMA, TAGGED_SCHEMA
from egecmp_ray.data.synth import SYNTH_SPLITS


@dataclass(frozen=True)
class Source:
    kind: str  # "product1m" or "parquet"
    uri: str
    files: tuple[str, ...]  # parquet files, or the one annotation file

    def describe(self) -> str:
        return f"{self.kind} ({len(self.files)} file{'s' if len(self.files) != 1 else ''}) at {self.uri}"


def resolve_source(path: str, splits: Optional[Sequence[str]] = None) -> Source:
    """Find what ``path`` holds; a clear error when it holds nothing readable."""
    fs, p = storage.resolve(path)
    if not storage.exists(fs, p):
        raise FileNotFoundError(f"input not found: {path}")
    if p.endswith(".txt"):
        return Source("product1m", path, (p,))
    if storage.exists(fs, storage.join(p, "manifest.json")) and any(
            storage.exists(fs, storage.join(p, s)) for s in SYNTH_SPLITS):
        chosen = splits or SYNTH_SPLITS
        files = tuple(f for s in chosen for f in storage.list_files(fs, storage.join(p, s)))
    else:
        files = tuple(storage.list_files(fs, p))
    if not files:
        raise FileNotFoundError(f"no .parquet files (or Product1M .txt file) found at {path}")
    with fs.open_input_file(files[0]) as f:
        names = pq.ParquetFile(f).schema_arrow.names
    missing = [c for c in SAMPLE_SCHEMA.names if c not in names]
    if missing:
        raise InputError(f"{files[0]} lacks sample columns {missing}: not a sample-row Parquet "
                         "(see egecmp_ray/data/schema.py)")
    return Source("parquet", path, files)


def count_source_rows(source: Source) -> int:
    """Rows the source holds, counted without the pipeline (to reconcile its outputs)."""
    fs, _ = storage.resolve(source.uri)
    if source.kind == "product1m":
        return product1m.count_lines(source.uri)
    return sum(storage.parquet_rows(fs, f) for f in source.files)


def _tag_parquet_batch(batch: pa.Table) -> pa.Table:
    """Parquet rows -> tagged rows: schema-conformant, no reason yet."""
    n = batch.num_rows
    missing = [c for c in SAMPLE_SCHEMA.names if c not in batch.column_names]
    if missing:
        raise InputError(f"input Parquet lacks sample columns {missing}; see egecmp_ray/data/schema.py")
    table = batch.select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA)
    table = table.append_column(TAGGED_SCHEMA.field("reason"), pa.nulls(n, pa.string()))
    return table.append_column(TAGGED_SCHEMA.field("raw"), pa.nulls(n, pa.binary()))


def read_tagged(source: Source, images_dir: Optional[str] = None, split: Optional[str] = None,
                chunk_bytes: int = product1m.CHUNK_BYTES):
    """A lazy Ray Dataset of tagged rows (TAGGED_SCHEMA) from ``source``."""
    import ray

    if source.kind == "product1m":
        product1m.check_split(split)
        ranges = product1m.plan_ranges(source.uri, chunk_bytes)
        return ray.data.from_items(ranges, override_num_blocks=len(ranges)).map_batches(
            product1m.read_range_batch, batch_size=1, batch_format="pyarrow",
            fn_kwargs={"split": split, "images_dir": images_dir})
    if images_dir:
        raise InputError("--images applies to Product1M .txt inputs; Parquet rows carry their images")
    fs, _ = storage.resolve(source.uri)
    return ray.data.read_parquet(list(source.files), filesystem=fs).map_batches(
        _tag_parquet_batch, batch_format="pyarrow")
