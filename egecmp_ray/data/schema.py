"""The one Arrow schema of a sample row, shared by synth, the readers, validation and preprocess.

A row is one listing: an id, a title, optional image bytes, and (for query/gallery items) the
instance labels. ``labels`` keeps duplicates, as Product1M does; a gallery item's label is its
first one.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1

SPLITS = ("train", "query", "gallery", "dev", "test")

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("image", pa.binary()),  # encoded JPEG/PNG bytes; null when absent
        pa.field("has_image", pa.bool_(), nullable=False),
        pa.field("image_url", pa.string()),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("price", pa.float64()),
        pa.field("category", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # "synthetic" or "product1m"
    ],
    metadata={"egecmp.schema_version": str(SCHEMA_VERSION)},
)

# Readers emit *tagged* rows: the sample fields, nullable (a bad input row must not fail a
# cast before it can be quarantined), plus `reason` (null for a good row), `raw` (the original
# bytes of a source line that failed to parse) and `origin` (file and byte offset or row group,
# to find the row again). Quarantine files are tagged rows whose reason is set, so nothing is
# lost: text that was not valid UTF-8 is kept with replacement characters and its bytes in `raw`.
TAGGED_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in SAMPLE_SCHEMA]
    + [pa.field("reason", pa.string()), pa.field("raw", pa.binary()), pa.field("origin", pa.string())],
    metadata={"egecmp.schema_version": str(SCHEMA_VERSION)},
)


def empty_batch(schema: pa.Schema = SAMPLE_SCHEMA) -> dict[str, list[Any]]:
    """Column lists ready to be appended to, row by row."""
    return {name: [] for name in schema.names}


def to_table(columns: dict[str, list[Any]], schema: pa.Schema = SAMPLE_SCHEMA) -> pa.Table:
    """Columns -> a table of exactly ``schema`` (missing columns are an error, not nulls)."""
    missing = missing_columns(list(columns), schema)
    if missing:
        raise KeyError(f"batch lacks columns {missing}")
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in schema],
                                schema=schema)


def missing_columns(names: list[str], schema: pa.Schema = SAMPLE_SCHEMA) -> list[str]:
    return [n for n in schema.names if n not in names]
