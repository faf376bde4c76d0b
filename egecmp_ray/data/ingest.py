"""Read -> validate -> quarantine as one Ray Data pipeline, and the ``ingest`` stage built on it.

``validated_rows`` is the first stage of every job that reads raw samples (ingest here,
preprocess, index and evaluate later): good rows flow on in the sample schema, bad rows (and
repeats of an item id) land in ``quarantine/`` with a reason. ``run_ingest`` writes the good
rows as Parquet into a staging directory, reconciles the counts, and only then swaps the
result into ``--out``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Optional

from egecmp_ray.config import DataConfig
from egecmp_ray.data import storage
from egecmp_ray.data.duplicates import first_origins
from egecmp_ray.data.schema import SCHEMA_VERSION
from egecmp_ray.data.sources import (Source, check_out_apart, check_read_args, read_tagged,
                                     source_counts)
from egecmp_ray.data.validate import (VALIDATE_BATCH_ROWS, Featurise, Limits, quarantine_batch,
                                     reason_counts)
from egecmp_ray.placement import cpu_task

log = logging.getLogger(__name__)

OUTPUTS = ("rows", "quarantine")  # what ingest owns in --out (and manifest.json)


def validated_rows(source: Source, cfg: DataConfig, quarantine_dir: Optional[str],
                   images_dir: Optional[str] = None, split: Optional[str] = None,
                   first_origin: Optional[Mapping[str, str]] = None,
                   featurise: Optional[Featurise] = None):
    """Lazy Ray Dataset of good sample rows; bad rows are written to ``quarantine_dir``
    (``None``: dropped, for a later pass over rows already validated once). Repeated ids are
    found first (``first_origin``: pass a previous pass's, so both keep the same rows).
    ``featurise``: image features on validation's decode replace the image bytes."""
    if first_origin is None:
        first_origin = first_origins(source, cfg, images_dir=images_dir, split=split)
    return read_tagged(source, images_dir=images_dir, split=split,
                       chunk_bytes=cfg.read_chunk_bytes).map_batches(
        quarantine_batch, batch_format="pyarrow", batch_size=VALIDATE_BATCH_ROWS,
        fn_kwargs={"limits": Limits.from_config(cfg), "quarantine_dir": quarantine_dir,
                   "first_origin": first_origin, "featurise": featurise},
        **cpu_task())


def reconcile(rows_in: int, rows_out: int, rows_quarantined: int) -> None:
    if rows_in != rows_out + rows_quarantined:
        raise RuntimeError(
            f"row counts do not reconcile: {rows_in} in != {rows_out} kept + "
            f"{rows_quarantined} quarantined; rows were lost or duplicated")


def _count_rows(fs, directory: str) -> tuple[int, int]:
    """(rows, rows flagged has_image=False) over the Parquet files written to ``directory``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = without = 0
    for path in storage.list_files(fs, directory):
        with fs.open_input_file(path) as f:
            flags = pq.read_table(f, columns=["has_image"])["has_image"]
        rows += len(flags)
        without += len(flags) - pc.sum(flags).as_py() if len(flags) else 0
    return rows, without


def run_ingest(source: Source, out: str, cfg: DataConfig, images_dir: Optional[str] = None,
               split: Optional[str] = None) -> dict[str, Any]:
    """Validate ``source`` into ``out/rows`` + ``out/quarantine``; returns the manifest.
    Written to a staging directory first: ``out`` changes only when the run succeeded."""
    check_read_args(source, images_dir, split)  # before anything is written
    storage.check_out_dir(out)
    check_out_apart(out, source, images_dir)
    with storage.staged(out) as stage:
        manifest = _ingest_into(stage, source, cfg, images_dir, split)
        storage.publish(stage, out, OUTPUTS)
    return manifest


def _ingest_into(stage: str, source: Source, cfg: DataConfig, images_dir: Optional[str],
                 split: Optional[str]) -> dict[str, Any]:
    """Validate into ``stage/rows`` + ``stage/quarantine``; returns the manifest."""
    t0 = time.perf_counter()
    rows_in, rows_repaired = source_counts(source)
    log.info("ingesting %s: %d rows", source.describe(), rows_in)
    rows_uri, q_uri = storage.child(stage, "rows"), storage.child(stage, "quarantine")
    ds = validated_rows(source, cfg, q_uri, images_dir=images_dir, split=split)
    ds.write_parquet(rows_uri, ray_remote_args=cpu_task())
    elapsed = time.perf_counter() - t0

    fs, root = storage.resolve(stage)
    rows_out, without_image = _count_rows(fs, storage.join(root, "rows"))
    reasons = reason_counts(fs, storage.join(root, "quarantine"))
    rows_quarantined = sum(reasons.values())
    reconcile(rows_in, rows_out, rows_quarantined)
    manifest = {
        "kind": "ingest",
        "schema_version": SCHEMA_VERSION,
        "input": source.uri,
        "input_kind": source.kind,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": rows_quarantined,
        "rows_without_image": without_image,
        "rows_repaired": rows_repaired,
        "quarantine_reasons": reasons,
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(rows_in / elapsed, 1) if elapsed > 0 else None,
    }
    storage.write_json(fs, storage.join(root, storage.MANIFEST), manifest)
    return manifest
