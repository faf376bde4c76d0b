"""Row validation: every malformed row gets a reason instead of crashing a run.

``validate_table`` is a pure function on a tagged Arrow table (it keeps a reason a reader
already set); ``mark_duplicates`` adds ``duplicate_id`` to repeats of an id. ``quarantine_batch``
is the Ray Data step: it writes the rows with a reason to ``<quarantine>/`` and passes the good
rows on, so kept + quarantined always equals what came in.
"""

from __future__ import annotations

import io
import math
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from egecmp_ray.config import DataConfig
from egecmp_ray.data import storage
from egecmp_ray.data.clean import clean_title
from egecmp_ray.data.product1m import safe_id
from egecmp_ray.data.schema import SAMPLE_SCHEMA, SPLITS

LABELLED_SPLITS = ("query", "gallery", "dev", "test")
# Validation takes each reader block as it comes (the readers bound them: 1,000-2,000 rows).
# A batch size here would be worse than useless: Ray Data fuses the read (one input row per
# file or byte range) with the map and bundles that many *input* rows into one task, so every
# file was read and validated by a single task (measured: 1 task of 195 s for 100 files).
VALIDATE_BATCH_ROWS = None


@dataclass(frozen=True)
class Limits:
    max_title_chars: int = 512
    max_image_bytes: int = 8_000_000
    max_image_pixels: int = 40_000_000
    max_labels: int = 64
    max_id_chars: int = 64

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "Limits":
        return cls(cfg.max_title_chars, cfg.max_image_bytes, cfg.max_image_pixels, cfg.max_labels)


def checked_image(data: bytes, limits: Limits, draft: int = 64
                  ) -> tuple[Optional[str], Optional[Image.Image]]:
    """(why these image bytes are unusable, None), or (None, the image decoded at reduced
    scale, at least ``draft`` pixels a side for JPEG). Decodes fully: truncation shows only
    then. The caller closes the image; featurisation may reuse it (one decode per image)."""
    if len(data) > limits.max_image_bytes:
        return f"image_too_large: {len(data)} bytes > {limits.max_image_bytes}", None
    im = None
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > limits.max_image_pixels:
            im.close()
            return f"image_too_large: {w}x{h} pixels", None
        im.draft("RGB", (draft, draft))  # JPEG: decode at reduced scale, still reads every byte
        im.load()
    except Exception as exc:  # PIL raises many types for bad data
        if im is not None:
            im.close()
        return f"undecodable_image: {type(exc).__name__}: {str(exc)[:80]}", None
    return None, im


def image_problem(data: bytes, limits: Limits) -> Optional[str]:
    """Why these image bytes are unusable, or None."""
    problem, im = checked_image(data, limits)
    if im is not None:
        im.close()
    return problem


def row_problem(row: dict[str, Any], limits: Limits, check_image: bool = True) -> Optional[str]:
    """The first reason this row is malformed, or None (``check_image=False``: the image
    bytes are left to the caller, who decodes them anyway; the image is checked last)."""
    item_id = row.get("item_id")
    if not item_id or not str(item_id).strip():
        return "missing_item_id"
    if len(item_id) > limits.max_id_chars:
        return f"item_id_too_long: {len(item_id)} chars > {limits.max_id_chars}"
    if not safe_id(item_id):
        return f"bad_item_id: {item_id[:40]!r} contains a path separator"
    title = row.get("title")
    if title is None or not title.strip():
        return "empty_title"
    if "\ufffd" in title:
        return "non_utf8_text"
    if len(title) > limits.max_title_chars:
        return f"title_too_long: {len(title)} chars > {limits.max_title_chars}"
    if not clean_title(title):  # e.g. '【】！！': no word left for entities or the tokenizer
        return f"empty_after_cleaning: {title[:40]!r} is only punctuation and spaces"
    labels = row.get("labels") or []
    if len(labels) > limits.max_labels:
        return f"too_many_labels: {len(labels)} > {limits.max_labels}"
    if any(lab is None or not lab.strip() for lab in labels):
        return "empty_label"
    split = row.get("split")
    if split not in SPLITS:
        return f"unknown_split: {split!r}"
    if split in LABELLED_SPLITS and not labels:
        return f"missing_labels: a {split} item needs at least one label"
    if not row.get("source"):
        return "null_field: source"
    price = row.get("price")
    if price is not None and (not math.isfinite(price) or price < 0):
        return f"bad_price: {price}"
    image = row.get("image")
    if image is not None:
        return image_problem(image, limits) if check_image else None
    if row.get("has_image"):
        return "has_image_without_bytes"
    return None


@dataclass(frozen=True)
class Featurise:
    """What a caller computes from each valid image on validation's own decode: an array per
    image, then features for ``batch`` images in one call."""

    pixels: Callable[[Image.Image], np.ndarray]  # the decoded image -> its array
    features: Callable[[np.ndarray], list[bytes]]  # stacked arrays -> each one's features
    draft: int  # decode at least this many pixels a side (JPEG decodes at reduced scale)
    batch: int  # images a ``features`` call (bounds the stacked arrays)


def validate_table(table: pa.Table, limits: Limits, featurise: Optional[Featurise] = None
                   ) -> pa.Table:
    """Fill ``reason`` for each row of a tagged table (a reason already set is kept). With
    ``featurise``, each valid image is decoded once, for the check and for ``featurise``,
    whose bytes go in an ``image_features`` column (null for rows without one)."""
    rows = table.to_pylist()
    reasons: list[Optional[str]] = []
    features: list[Optional[bytes]] = [None] * len(rows)
    pending: list[tuple[int, np.ndarray]] = []  # (row, its array) awaiting featurise.features

    def flush() -> None:
        for (i, _), f in zip(pending, featurise.features(np.stack([a for _, a in pending]))):
            features[i] = f
        pending.clear()

    for i, r in enumerate(rows):
        reason = r.get("reason") or row_problem(r, limits, check_image=featurise is None)
        if reason is None and featurise is not None and r.get("image") is not None:
            reason, im = checked_image(r["image"], limits, featurise.draft)
            if im is not None:
                with im:
                    pending.append((i, featurise.pixels(im)))
                if len(pending) == featurise.batch:
                    flush()
        reasons.append(reason)
    if pending:
        flush()
    table = table.set_column(table.schema.get_field_index("reason"), "reason",
                             pa.array(reasons, pa.string()))
    if featurise is not None:
        table = table.append_column("image_features", pa.array(features, pa.binary()))
    return table


def mark_duplicates(table: pa.Table, first_origin: Mapping[str, str]) -> pa.Table:
    """Give ``duplicate_id`` to each valid row whose id is kept at another origin
    (``first_origin``: repeated id -> origin of its first valid row, see ``duplicates``)."""
    if not first_origin:
        return table
    reasons = table["reason"].to_pylist()
    for i, (item_id, origin) in enumerate(zip(table["item_id"].to_pylist(),
                                              table["origin"].to_pylist())):
        first = first_origin.get(item_id)
        if reasons[i] is None and first is not None and origin != first:
            reasons[i] = f"duplicate_id: {item_id[:40]!r} is kept from {first}"
    return table.set_column(table.schema.get_field_index("reason"), "reason",
                            pa.array(reasons, pa.string()))


_files_written: dict[str, int] = {}  # quarantine files per Ray task, in this worker process


def quarantine_file_name() -> str:
    """Unique per task and batch, never derived from the rows (equal batches must not overwrite
    each other): ``q-<task id>-<n>``, so a retried task rewrites its own files; a uuid outside
    a Ray task."""
    import ray

    context = ray.get_runtime_context() if ray.is_initialized() else None
    if context is None or context.worker.mode != ray.WORKER_MODE:
        return f"q-{uuid.uuid4().hex}.parquet"
    task = context.get_task_id()
    n = _files_written[task] = _files_written.get(task, -1) + 1
    return f"q-{task}-{n:06d}.parquet"


def clear_quarantine(quarantine_dir: str) -> None:
    """Delete the quarantine files a previous run left directly in ``quarantine_dir`` (only
    names ``quarantine_file_name`` gives), so this run's counts reconcile on its rows alone."""
    fs, root = storage.resolve(quarantine_dir)
    for path in storage.list_files(fs, root):
        if posixpath.dirname(path) == root and posixpath.basename(path).startswith("q-"):
            fs.delete_file(path)


def quarantine_batch(batch: pa.Table, limits: Limits, quarantine_dir: Optional[str],
                     first_origin: Mapping[str, str], featurise: Optional[Featurise] = None
                     ) -> pa.Table:
    """Ray Data fn: validate, write bad rows to the quarantine, return the good rows.

    ``quarantine_dir=None`` only filters (a second pass over rows whose bad ones were already
    written). ``featurise``: see ``validate_table``; the good rows keep ``image_features``
    and lose the image bytes.
    """
    tagged = mark_duplicates(validate_table(batch, limits, featurise), first_origin)
    bad_mask = pc.is_valid(tagged["reason"])
    bad = tagged.filter(bad_mask)
    if featurise is not None:
        bad = bad.drop_columns(["image_features"])
    if bad.num_rows and quarantine_dir is not None:
        fs, root = storage.resolve(quarantine_dir)
        storage.write_parquet_atomic(bad, fs, storage.join(root, quarantine_file_name()))
    good = tagged.filter(pc.invert(bad_mask))
    # Nullable inputs that validated: an image means has_image; no labels means [].
    good = good.set_column(good.schema.get_field_index("has_image"), "has_image",
                           pc.is_valid(good["image"]))
    good = good.set_column(good.schema.get_field_index("labels"), "labels",
                           pc.fill_null(good["labels"], pa.scalar([], pa.list_(pa.string()))))
    typed = good.select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA)
    if featurise is None:
        return typed
    return typed.drop_columns(["image"]).append_column("image_features", good["image_features"])


def reason_counts(fs, quarantine_dir: str) -> dict[str, int]:
    """Quarantined rows per reason kind (the text before ':'), read back from the files."""
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    for path in storage.list_files(fs, quarantine_dir):
        with fs.open_input_file(path) as f:
            for reason in pq.read_table(f, columns=["reason"])["reason"].to_pylist():
                kind = reason.split(":", 1)[0]
                counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))

