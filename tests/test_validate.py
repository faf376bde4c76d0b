"""Validation and quarantine: every bad row gets a reason; counts reconcile end to end."""

import dataclasses
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from egecmp_ray.config import load_config
from egecmp_ray.data.ingest import run_ingest
from egecmp_ray.data.sources import resolve_source
from egecmp_ray.data.synth_pipeline import run_synth
from egecmp_ray.data.validate import Limits, row_problem


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 128, 255)).save(buf, format="JPEG")
    return buf.getvalue()


def _row(**kw):
    row = {"item_id": "1", "title": "AHC 黄金面霜", "image": None, "has_image": False,
           "image_url": None, "labels": ["AHC 黄金面霜"], "price": 9.9, "category": None,
           "split": "gallery", "source": "synthetic"}
    row.update(kw)
    return row


@pytest.mark.parametrize("change, reason", [
    ({}, None),
    ({"image": _jpeg(), "has_image": True}, None),
    ({"title": ""}, "empty_title"),
    ({"title": "   "}, "empty_title"),
    ({"title": None}, "empty_title"),
    ({"title": "【】！！"}, "empty_after_cleaning"),
    ({"title": "——\u200b ，。..."}, "empty_after_cleaning"),
    ({"title": "【正品】！"}, None),
    ({"item_id": ""}, "missing_item_id"),
    ({"title": "x" * 513}, "title_too_long"),
    ({"title": "bad \ufffd text"}, "non_utf8_text"),
    ({"labels": ["a"] * 65}, "too_many_labels"),
    ({"labels": ["a", " "]}, "empty_label"),
    ({"split": "holdout"}, "unknown_split"),
    ({"price": -1.0}, "bad_price"),
    ({"price": float("nan")}, "bad_price"),
    ({"image": _jpeg()[:100], "has_image": True}, "undecodable_image"),
    ({"image": b"not an image", "has_image": True}, "undecodable_image"),
    ({"image": b"\xff" * 9_000_000, "has_image": True}, "image_too_large"),
    ({"has_image": True}, "has_image_without_bytes"),
    ({"labels": []}, "missing_labels"),
    ({"labels": [], "split": "train"}, None),
    ({"price": float("inf")}, "bad_price"),
    ({"item_id": "../etc/passwd"}, "bad_item_id"),
    ({"source": None}, "null_field"),
])
def test_row_problem(change, reason):
    got = row_problem(_row(**change), Limits())
    assert (got is None) if reason is None else got.startswith(reason)


def test_quarantine_reconciles_with_injected_bad_rows(ray_session, tmp_path):
    cfg = dataclasses.replace(load_config(preset="tiny").data, rows=400, shard_rows=100,
                              corrupt_fraction=0.1)
    synth = run_synth(cfg, str(tmp_path / "synth"))
    injected = synth["rows_corrupt"]
    assert injected > 10

    out = tmp_path / "ingest"
    m = run_ingest(resolve_source(str(tmp_path / "synth")), str(out), cfg)
    assert m["rows_in"] == 400 == m["rows_out"] + m["rows_quarantined"]
    assert m["rows_quarantined"] == injected
    assert set(m["quarantine_reasons"]) <= {"empty_title", "undecodable_image", "title_too_long",
                                            "too_many_labels"}
    q = pq.read_table(out / "quarantine")
    assert q.num_rows == injected and q["reason"].null_count == 0
    kept = pq.read_table(out / "rows")
    assert kept.num_rows == m["rows_out"]
    assert not set(kept["item_id"].to_pylist()) & set(q["item_id"].to_pylist())

    # Re-running gives the same outputs, not duplicates.
    again = run_ingest(resolve_source(str(tmp_path / "synth")), str(out), cfg)
    assert (again["rows_out"], again["rows_quarantined"]) == (m["rows_out"], m["rows_quarantined"])
    assert pq.read_table(out / "rows").num_rows == m["rows_out"]
    assert pq.read_table(out / "quarantine").num_rows == injected


def test_txt_ingest_quarantines_bad_lines_with_raw_bytes(ray_session, tmp_path):
    good = [f"{i}#####韩国AHC黄金面霜{i}#####u#####u#####AHC 黄金面霜" for i in range(50)]
    bad = [b"77#####only two", "78#####坏".encode() + b"\xff" + "#####u#####u#####AHC 黄金水".encode(),
           "79##########u#####u#####AHC 黄金水".encode(), ("80#####" + "长" * 600 + "#####u#####u#####L").encode()]
    path = tmp_path / "product1m_dev_x.txt"
    path.write_bytes(b"\n".join([g.encode() for g in good[:25]] + bad + [g.encode() for g in good[25:]]))
    cfg = load_config(preset="tiny").data
    out = tmp_path / "ingest"
    m = run_ingest(resolve_source(str(path)), str(out), cfg)
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (54, 50, 4)
    assert m["quarantine_reasons"] == {"empty_title": 1, "non_utf8_text": 1, "title_too_long": 1,
                                       "wrong_field_count": 1}
    q = pq.read_table(out / "quarantine").to_pylist()
    raw = {r["item_id"]: r["raw"] for r in q}
    assert raw["77"] == b"77#####only two" and b"\xff" in raw["78"]
    assert json.loads((out / "manifest.json").read_text())["rows_without_image"] == 50


def test_null_and_mistyped_parquet_rows_are_quarantined_not_fatal(ray_session, tmp_path):
    good = _row(item_id="1")
    rows = [good, {**good, "item_id": None}, {**good, "item_id": "3", "labels": None},
            {**good, "item_id": "4", "split": None}, {**good, "item_id": "5", "price": "cheap"},
            {**good, "item_id": "6", "has_image": None, "labels": None, "split": "train"}]
    src = tmp_path / "src"
    src.mkdir()
    table = pa.table({k: [r[k] for r in rows] for k in good
                      if k != "price"}).append_column("price", pa.array([str(r["price"]) for r in rows]))
    pq.write_table(table, src / "part.parquet")
    m = run_ingest(resolve_source(str(src)), str(tmp_path / "out"), load_config(preset="tiny").data)
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (6, 2, 4)
    assert m["quarantine_reasons"] == {"bad_type": 1, "missing_item_id": 1, "missing_labels": 1,
                                       "unknown_split": 1}
    kept = pq.read_table(tmp_path / "out" / "rows").to_pylist()
    assert sorted(r["item_id"] for r in kept) == ["1", "6"]
    assert [r["labels"] for r in kept if r["item_id"] == "6"] == [[]]  # null labels -> []
    q = pq.read_table(tmp_path / "out" / "quarantine")
    # Each row's origin is its file and row: the row can be found again.
    assert sorted(q["origin"].to_pylist()) == [f"{src / 'part.parquet'}:{i}" for i in (1, 2, 3, 4)]


def test_multi_range_txt_ingest_and_empty_file(ray_session, tmp_path):
    lines = [f"{i}#####标题{i}#####u#####u#####L{i % 3}" for i in range(300)]
    lines[150] = "150#####broken"
    path = tmp_path / "product1m_test_x.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = dataclasses.replace(load_config(preset="tiny").data, read_chunk_bytes=64)
    m = run_ingest(resolve_source(str(path)), str(tmp_path / "o"), cfg)
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (300, 299, 1)
    kept = pq.read_table(tmp_path / "o" / "rows")
    assert sorted(kept["item_id"].to_pylist(), key=int) == [str(i) for i in range(300) if i != 150]
    assert set(kept["split"].to_pylist()) == {"test"}
    origin = pq.read_table(tmp_path / "o" / "quarantine")["origin"][0].as_py()
    offset = int(origin.rsplit(":", 1)[1])
    assert path.read_bytes()[offset:].startswith(b"150#####broken")

    empty = tmp_path / "product1m_dev_empty.txt"
    empty.write_bytes(b"")
    m = run_ingest(resolve_source(str(empty)), str(tmp_path / "e"), cfg)
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (0, 0, 0)


def test_bad_flags_fail_before_outputs_are_touched(tmp_path, dev_file):
    from egecmp_ray.config import InputError

    out = tmp_path / "out"
    (out / "rows").mkdir(parents=True)
    (out / "rows" / "keep.parquet").write_bytes(b"previous results")
    cfg = load_config(preset="tiny").data
    with pytest.raises(InputError, match="unknown split"):
        run_ingest(resolve_source(str(dev_file)), str(out), cfg, split="holdout")
    with pytest.raises(FileNotFoundError, match="--images"):
        run_ingest(resolve_source(str(dev_file)), str(out), cfg, images_dir=str(tmp_path / "no"))
    assert (out / "rows" / "keep.parquet").read_bytes() == b"previous results"


def test_ingest_output_reads_back_as_input(ray_session, tmp_path):
    cfg = dataclasses.replace(load_config(preset="tiny").data, rows=100, corrupt_fraction=0.2)
    run_synth(cfg, str(tmp_path / "s"))
    first = run_ingest(resolve_source(str(tmp_path / "s")), str(tmp_path / "i1"), cfg)
    source = resolve_source(str(tmp_path / "i1"))
    assert all("/rows/" in f for f in source.files)  # its quarantine is not read back
    second = run_ingest(source, str(tmp_path / "i2"), cfg)
    assert second["rows_in"] == second["rows_out"] == first["rows_out"]


def test_missing_input_and_foreign_parquet(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_source(str(tmp_path / "nothing"))
    (tmp_path / "foreign").mkdir()
    pq.write_table(pa.table({"a": [1]}), tmp_path / "foreign" / "x.parquet")
    with pytest.raises(ValueError, match="lacks sample columns"):
        resolve_source(str(tmp_path / "foreign"))
