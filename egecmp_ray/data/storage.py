"""Paths that are local directories or pyarrow filesystem URIs (s3://, gs://, file://).

Writers go through a temporary name and a move, so a reader (or a resumed run) never sees a
half-written Parquet file.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI pyarrow understands."""
    text = str(uri)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def absolute(uri: str | Path) -> str:
    """A URI unchanged, a local path made absolute: what a worker on another node can open."""
    text = str(uri)
    return text if "://" in text else str(Path(text).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def makedirs(fs: pafs.FileSystem, path: str) -> None:
    fs.create_dir(path, recursive=True)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(fs: pafs.FileSystem, directory: str, suffix: str = ".parquet",
               hidden: bool = False) -> list[str]:
    """Sorted files under ``directory`` (recursively) ending in ``suffix``; [] when missing.
    Hidden files (``.tmp-*`` of unfinished writes, ``_SUCCESS``) are listed only when
    ``hidden``, and then only they are."""
    if not exists(fs, directory):
        return []
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=True))
    return sorted(i.path for i in infos
                  if i.type == pafs.FileType.File and i.path.endswith(suffix)
                  and posixpath.basename(i.path).startswith((".", "_")) == hidden)


def write_parquet_atomic(table: pa.Table, fs: pafs.FileSystem, path: str,
                         row_group_size: Optional[int] = None) -> None:
    """Write to a hidden temp name beside ``path``, then move it into place."""
    makedirs(fs, posixpath.dirname(path))
    tmp = join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    try:
        with fs.open_output_stream(tmp) as out:
            pq.write_table(table, out, row_group_size=row_group_size, compression="zstd")
        fs.move(tmp, path)
    except BaseException:
        if exists(fs, tmp):
            fs.delete_file(tmp)
        raise


def parquet_rows(fs: pafs.FileSystem, path: str) -> int:
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def parquet_metadata(fs: pafs.FileSystem, path: str) -> dict[bytes, bytes]:
    """The schema key/value metadata of a Parquet file ({} if unreadable)."""
    try:
        with fs.open_input_file(path) as f:
            return dict(pq.ParquetFile(f).schema_arrow.metadata or {})
    except (OSError, pa.ArrowInvalid):
        return {}


def write_json(fs: pafs.FileSystem, path: str, payload: dict[str, Any]) -> None:
    makedirs(fs, posixpath.dirname(path))
    tmp = path + f".tmp-{uuid.uuid4().hex}"
    with fs.open_output_stream(tmp) as out:
        out.write(json.dumps(payload, indent=2, ensure_ascii=False, default=str).encode())
    fs.move(tmp, path)


def read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode("utf-8"))
