"""Open any supported input as a Ray Dataset of tagged sample rows.

An input is a Product1M ``*.txt`` annotation file, a directory written by ``egecmp synth``
(all its splits, or the ``splits`` asked for), a directory written by ``egecmp ingest`` (its
valid rows), or any directory of Parquet files in the sample schema. Every stage downstream
sees the same columns whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from egecmp_ray.config import InputError
from egecmp_ray.data import product1m, storage
from egecmp_ray.data.schema import SAMPLE_SCHEMA, TAGGED_SCHEMA, missing_columns
from egecmp_ray.data.synth import SYNTH_SPLITS
from egecmp_ray.placement import cpu_task

PARQUET_BATCH_ROWS = 1_000  # rows a Parquet reader task hands on at a time (bounds memory with images)


@dataclass(frozen=True)
class Source:
    kind: str  # "product1m" or "parquet"
    uri: str  # as the user gave it, for messages
    files: tuple[str, ...]  # absolute paths or URIs every worker can open

    def describe(self) -> str:
        return f"{self.kind} ({len(self.files)} file{'s' if len(self.files) != 1 else ''}) at {self.uri}"


def _manifest_kind(fs, p: str) -> Optional[str]:
    path = storage.join(p, "manifest.json")
    if not storage.exists(fs, path):
        return None
    try:
        return storage.read_json(fs, path).get("kind")
    except (ValueError, OSError):
        return None


def resolve_source(path: str, splits: Optional[Sequence[str]] = None) -> Source:
    """Find what ``path`` holds; a clear error when it holds nothing readable."""
    fs, p = storage.resolve(path)
    if not storage.exists(fs, p):
        raise FileNotFoundError(f"input not found: {path}")
    if p.endswith(".txt"):
        product1m.check_text_file(path)
        return Source("product1m", path, (storage.absolute(path),))
    if fs.get_file_info(p).type == pafs.FileType.File:
        raise InputError(f"{path} is a file but not a Product1M .txt annotation file; give a .txt "
                         "file or a directory of Parquet files")
    kind = _manifest_kind(fs, p)
    if kind == "synthetic":
        chosen = splits or SYNTH_SPLITS
        unknown = sorted(set(chosen) - set(SYNTH_SPLITS))
        if unknown:
            raise InputError(f"unknown splits {unknown}; a synth directory has {list(SYNTH_SPLITS)}")
        files = [f for s in chosen for f in storage.list_files(fs, storage.join(p, s))]
    elif kind == "ingest":
        files = storage.list_files(fs, storage.join(p, "rows"))
    else:  # any Parquet directory; a quarantine inside it is never read back as input
        files = [f for f in storage.list_files(fs, p) if "/quarantine/" not in f[len(p):]]
    if not files:
        raise FileNotFoundError(f"no .parquet files (or Product1M .txt file) found at {path}")
    try:
        with fs.open_input_file(files[0]) as f:
            missing = missing_columns(pq.ParquetFile(f).schema_arrow.names)
    except pa.ArrowInvalid as exc:
        raise InputError(f"{files[0]}: not a Parquet file ({exc})") from None
    if missing:
        raise InputError(f"{files[0]} lacks sample columns {missing}: not a sample-row Parquet "
                         "(see egecmp_ray/data/schema.py)")
    prefix = path.split("://", 1)[0] + "://" if "://" in path else ""
    return Source("parquet", path, tuple(prefix + f if prefix else f for f in files))


def check_read_args(source: Source, images_dir: Optional[str], split: Optional[str]) -> None:
    """Reject flag combinations before any output is touched."""
    if source.kind == "product1m":
        product1m.check_split(split)
    elif split is not None:
        raise InputError("--split applies to Product1M .txt inputs; Parquet rows carry their split")
    if images_dir:
        if source.kind != "product1m":
            raise InputError("--images applies to Product1M .txt inputs; Parquet rows carry their images")
        fs, p = storage.resolve(images_dir)
        if not storage.exists(fs, p):
            raise FileNotFoundError(f"--images directory not found: {images_dir}")


def check_out_apart(out: str, source: Source, images_dir: Optional[str] = None) -> None:
    """Reject an --out that is, holds or lies inside an input: the run would replace or read
    its own data. Checked before anything is written."""
    for flag, path in (("--input", source.uri), ("--images", images_dir)):
        if path and storage.overlaps(out, path):
            raise InputError(f"--out {out} and {flag} {path} overlap (the same directory, or "
                             "one inside the other); write the output somewhere else")


def count_source_rows(source: Source) -> int:
    """Rows the source holds, counted without the pipeline (to reconcile its outputs)."""
    return source_counts(source)[0]


def source_counts(source: Source) -> tuple[int, int]:
    """(rows, rows whose title a read repairs) in one pass over the source: the rows reconcile
    a stage's outputs; the repairs (a character cut at the end of a .txt title) go in its
    manifest. Parquet strings are UTF-8 by construction: no repairs there."""
    if source.kind == "product1m":
        return product1m.line_counts(source.files[0])
    return sum(storage.parquet_rows(*storage.resolve(f)) for f in source.files), 0


def _coerce_column(col: pa.ChunkedArray, field: pa.Field, problems: list[Optional[str]]) -> pa.Array:
    """Cast a column; values that cannot be cast become null and give their row a reason."""
    try:
        return col.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    values: list[pa.Array] = []
    for i, value in enumerate(col.to_pylist()):
        try:  # each value cast on its own, e.g. the string '9.9' to a float
            values.append(pa.array([value]).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError,
                ValueError, OverflowError):
            values.append(pa.nulls(1, field.type))
            problems[i] = problems[i] or f"bad_type: {field.name}={str(value)[:40]!r}"
    return pa.concat_arrays(values) if values else pa.array([], field.type)


def tag_parquet_batch(batch: pa.Table, origin: pa.Array) -> pa.Table:
    """Parquet rows and their origins -> tagged rows; mistyped values get a reason."""
    n = batch.num_rows
    problems: list[Optional[str]] = [None] * n
    columns = [_coerce_column(batch[f.name], f, problems) for f in TAGGED_SCHEMA
               if f.name in SAMPLE_SCHEMA.names]
    columns += [pa.array(problems, pa.string()), pa.nulls(n, pa.binary()), origin]
    return pa.Table.from_arrays(columns, schema=TAGGED_SCHEMA)


def _file_batches(path: str, columns: Optional[list[str]]) -> Iterator[tuple[pa.Table, pa.Array]]:
    """(rows, origins ``path:row``) of one Parquet file in bounded batches: every row gets
    its own origin, an order key for duplicates and a way to find the row again."""
    fs, p = storage.resolve(path)
    first = 0
    with fs.open_input_file(p) as f:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            origin = pa.array([f"{path}:{i}" for i in range(first, first + rb.num_rows)], pa.string())
            first += rb.num_rows
            yield pa.Table.from_batches([rb]), origin


def read_parquet_batch(batch: dict[str, Any]) -> Iterator[pa.Table]:
    """Ray Data fn: Parquet file paths in, tagged rows out."""
    for path in batch["path"]:
        for rows, origin in _file_batches(str(path), None):
            yield tag_parquet_batch(rows, origin)


# Files whose ids one task reads (at most): a file's id column is ~1/1000 of its bytes, so one
# task a file was mostly task overhead (200k rows, 100 files, warm cluster: the count 6.4-7.8 s
# a task a file, 4.8-5.7 s in 2 tasks of 50).
ID_FILES_PER_TASK = 32


def read_id_batch(batch: dict[str, Any]) -> Iterator[pa.Table]:
    """Ray Data fn: Parquet file paths in, their ``item_id`` column out (nothing else is read)."""
    field = SAMPLE_SCHEMA.field("item_id")
    for path in batch["path"]:
        for rows, _ in _file_batches(str(path), [field.name]):
            ids = _coerce_column(rows[field.name], field, [None] * rows.num_rows)
            yield pa.table({field.name: ids})


def _read_files(source: Source, fn, files_per_task: int = 1):
    """``fn`` over the source's Parquet files: one read task per file, or per block of up to
    ``files_per_task`` files (one block a task: a batch size would make Ray Data bundle blocks
    of fewer paths, 100 files in 4 blocks of 25 into 2 tasks of 50)."""
    import ray

    files = source.files
    return ray.data.from_items([{"path": f} for f in files],
                               override_num_blocks=-(-len(files) // files_per_task)).map_batches(
        fn, batch_size=1 if files_per_task == 1 else None, batch_format="pyarrow", **cpu_task())


def read_tagged(source: Source, images_dir: Optional[str] = None, split: Optional[str] = None,
                chunk_bytes: int = 8_000_000):
    """A lazy Ray Dataset of tagged rows (TAGGED_SCHEMA) from ``source``."""
    import ray

    check_read_args(source, images_dir, split)
    if source.kind == "product1m":
        ranges = product1m.plan_ranges(source.files[0], chunk_bytes)
        return ray.data.from_items(ranges, override_num_blocks=len(ranges)).map_batches(
            product1m.read_range_batch, batch_size=1, batch_format="pyarrow",
            fn_kwargs={"split": split,
                       "images_dir": storage.absolute(images_dir) if images_dir else None},
            **cpu_task())
    return _read_files(source, read_parquet_batch)


def present_ids(batch: pa.Table) -> pa.Table:
    """Ray Data fn: the batch's ``item_id`` values that are not null or blank."""
    ids = batch["item_id"]
    keep = pc.fill_null(pc.invert(pc.match_substring_regex(ids, r"^\s*$")), False)
    return pa.table({"item_id": ids.filter(keep)})


def read_ids(source: Source, split: Optional[str] = None, chunk_bytes: int = 8_000_000):
    """A lazy Ray Dataset of every row's non-blank ``item_id``, for duplicate detection: only
    that column is read from Parquet, and no images for a .txt input."""
    if source.kind == "product1m":
        ds = read_tagged(source, split=split, chunk_bytes=chunk_bytes)
    else:
        ds = _read_files(source, read_id_batch, ID_FILES_PER_TASK)
    return ds.map_batches(present_ids, batch_format="pyarrow", **cpu_task())
