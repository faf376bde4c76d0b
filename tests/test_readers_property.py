"""A property test of the readers (issue 14): random mixes of good rows, every bad kind and
repeated ids, read with random batch and byte-range sizes, as a Product1M .txt file and as
Parquet files. ``ingest`` must always reconcile, quarantine each bad row with its reason, and
keep every good row exactly once. Plain ``random`` with fixed seeds, so a failure replays."""

import dataclasses
import io
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from egecmp_ray.config import load_config
from egecmp_ray.data import duplicates, ingest
from egecmp_ray.data.ingest import run_ingest
from egecmp_ray.data.schema import SAMPLE_SCHEMA
from egecmp_ray.data.sources import resolve_source

CFG = load_config(preset="tiny").data
LONG = "长" * (CFG.max_title_chars + 1)
WORDS = ("韩国", "AHC", "黄金面霜", "【正品】", "SK-II", "神仙水", "230ml", "套装", "包邮！")

# .txt lines of each bad kind, given an item id (split dev: every row needs a label).
TXT_BAD = {
    "wrong_field_count": lambda i: f"{i}#####only a title".encode(),
    "non_utf8_text": lambda i: f"{i}#####坏".encode() + b"\xff" + "#####u#####u#####L1".encode(),
    "empty_title": lambda i: f"{i}##########u#####u#####L1".encode(),
    "empty_after_cleaning": lambda i: f"{i}#####【】！！#####u#####u#####L1".encode(),
    "title_too_long": lambda i: f"{i}#####{LONG}#####u#####u#####L1".encode(),
    "missing_labels": lambda i: f"{i}#####面霜#####u#####u#####".encode(),
    "empty_label": lambda i: f"{i}#####面霜#####u#####u#####L1#;# ".encode(),
    "bad_item_id": lambda i: f"a/{i}#####面霜#####u#####u#####L1".encode(),
    "missing_item_id": lambda i: "#####面霜#####u#####u#####L1".encode(),
}

# Parquet rows of each bad kind: what changes in a good row.
PARQUET_BAD = {
    "missing_item_id": {"item_id": None},
    "bad_item_id": {"item_id": "a/b"},
    "empty_title": {"title": " "},
    "empty_after_cleaning": {"title": "【】！！"},
    "title_too_long": {"title": LONG},
    "bad_price": {"price": -1.0},
    "too_many_labels": {"labels": ["L1"] * (CFG.max_labels + 1)},
    "empty_label": {"labels": ["L1", " "]},
    "missing_labels": {"labels": []},
    "unknown_split": {"split": "holdout"},
    "undecodable_image": {"image": b"not an image", "has_image": True},
    "has_image_without_bytes": {"image": None, "has_image": True},
    "null_field": {"source": None},
}


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 128, 255)).save(buf, format="JPEG")
    return buf.getvalue()


def _plan(rng: random.Random, bad_kinds, n_good: int) -> list[tuple]:
    """[(bad kind or None, item id, title, expected reason kind or None)] in input order:
    each bad kind at least once, ids repeated at random (a later valid repeat of an id whose
    earlier row was valid is a ``duplicate_id``; a repeat in a bad row keeps its own reason)."""
    kinds = list(bad_kinds) + rng.choices(list(bad_kinds), k=rng.randint(0, 6)) + [None] * n_good
    rng.shuffle(kinds)
    plan, ids, valid_ids = [], [], set()
    for j, kind in enumerate(kinds):
        item_id = rng.choice(ids) if ids and rng.random() < 0.2 else f"p{j}"
        ids.append(item_id)
        title = " ".join(rng.sample(WORDS, rng.randint(1, 4))) + f" {j}"
        if kind is not None:
            expected = kind
        elif item_id in valid_ids:
            expected = "duplicate_id"
        else:
            expected = None
            valid_ids.add(item_id)
        plan.append((kind, item_id, title, expected))
    return plan


def _randomise_batches(rng: random.Random, monkeypatch) -> dict:
    rows = rng.choice((1, 3, 7, 1000))
    monkeypatch.setattr(ingest, "VALIDATE_BATCH_ROWS", rows)
    monkeypatch.setattr(duplicates, "VALIDATE_BATCH_ROWS", rows)
    return {"read_chunk_bytes": rng.choice((64, 500, 4096, 8_000_000))}


def _write_txt(rng: random.Random, plan, path) -> dict[str, tuple]:
    """The plan as a dev .txt file (blank lines and CRLF mixed in); origin -> (plan row, line)."""
    data, by_origin = b"", {}
    origin = str(path.resolve())
    for kind, item_id, title, expected in plan:
        if rng.random() < 0.1:
            data += rng.choice((b"\n", b"   \n"))
        line = TXT_BAD[kind](item_id) if kind else f"{item_id}#####{title}#####u#####u#####L1".encode()
        by_origin[f"{origin}:{len(data)}"] = ((kind, item_id, title, expected), line)
        data += line + rng.choice((b"\n", b"\r\n"))
    path.write_bytes(data if rng.random() < 0.5 else data.rstrip(b"\r\n"))
    return by_origin


def _write_parquet(rng: random.Random, plan, directory) -> dict[str, tuple]:
    """The plan as 1-4 Parquet files of random row-group sizes; origin -> (plan row, row)."""
    jpeg = _jpeg()
    schema = pa.schema([f.with_nullable(True) for f in SAMPLE_SCHEMA])
    rows = []
    for kind, item_id, title, _ in plan:
        image = jpeg if rng.random() < 0.2 else None
        row = {"item_id": item_id, "title": title, "image": image, "has_image": image is not None,
               "image_url": None, "labels": ["L1"], "price": rng.choice((None, 9.9)),
               "category": None, "split": "gallery", "source": "synthetic"}
        rows.append({**row, **PARQUET_BAD.get(kind, {})})
    cuts = sorted(rng.sample(range(1, len(rows)), rng.randint(0, 3)))
    directory.mkdir()
    for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(rows)])):
        pq.write_table(pa.Table.from_pylist(rows[a:b], schema=schema),
                       directory / f"part-{k:03d}.parquet", row_group_size=rng.randint(1, 20))
    files = resolve_source(str(directory)).files
    by_origin = {}
    for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(rows)])):
        for i in range(a, b):
            by_origin[f"{files[k]}:{i - a}"] = (plan[i], rows[i])
    return by_origin


# Seeds picked so the cases span validation batches of 1, 3, 7 and 1000 rows and .txt byte
# ranges of 64 and 4096 bytes.
@pytest.mark.parametrize("kind, seed", [("txt", 1), ("txt", 5), ("parquet", 0), ("parquet", 2)])
def test_ingest_reconciles_any_mix_of_rows(ray_session, tmp_path, monkeypatch, kind, seed):
    rng = random.Random(seed)
    cfg = dataclasses.replace(CFG, **_randomise_batches(rng, monkeypatch))
    if kind == "txt":
        plan = _plan(rng, TXT_BAD, rng.randint(40, 150))
        inp = tmp_path / "product1m_dev_mix.txt"
        by_origin = _write_txt(rng, plan, inp)
    else:
        plan = _plan(rng, PARQUET_BAD, rng.randint(40, 150))
        inp = tmp_path / "rows"
        by_origin = _write_parquet(rng, plan, inp)

    m = run_ingest(resolve_source(str(inp)), str(tmp_path / "out"), cfg)
    assert m["rows_in"] == len(plan) == m["rows_out"] + m["rows_quarantined"]

    good = sorted((item_id, title) for _, item_id, title, expected in plan if expected is None)
    kept = pq.read_table(tmp_path / "out" / "rows", columns=["item_id", "title"]).to_pylist()
    assert sorted((r["item_id"], r["title"]) for r in kept) == good  # none lost, none twice

    want = {o: p[3] for o, (p, _) in by_origin.items() if p[3] is not None}
    q = pq.read_table(tmp_path / "out" / "quarantine").to_pylist()
    assert {r["origin"]: r["reason"].split(":", 1)[0] for r in q} == want and len(q) == len(want)
    assert m["quarantine_reasons"] == dict(Counter(want.values()))
    for r in q:  # a line that could not be parsed keeps its bytes
        if r["reason"].startswith(("wrong_field_count", "non_utf8_text")):
            assert r["raw"] == by_origin[r["origin"]][1]
