"""Paths that are local directories or pyarrow filesystem URIs (s3://, gs://, file://).

Object stores are configured the way their clients are, not in the URI: credentials, region
and endpoint come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for S3-compatible stores; Google's default
credentials for gs://), on every node. Files that only local-file libraries write or read
(tokenizer, torch tensors) go through :func:`local_output` / :func:`local_input`.

Writers go through a temporary name and a move, so a reader (or a resumed run) never sees a
half-written Parquet file; a stage writes a whole run into a hidden staging directory and
``publish`` swaps it in, so a failed run never destroys the previous output.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from egecmp_ray.config import InputError

MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI pyarrow understands."""
    text = str(uri)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def is_local(uri: str | Path) -> bool:
    """A path on this machine's file system (a plain path or ``file://``)."""
    return isinstance(resolve(uri)[0], pafs.LocalFileSystem)


@contextlib.contextmanager
def local_output(uri: str | Path) -> Iterator[Path]:
    """A local directory whose files end up at ``uri``: ``uri`` itself when it is local; for
    an object store a temporary directory, uploaded when the block succeeds (nothing is
    uploaded from a failed one)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    tmp = tempfile.mkdtemp(prefix="egecmp-up-")
    try:
        yield Path(tmp)
        _upload(tmp, fs, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local_input(uri: str | Path, skip: Sequence[str] = ()) -> Path:
    """A local directory holding ``uri``'s files: ``uri`` itself when it is local; for an
    object store a copy downloaded once per process (a stage's or a model's directory does
    not change while a run reads it), under the process's temporary directory, without the
    top-level entries named in ``skip`` (e.g. the shards Ray Data streams itself)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(path)
    return Path(_download(str(uri), tuple(skip)))


@functools.lru_cache(maxsize=32)
def _download(uri: str, skip: tuple[str, ...]) -> str:
    fs, path = resolve(uri)
    if not exists(fs, path):
        raise FileNotFoundError(f"not found: {uri}")
    local = tempfile.mkdtemp(prefix="egecmp-down-")
    # Gone when this process exits (a killed Ray worker's copy goes with the run's scratch
    # TMPDIR, which the command line sets up for the local workers it starts).
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    local_fs = pafs.LocalFileSystem()
    for info in fs.get_file_info(pafs.FileSelector(path)):  # files and directories alike
        name = posixpath.basename(info.path)
        if name in skip:
            continue
        if info.type == pafs.FileType.Directory:
            os.makedirs(os.path.join(local, name))
        pafs.copy_files(info.path, os.path.join(local, name), source_filesystem=fs,
                        destination_filesystem=local_fs)
    return local


def absolute(uri: str | Path) -> str:
    """A URI unchanged, a local path made absolute: what a worker on another node can open."""
    text = str(uri)
    return text if "://" in text else str(Path(text).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def child(uri: str | Path, *parts: str) -> str:
    """``uri/parts`` keeping the caller's scheme (what Ray's writers are given)."""
    uri = str(uri)
    if "://" in uri:
        return "/".join([uri.rstrip("/"), *parts])
    return join(absolute(uri), *parts)


def overlaps(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the same place or one lies inside the other."""
    (fs_a, pa_), (fs_b, pb) = resolve(a), resolve(b)
    if fs_a.type_name != fs_b.type_name:
        return False
    pa_, pb = pa_.rstrip("/") + "/", pb.rstrip("/") + "/"
    return pa_.startswith(pb) or pb.startswith(pa_)


def check_out_dir(out: str) -> None:
    """Refuse an ``--out`` that cannot become an output directory (an existing file, or a place
    this user cannot write) before any work starts, naming the path and the problem. Object-store
    URIs are left to their writers: there is no cheap check (nor is one contacted here)."""
    if "://" in out and not out.startswith("file://"):
        return
    target = Path(resolve(out)[1])
    existing = next(p for p in (target, *target.parents) if os.path.exists(p))
    if not existing.is_dir():
        problem = ("is an existing file, not a directory" if existing == target else
                   f"cannot be created: {existing} is a file")
        raise InputError(f"--out {out}: {problem}")
    if not os.access(existing, os.W_OK | os.X_OK):
        problem = ("is not writable" if existing == target else
                   f"cannot be created: {existing} is not writable")
        raise InputError(f"--out {out}: {problem} (permissions or a read-only file system)")


def makedirs(fs: pafs.FileSystem, path: str) -> None:
    fs.create_dir(path, recursive=True)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _relative(path: str, directory: str) -> str:
    return path[len(directory.rstrip("/")) + 1:]


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def list_files(fs: pafs.FileSystem, directory: str, suffix: str = ".parquet",
               hidden: bool = False) -> list[str]:
    """Sorted files under ``directory`` (recursively) ending in ``suffix``; [] when missing.
    Hidden files (``.tmp-*`` of unfinished writes, ``_SUCCESS``) are listed only when
    ``hidden``, and then only they are; files in hidden directories (a run's ``.staging-*``,
    ``_work``) are never listed."""
    if not exists(fs, directory):
        return []
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=True))
    found = []
    for i in infos:
        if i.type != pafs.FileType.File or not i.path.endswith(suffix):
            continue
        *dirs, name = _relative(i.path, directory).split("/")
        if not any(map(_is_hidden, dirs)) and _is_hidden(name) == hidden:
            found.append(i.path)
    return sorted(found)


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


def remove(fs: pafs.FileSystem, path: str) -> None:
    """Delete a file or a directory tree; nothing when it is missing."""
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind != pafs.FileType.NotFound:
        fs.delete_file(path)


def _move(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """A rename on a local disk; file by file where directories cannot be moved (object stores)."""
    if isinstance(fs, pafs.LocalFileSystem) or fs.get_file_info(src).type == pafs.FileType.File:
        fs.move(src, dst)
        return
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if info.type == pafs.FileType.File:
            target = join(dst, _relative(info.path, src))
            makedirs(fs, posixpath.dirname(target))
            fs.move(info.path, target)
    fs.delete_dir(src)


@contextlib.contextmanager
def staged(out: str) -> Iterator[str]:
    """A fresh hidden directory inside ``out`` for a run to write into (URI kept); removed,
    with ``out`` if this made it, when the run fails, so the previous output stays as it was."""
    fs, root = resolve(out)
    created = not exists(fs, root)
    stage = child(out, f".staging-{uuid.uuid4().hex[:12]}")
    makedirs(fs, resolve(stage)[1])
    try:
        yield stage
    except BaseException:
        remove(fs, resolve(stage)[1])
        if created and not fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
            fs.delete_dir(root)
        raise


def publish(stage: str, out: str, names: Sequence[str]) -> None:
    """Swap a finished run into ``out``: each of ``names`` there is replaced by the staged one
    (or removed if the run made none), then ``stage`` is dropped; other entries of ``out`` are
    left alone. The old entries are first moved aside into ``out/.previous-*``, the old
    manifest first, and the new manifest goes in last: a directory caught half-way through has
    none, so no reader takes it for a finished output. If a move fails (a transient object
    store error), the new entries moved so far are removed and the old ones put back, so the
    previous output stays whole; if even that fails, the error names where the old ones are."""
    fs, root = resolve(out)
    _, src = resolve(stage)
    aside = join(root, f".previous-{uuid.uuid4().hex[:12]}")
    old: list[str] = []
    new: list[str] = []
    try:
        for name in (MANIFEST, *names):
            if exists(fs, join(root, name)):
                makedirs(fs, aside)
                old.append(name)  # before the move: an object store moves file by file
                _move(fs, join(root, name), join(aside, name))
        for name in (*names, MANIFEST):
            if exists(fs, join(src, name)):
                new.append(name)
                _move(fs, join(src, name), join(root, name))
    except BaseException as exc:
        try:
            for name in new:
                remove(fs, join(root, name))
            for name in reversed(old):
                if exists(fs, join(aside, name)):
                    _move(fs, join(aside, name), join(root, name))
            remove(fs, aside)
        except Exception as restore:
            raise RuntimeError(f"publishing into {out} failed ({exc}) and so did putting the "
                               f"previous output back ({restore}): its entries {old} are in "
                               f"{aside}") from exc
        raise
    try:  # the new output is in place: what is left is clean-up
        remove(fs, aside)
        fs.delete_dir(src)
    except OSError as exc:
        log.warning("published into %s, but could not remove %s or %s (%s)", out, aside, stage,
                    exc)


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
    return json.loads(read_text(fs, path))


def read_text(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    """Whole-file write through a temporary name (an object store has no appends)."""
    makedirs(fs, posixpath.dirname(path))
    tmp = path + f".tmp-{uuid.uuid4().hex}"
    with fs.open_output_stream(tmp) as out:
        out.write(text.encode("utf-8"))
    fs.move(tmp, path)


def append_line(uri: str, line: str) -> None:
    """One line at the end of a text file: an append on a local disk, a rewrite of the whole
    (small) object on an object store."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        return
    old = read_text(fs, path) if exists(fs, path) else ""
    write_text(fs, path, old + line + "\n")


def entries(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    """The entries directly inside ``directory`` ([] when it does not exist)."""
    return fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))


def upload_dir(local: str | Path, uri: str) -> None:
    """Replace the directory at ``uri`` with a copy of the local directory ``local``."""
    fs, path = resolve(uri)
    remove(fs, path)
    _upload(local, fs, path)


def _upload(local: str | Path, fs: pafs.FileSystem, path: str) -> None:
    """The files of the local directory ``local`` copied into ``path`` on ``fs``."""
    makedirs(fs, path)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
