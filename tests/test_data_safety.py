"""No silent data loss: colliding quarantine batches, failed re-runs, repeated ids, --out over an
input (issue 14)."""

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from egecmp_ray.cli import cli
from egecmp_ray.config import InputError, load_config
from egecmp_ray.data import ingest
from egecmp_ray.data.ingest import run_ingest, validated_rows
from egecmp_ray.data.sources import resolve_source
from egecmp_ray.data.validate import Limits, quarantine_batch
from egecmp_ray.entities.preprocess import run_preprocess

ROW = {"item_id": "1", "title": "AHC 黄金面霜 套装", "image": None, "has_image": False,
       "image_url": None, "labels": ["AHC 黄金面霜"], "price": 9.9, "category": None,
       "split": "gallery", "source": "synthetic"}


def _parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _tree(directory):
    """Relative path -> bytes of every file under ``directory``."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _dev_lines(dev_file, n):
    return dev_file.read_bytes().split(b"\n")[:n]


def test_equal_bad_batches_never_overwrite_each_other(tmp_path):
    from egecmp_ray.data.sources import tag_parquet_batch

    rows = pa.Table.from_pylist([{**ROW, "item_id": None}] * 3)
    batch = tag_parquet_batch(rows, pa.array(["f.parquet"] * 3))
    for _ in range(2):
        quarantine_batch(batch, Limits(), str(tmp_path / "q"), {})
    assert pq.read_table(tmp_path / "q").num_rows == 6


def test_idless_parquet_rows_are_all_quarantined(ray_session, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "VALIDATE_BATCH_ROWS", 250)  # 8 batches of identical bad rows
    rows = [{**ROW, "item_id": None}] * 2000 + [{**ROW, "item_id": str(i)} for i in range(300)]
    _parquet(tmp_path / "c" / "part.parquet", rows)
    m = run_ingest(resolve_source(str(tmp_path / "c")), str(tmp_path / "out"),
                   load_config(preset="tiny").data)
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (2300, 300, 2000)
    q = pq.read_table(tmp_path / "out" / "quarantine")
    assert q.num_rows == 2000 and len(set(q["origin"].to_pylist())) == 2000
    assert len(list((tmp_path / "out" / "quarantine").glob("*.parquet"))) >= 8


def test_failed_ingest_leaves_previous_output(ray_session, tmp_path, monkeypatch):
    cfg = load_config(preset="tiny").data
    _parquet(tmp_path / "good" / "part.parquet", [{**ROW, "item_id": str(i)} for i in range(50)])
    out = tmp_path / "out"
    run_ingest(resolve_source(str(tmp_path / "good")), str(out), cfg)
    (out / "notes.txt").write_text("mine")
    before = _tree(out)

    def fail(*_):
        raise RuntimeError("row counts do not reconcile")

    monkeypatch.setattr(ingest, "reconcile", fail)
    with pytest.raises(RuntimeError, match="reconcile"):
        run_ingest(resolve_source(str(tmp_path / "good")), str(out), cfg)
    assert _tree(out) == before  # nothing replaced, no staging left behind
    monkeypatch.undo()

    # A run that succeeds replaces what ingest owns (on a file:// URI too) and nothing else.
    m = run_ingest(resolve_source(str(tmp_path / "good")), out.as_uri(), cfg)
    assert m["rows_out"] == 50 and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.txt", "rows"]
    assert pq.read_table(out / "rows").num_rows == 50


def _output(directory, tag):
    for name in ("shards", "vocab"):
        (directory / name).mkdir(parents=True)
        for part in range(2):
            (directory / name / f"part-{part}").write_text(f"{tag} {name} {part}")
    (directory / "manifest.json").write_text(tag)


def _object_store_move(src, dst, fail):
    """A move as on an object store: a directory file by file; ``fail``: after one file."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        if fail:
            raise OSError(f"injected failure moving {src}")
        src.rename(dst)
        return
    for i, f in enumerate(sorted(p for p in src.rglob("*") if p.is_file())):
        if fail and i == 1:
            raise OSError(f"injected failure half-way through {src}")
        (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        f.rename(dst / f.relative_to(src))
    shutil.rmtree(src)


# (phase, n): the n-th move of that phase fails. "aside" moves an old entry out of the way
# (manifest, shards, vocab), "new" a staged one in (shards, vocab, manifest), "back" an old
# one back after a failure.
@pytest.mark.parametrize("failures", [[("new", 1)], [("new", 2)], [("new", 3)], [("aside", 2)],
                                      [("new", 2), ("back", 1)]])
def test_a_publish_that_fails_half_way_keeps_the_previous_output(tmp_path, monkeypatch, failures):
    """A move that fails during the swap (an object store error) once left the new shards
    beside no vocab and no manifest: the old entries must come back whole."""
    from egecmp_ray.data import storage

    out = tmp_path / "out"
    _output(out, "old")
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    seen = {"aside": 0, "new": 0, "back": 0}

    def flaky(fs, src, dst):
        phase = "new" if ".staging-" in src else "back" if ".previous-" in src else "aside"
        seen[phase] += 1
        _object_store_move(src, dst, (phase, seen[phase]) in failures)

    monkeypatch.setattr(storage, "_move", flaky)
    with pytest.raises((OSError, RuntimeError)) as err:
        with storage.staged(str(out)) as stage:
            _output(Path(stage), "new")
            storage.publish(stage, str(out), ["shards", "vocab", "graph"])
    if len(failures) == 1:
        assert _tree(out) == before and not list(out.glob(".previous-*"))
    else:  # the put-back failed too: the error says where the rest of the previous output is
        aside = next(out.glob(".previous-*"))
        assert str(aside) in str(err.value) and isinstance(err.value, RuntimeError)
        back = {**_tree(out), **{k: v for k, v in _tree(aside).items()}}
        assert {k: v for k, v in back.items() if k in before} == before
    monkeypatch.undo()
    with storage.staged(str(out)) as stage:
        _output(Path(stage), "new")
        storage.publish(stage, str(out), ["shards", "vocab", "graph"])
    assert (out / "manifest.json").read_text() == "new" and (out / "notes.txt").read_text() == "mine"
    assert (out / "vocab" / "part-1").read_text() == "new vocab 1"


def test_failed_preprocess_leaves_previous_output(prepared, tmp_path):
    tmp, cfg, _, m = prepared
    out = tmp_path / "P"
    shutil.copytree(tmp / "prep", out)
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    _parquet(tmp_path / "bad" / "part.parquet", [{**ROW, "title": ""}] * 30)
    with pytest.raises(InputError, match=r"no valid rows .* all 30 were quarantined \(empty_title: 30\)"):
        run_preprocess(resolve_source(str(tmp_path / "bad")), str(out), cfg)
    empty = tmp_path / "product1m_dev_empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="no rows"):
        run_preprocess(resolve_source(str(empty)), str(out), cfg)
    assert _tree(out) == before

    result = CliRunner().invoke(cli, ["preprocess", "--input", str(tmp_path / "bad"),
                                      "--out", str(tmp_path / "new"), "--preset", "tiny"])
    assert result.exit_code == 2 and "no valid rows" in result.output, result.output
    assert not (tmp_path / "new").exists()  # a failed first run leaves no directory behind


def test_repeated_txt_id_is_quarantined_not_upserted(ray_session, dev_file, tmp_path):
    lines = _dev_lines(dev_file, 20)
    path = tmp_path / "product1m_dev_dup.txt"
    path.write_bytes(b"\n".join(lines + [lines[0]]) + b"\n")
    cfg = load_config(preset="tiny").data
    m = run_ingest(resolve_source(str(path)), str(tmp_path / "i"), cfg)
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (21, 20, 1)
    assert m["quarantine_reasons"] == {"duplicate_id": 1}
    q = pq.read_table(tmp_path / "i" / "quarantine").to_pylist()
    assert q[0]["origin"].endswith(f":{len(b''.join(lines)) + 20}")  # the repeat, not the first
    assert q[0]["reason"].endswith(f"kept from {resolve_source(str(path)).files[0]}:0")

    # index and evaluate read through validated_rows: they see 20 items and 1 quarantined.
    assert validated_rows(resolve_source(str(path)), cfg, str(tmp_path / "q")).count() == 20
    assert pq.read_table(tmp_path / "q").num_rows == 1


def test_first_valid_parquet_row_of_an_id_is_kept(ray_session, tmp_path):
    _parquet(tmp_path / "src" / "a.parquet", [{**ROW, "item_id": "x", "title": ""},
                                              {**ROW, "item_id": "y", "title": "y first"}])
    _parquet(tmp_path / "src" / "b.parquet", [{**ROW, "item_id": "x", "title": "x first valid"},
                                              {**ROW, "item_id": "y", "title": "y again"},
                                              {**ROW, "item_id": "x", "title": "x again"}])
    m = run_ingest(resolve_source(str(tmp_path / "src")), str(tmp_path / "o"),
                   load_config(preset="tiny").data)
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (5, 2, 3)
    assert m["quarantine_reasons"] == {"duplicate_id": 2, "empty_title": 1}
    kept = pq.read_table(tmp_path / "o" / "rows").to_pylist()
    assert sorted(r["title"] for r in kept) == ["x first valid", "y first"]


@pytest.mark.slow
def test_preprocess_counts_repeated_ids(ray_session, dev_file, tmp_path):
    lines = _dev_lines(dev_file, 150)
    path = tmp_path / "product1m_dev_dup.txt"
    path.write_bytes(b"\n".join(lines + [lines[3], lines[0]]))
    m = run_preprocess(resolve_source(str(path)), str(tmp_path / "p"), load_config(preset="tiny"))
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (152, 150, 2)
    assert m["quarantine_reasons"] == {"duplicate_id": 2}
    ids = pq.read_table(tmp_path / "p" / "shards", columns=["item_id"])["item_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 150


def test_out_overlapping_an_input_is_refused_before_writing(ray_session, tmp_path):
    cfg = load_config(preset="tiny")
    src = tmp_path / "S2"
    _parquet(src / "part.parquet", [{**ROW, "item_id": str(i)} for i in range(10)])
    (src / "manifest.json").write_text(json.dumps({"kind": "mine"}))
    before = _tree(src)
    source = resolve_source(str(src))
    for out in (src, src / "prep", tmp_path):  # equal, inside, containing
        with pytest.raises(InputError, match=re.escape(f"--out {out} and --input {src}")):
            run_preprocess(source, str(out), cfg)
        with pytest.raises(InputError, match="overlap"):
            run_ingest(source, str(out), cfg.data)
    assert _tree(src) == before and not (src / "prep").exists()

    txt = tmp_path / "d" / "product1m_dev_x.txt"
    txt.parent.mkdir()
    txt.write_text("1#####t#####u#####u#####L\n", encoding="utf-8")
    (tmp_path / "o" / "img").mkdir(parents=True)
    with pytest.raises(InputError, match="--images"):
        run_ingest(resolve_source(str(txt)), str(tmp_path / "o"), cfg.data,
                   images_dir=str(tmp_path / "o" / "img"))
    with pytest.raises(InputError, match="--input"):
        run_ingest(resolve_source(str(txt)), str(txt.parent), cfg.data)

    result = CliRunner().invoke(cli, ["preprocess", "--input", str(src), "--out", str(src),
                                      "--preset", "tiny"])
    assert result.exit_code == 2 and "overlap" in result.output
    assert _tree(src) == before


def test_validation_reads_each_file_in_its_own_task(ray_session, tmp_path):
    """Ray Data fuses the file reader with validation; a batch size on validation made it
    bundle that many *files* into one task, so one task read and validated everything. Each
    file must stay its own task (what lets preprocess and ingest use every worker)."""
    for f in range(6):
        _parquet(tmp_path / "c" / f"part-{f}.parquet",
                 [{**ROW, "item_id": f"{f}-{i}"} for i in range(20)])
    ds = validated_rows(resolve_source(str(tmp_path / "c")), load_config(preset="tiny").data,
                        None).materialize()
    assert ds.count() == 120
    tasks = [int(n) for n in re.findall(r"(\d+) tasks executed", ds.stats())]
    assert tasks and max(tasks) >= 6, ds.stats()
