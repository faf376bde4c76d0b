"""Reader for the real Product1M annotation files (``*.txt``, one item a line).

Line format: ``item_id#####title#####image_url#####image_url_mirror#####label1#;#label2#;#...``
(train lines may have 4 fields: no labels). Files are read as bytes in ranges, so a 1.1M-line
train file streams through many Ray tasks and a line that is not UTF-8 or has the wrong field
count becomes a quarantined row with a reason and its raw bytes, never a crash.
"""

from __future__ import annotations

import posixpath
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.fs as pafs

from egecmp_ray.config import InputError
from egecmp_ray.data import storage
from egecmp_ray.data.schema import SPLITS, TAGGED_SCHEMA, empty_batch, to_table

FIELD_SEP = b"#####"
LABEL_SEP = "#;#"
ROWS_PER_BATCH = 2_000  # rows a reader task hands on at a time (bounds memory with images)
SNIFF_BYTES = 64 * 1024  # how much of a .txt input is looked at before it is read as annotations
MAX_UNDECODABLE = 0.1  # more replacement characters than this (a fraction) is not UTF-8 text


def infer_split(path: str) -> str:
    """``product1m_dev_ossurl_v2.txt`` -> ``dev``; unknown names are treated as ``train``."""
    name = posixpath.basename(path).lower()
    for split in ("gallery", "train", "dev", "test"):
        if split in name:
            return split
    return "train"


TITLE_FIELD = 1  # the field a cut character is repaired in


def _decode(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), False


def repair_cut_character(raw: bytes) -> Optional[str]:
    """A title cut mid-character (Product1M titles were truncated by bytes) decodes once the
    incomplete sequence at its end is dropped; ``None`` when anything else is broken."""
    text = raw.rstrip()
    try:
        text.decode("utf-8")
        return None  # nothing to repair (broken bytes elsewhere, or none at all)
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":  # not a cut at the end: quarantine
            return None
        return text[:exc.start].decode("utf-8")


def decode_fields(fields: list[bytes]) -> tuple[list[str], bool, bool]:
    """(stripped texts, all UTF-8 once repaired, a cut title character was dropped)."""
    texts, all_utf8, repaired = [], True, False
    for i, f in enumerate(fields):
        text, ok = _decode(f)
        if not ok and i == TITLE_FIELD:
            fixed = repair_cut_character(f)
            if fixed is not None:
                text, ok, repaired = fixed, True, True
        texts.append(text.strip())
        all_utf8 &= ok
    return texts, all_utf8, repaired and all_utf8


def line_repaired(line: bytes) -> bool:
    """Whether reading ``line`` repairs its title (what the manifests count as repaired)."""
    fields = line.rstrip(b"\r\n").split(FIELD_SEP)
    return len(fields) in (4, 5) and decode_fields(fields)[2]


def parse_line(raw: bytes, split: str, images: Optional[tuple[pafs.FileSystem, str]] = None
               ) -> dict[str, Any]:
    """One annotation line -> a tagged sample row (``reason`` set when it is malformed; a title
    cut mid-character is repaired, see ``repair_cut_character``)."""
    line = raw.rstrip(b"\r\n")
    fields = line.split(FIELD_SEP)
    row: dict[str, Any] = {
        "item_id": "", "title": None, "image": None, "has_image": False, "image_url": None,
        "labels": [], "price": None, "category": None, "split": split, "source": "product1m",
        "reason": None, "raw": None, "origin": None,
    }
    expected = (4, 5) if split == "train" else (5,)
    if len(fields) not in expected:
        row["item_id"] = _decode(fields[0])[0].strip()[:64]
        row["reason"] = (f"wrong_field_count: {len(fields)} fields, expected "
                         f"{' or '.join(map(str, expected))}")
        row["raw"] = bytes(line)
        return row

    texts, all_utf8, _ = decode_fields(fields)
    row["item_id"], row["title"] = texts[0], texts[1]
    row["image_url"] = texts[2] or texts[3] or None
    if len(texts) == 5 and texts[4]:
        row["labels"] = [lab.strip() for lab in texts[4].split(LABEL_SEP)]
    if not all_utf8:
        row["reason"] = "non_utf8_text"
        row["raw"] = bytes(line)
    if images is not None and row["item_id"] and safe_id(row["item_id"]):
        fs, directory = images
        path = storage.join(directory, f"{row['item_id']}.jpg")
        try:
            with fs.open_input_stream(path) as f:
                row["image"] = f.read()
            row["has_image"] = True
        except (FileNotFoundError, OSError):
            pass  # kept and flagged: has_image stays False
    return row


def safe_id(item_id: str) -> bool:
    """An id usable as a file name: no path separators or parent references."""
    return "/" not in item_id and "\\" not in item_id and item_id not in (".", "..")


def plan_ranges(path: str, chunk_bytes: int) -> list[dict[str, Any]]:
    """Byte ranges covering the file; each reader owns the lines that *start* in its range."""
    fs, p = storage.resolve(path)
    info = fs.get_file_info(p)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"Product1M annotation file not found: {path}")
    size = info.size or 0
    return [{"path": path, "start": s, "stop": min(size, s + chunk_bytes)}
            for s in range(0, max(size, 1), chunk_bytes)]


def iter_range_lines(path: str, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for lines whose first byte lies in ``[start, stop)``."""
    fs, p = storage.resolve(path)
    with fs.open_input_file(p) as f:
        if start > 0:
            f.seek(start - 1)
            # Skip the rest of a line that began in the previous range.
            prev = f.read(1)
            pos = start
            if prev != b"\n":
                buf = b""
                while True:
                    block = f.read(65536)
                    if not block:
                        return
                    nl = block.find(b"\n")
                    if nl >= 0:
                        pos += len(buf) + nl + 1
                        break
                    buf += block
            f.seek(pos)
        else:
            pos = 0
        pending = b""
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            pending += block
            lines = pending.split(b"\n")
            pending = lines.pop()
            for line in lines:
                if pos >= stop:
                    return
                yield pos, line
                pos += len(line) + 1
        if pending and pos < stop:
            yield pos, pending


def read_range_batch(batch: dict[str, Any], split: Optional[str], images_dir: Optional[str],
                     rows_per_batch: int = ROWS_PER_BATCH) -> Iterator[pa.Table]:
    """Ray Data fn: byte ranges in, tagged sample rows out in bounded tables (blank lines skipped)."""
    images = storage.resolve(images_dir) if images_dir else None
    cols = empty_batch(TAGGED_SCHEMA)
    for path, start, stop in zip(batch["path"], batch["start"], batch["stop"]):
        the_split = split or infer_split(str(path))
        for offset, line in iter_range_lines(str(path), int(start), int(stop)):
            if not line.strip():
                continue
            row = parse_line(line, the_split, images)
            row["origin"] = f"{path}:{offset}"
            for k, v in row.items():
                cols[k].append(v)
            if len(cols["item_id"]) >= rows_per_batch:
                yield to_table(cols, TAGGED_SCHEMA)
                cols = empty_batch(TAGGED_SCHEMA)
    if cols["item_id"]:
        yield to_table(cols, TAGGED_SCHEMA)


def count_lines(path: str) -> int:
    """Non-blank lines in the file: what a read of it must account for."""
    return line_counts(path)[0]


def line_counts(path: str) -> tuple[int, int]:
    """(non-blank lines, lines whose title a read repairs): a block that is valid UTF-8 as a
    whole (nearly all of them) is not looked at line by line."""
    fs, p = storage.resolve(path)
    n = repaired = 0
    pending = b""
    with fs.open_input_stream(p) as f:
        while block := f.read(1 << 22):
            parts = (pending + block).split(b"\n")
            pending = parts.pop()
            n += sum(1 for line in parts if line.strip())
            repaired += _repaired_in(parts)
    if pending.strip():
        n += 1
        repaired += _repaired_in([pending])
    return n, repaired


def _repaired_in(lines: list[bytes]) -> int:
    try:
        b"\n".join(lines).decode("utf-8")
        return 0
    except UnicodeDecodeError:
        return sum(1 for line in lines if line.strip() and line_repaired(line))


def binary_reason(head: bytes) -> Optional[str]:
    """Why the first bytes of a file say it is not annotation text, or None. A few bad lines
    are quarantined row by row; a binary or non-UTF-8 file is one mistake, not a million."""
    if b"\x00" in head:
        return "it holds NUL bytes"
    text = head.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    if bad > MAX_UNDECODABLE * len(text):
        return f"{bad / len(text):.0%} of its characters are not UTF-8"
    return None


def check_text_file(path: str) -> None:
    """Refuse a .txt input that is not text, naming it, before any work starts."""
    fs, p = storage.resolve(path)
    with fs.open_input_stream(p) as f:
        reason = binary_reason(f.read(SNIFF_BYTES))
    if reason:
        raise InputError(f"{path}: not a Product1M annotation file ({reason} in the first "
                         f"{SNIFF_BYTES // 1024} KiB)")


def check_split(split: Optional[str]) -> None:
    """Fail before any work (or any output is touched) on a split name that does not exist."""
    if split is not None and split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
