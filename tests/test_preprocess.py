"""The preprocess stage end to end on a local Ray cluster (tiny synthetic data + bad rows)."""

import dataclasses
import hashlib
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from egecmp_ray.config import load_config
from egecmp_ray.data.sources import resolve_source
from egecmp_ray.entities.encode import TENSOR_COLUMNS, read_vocab
from egecmp_ray.entities.graph import load_graph
from egecmp_ray.entities.tokenizer import load_tokenizer
from egecmp_ray.entities.preprocess import run_preprocess
from egecmp_ray.entities.regions import GRID_FEATURE_DIM, NUM_REGIONS, grid_features, region_batch


def test_regions_grid_and_missing_image():
    from egecmp_ray.data.synth import generate_rows

    table, _ = generate_rows(load_config(preset="tiny").data, "gallery", 0, 2)
    images = table["image"].to_pylist()
    f = grid_features(images[0])
    assert f.shape == (NUM_REGIONS, GRID_FEATURE_DIM) and np.isfinite(f).all()
    assert f.std() > 0.01  # the picture shows through
    feats, boxes, mask = region_batch([images[0], None, images[1]])
    assert feats.shape == (3, NUM_REGIONS, GRID_FEATURE_DIM) and feats.dtype == np.float16
    assert mask.tolist() == [True, False, True]
    assert (feats[1] == 0).all() and (boxes[1] == 0).all()  # no image: masked, not a black image
    assert np.allclose(boxes[0, :, 4].sum(), 1.0)  # the grid covers the image once
    assert (boxes[0, :, 2] > boxes[0, :, 0]).all()


def test_batched_grid_features_are_each_images_own():
    """Validation featurises images ``Featurise.batch`` at a time, region_batch GRID_BATCH: each
    image must get bit for bit the features it gets alone (serving featurises one query image;
    shards must not depend on how rows were batched), across the flush of a partial batch."""
    import pyarrow as pa

    from dataclasses import replace

    from egecmp_ray.data import validate
    from egecmp_ray.data.synth import generate_rows
    from egecmp_ray.entities.preprocess import GRID_FEATURISE
    from egecmp_ray.entities.regions import grid_features_from_bytes

    table, _ = generate_rows(load_config(preset="tiny").data, "gallery", 0, 7)
    images = table["image"].to_pylist()
    alone = np.stack([grid_features(b) for b in images])
    feats, _, mask = region_batch(images)
    assert mask.all() and np.array_equal(feats, alone.astype(np.float16))
    tagged = table.append_column("origin", pa.array([f"t:{i}" for i in range(7)])).append_column(
        "reason", pa.nulls(7, pa.string()))
    out = validate.validate_table(tagged, validate.Limits(),
                                  replace(GRID_FEATURISE, batch=3))  # 7 images: 3, 3, then 1
    got = [grid_features_from_bytes(b) for b in out["image_features"].to_pylist()]
    assert np.array_equal(np.stack(got), alone.astype(np.float16))


def test_precomputed_detector_regions(tmp_path):
    from egecmp_ray.entities.regions import precomputed_dim

    feats = np.random.default_rng(0).normal(size=(36, 2048)).astype(np.float32)
    boxes = np.tile(np.array([0.1, 0.2, 0.5, 0.6, 0.16], np.float32), (36, 1))
    np.savez(tmp_path / "42.npz", features=feats, boxes=boxes)
    assert precomputed_dim(str(tmp_path)) == 2048
    f, b, mask = region_batch([None, b"ignored"], ["42", "7"], str(tmp_path), 2048)
    assert mask.tolist() == [True, False]  # a file makes an item's regions; none, no regions
    assert f.dtype == np.float32 and np.allclose(f[0], feats) and np.allclose(b[0], boxes)


def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_counts_reconcile_with_injected_bad_rows(prepared):
    tmp, cfg, synth, m = prepared
    assert m["rows_in"] == 400 == m["rows_out"] + m["rows_quarantined"]
    assert m["rows_quarantined"] == synth["rows_corrupt"] > 0
    q = pq.read_table(tmp / "prep" / "quarantine")
    assert q.num_rows == m["rows_quarantined"] and q["reason"].null_count == 0
    assert json.loads((tmp / "prep" / "manifest.json").read_text())["rows_out"] == m["rows_out"]


def test_shards_hold_training_columns(prepared):
    tmp, cfg, _, m = prepared
    t = pq.read_table(tmp / "prep" / "shards")
    assert t.num_rows == m["rows_out"]
    for col in ("item_id", "split", "labels", "title", "entities", "title_ids", "entity_seq_ids",
                "entity_ids", "entity_token_ids", "entity_mask", "region_feats", "region_boxes",
                "image_mask"):
        assert col in t.column_names, col
    import ray

    batch = ray.data.read_parquet(str(tmp / "prep" / "shards")).take_batch(8, batch_format="numpy")
    assert batch["title_ids"].shape == (8, cfg.entities.max_tokens)
    assert batch["entity_ids"].shape == (8, cfg.entities.max_entities)
    assert batch["region_feats"].shape == (8, NUM_REGIONS, GRID_FEATURE_DIM)
    assert batch["image_mask"].all()  # synthetic rows all have images
    assert (batch["entity_ids"] >= -1).all() and batch["entity_ids"].max() < m["entities"]
    tok = load_tokenizer(tmp / "prep" / "vocab")
    assert (batch["title_ids"][:, 0] == tok.token_to_id("[CLS]")).all()
    # Pass 2's entity ids are pass 1's vocabulary: node id = line of the entity in entities.tsv.
    vocab = {e: i for i, (e, _) in enumerate(read_vocab(tmp / "prep" / "vocab" / "entities.tsv"))}
    for ents, ids, mask in zip(batch["entities"], batch["entity_ids"], batch["entity_mask"]):
        assert mask.sum() == len(ents)
        assert ids[:len(ents)].tolist() == [vocab.get(e, -1) for e in ents]
        assert (ids[len(ents):] == -1).all()
    # Train rows have no labels, yet every shard types labels as list<string>.
    for shard in (tmp / "prep" / "shards").glob("*.parquet"):
        assert str(pq.read_schema(shard).field("labels").type) == "list<element: string>"


def test_shards_dictionary_encode_only_their_scalar_and_string_columns(prepared):
    """Dictionary pages on the tensor columns (float16 region features) made a shard's read
    3.6x slower and its write 2x; the scalar and string columns keep theirs."""
    tmp, _, _, _ = prepared
    meta = pq.read_metadata(next((tmp / "prep" / "shards").glob("*.parquet")))
    group = meta.row_group(0)
    encodings = {group.column(i).path_in_schema.split(".")[0]: group.column(i).encodings
                 for i in range(group.num_columns)}
    assert set(TENSOR_COLUMNS) <= set(encodings)
    assert [c for c in TENSOR_COLUMNS if "RLE_DICTIONARY" in encodings[c]] == []
    assert all("RLE_DICTIONARY" in encodings[c] for c in ("item_id", "title", "entities"))


def test_vocab_and_graph_files(prepared):
    tmp, cfg, _, m = prepared
    lines = (tmp / "prep" / "vocab" / "entities.tsv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == m["entities"] > 10
    counts = [int(line.split("\t")[1]) for line in lines]
    assert counts == sorted(counts, reverse=True) and min(counts) >= cfg.entities.min_count
    data = load_graph(tmp / "prep" / "graph")
    assert data.num_nodes == m["entities"] and data.edge_index.shape[1] > 0
    sets = torch.load(tmp / "prep" / "graph" / "sets.pt", weights_only=True)
    assert sets["positives"].shape[0] == m["entities"]
    assert (tmp / "prep" / "vocab" / "tokenizer.json").is_file()
    assert not (tmp / "prep" / "_work").exists()


@pytest.mark.slow
def test_rerun_is_idempotent(prepared):
    tmp, cfg, _, m = prepared
    before = {d: _digest(tmp / "prep" / d) for d in ("vocab", "graph")}
    rows_before = sorted(pq.read_table(tmp / "prep" / "shards", columns=["item_id"])["item_id"].to_pylist())
    (tmp / "prep" / "notes.txt").write_text("mine")  # not preprocess's: left alone
    again = run_preprocess(resolve_source(str(tmp / "synth")), str(tmp / "prep"), cfg)
    assert (again["rows_out"], again["rows_quarantined"]) == (m["rows_out"], m["rows_quarantined"])
    assert sorted(p.name for p in (tmp / "prep").iterdir()) == [
        "graph", "manifest.json", "notes.txt", "quarantine", "shards", "vocab"]  # no staging left
    (tmp / "prep" / "notes.txt").unlink()
    assert {d: _digest(tmp / "prep" / d) for d in ("vocab", "graph")} == before
    rows_after = sorted(pq.read_table(tmp / "prep" / "shards", columns=["item_id"])["item_id"].to_pylist())
    assert rows_after == rows_before  # same rows, no duplicates


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else value  # tensor columns: ndarray


def _by_id(directory) -> dict:
    t = pq.read_table(directory)
    return {r["item_id"]: {k: _plain(v) for k, v in r.items()} for r in t.to_pylist()}


def test_shards_are_what_the_inference_encoder_computes_from_the_raw_rows(prepared):
    """The two passes (regions on validation's one decode in pass 1, token ids in pass 2)
    give every shard column exactly as ``encode_batch``/``item_features`` (the serving and
    evaluation encoder) compute it from the raw row in one call."""
    from egecmp_ray.data.validate import Limits, row_problem
    from egecmp_ray.entities.encode import encode_batch

    tmp, cfg, _, m = prepared
    shards = _by_id(tmp / "prep" / "shards")
    raw = [r for f in sorted((tmp / "synth").rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    raw = [r for r in raw if row_problem(r, Limits()) is None and r["item_id"] in shards]
    assert len(raw) > 100
    batch = {k: [r[k] for r in raw] for k in ("item_id", "split", "labels", "price", "category",
                                             "title", "image")}
    direct = encode_batch(batch, cfg.entities, str(tmp / "prep" / "vocab")).to_pylist()
    for want in direct:
        got = shards[want["item_id"]]
        assert set(got) == set(want)
        for column, value in want.items():
            assert got[column] == _plain(value), (want["item_id"], column)


@pytest.mark.slow
def test_a_rerun_writes_the_same_shard_rows_byte_for_byte(prepared, tmp_path, monkeypatch):
    """... also when the files are cut smaller: the later passes' unit of work is a file of at
    most ``FILE_ROWS`` rows (Ray Data left alone packs a pass into a few large blocks)."""
    from egecmp_ray.entities import preprocess

    tmp, cfg, _, _ = prepared
    again = tmp_path / "again"
    monkeypatch.setattr(preprocess, "FILE_ROWS", 64)
    run_preprocess(resolve_source(str(tmp / "synth")), str(again), cfg)
    sizes = [pq.read_metadata(f).num_rows for f in (again / "shards").glob("*.parquet")]
    assert max(sizes) <= 64 and len(sizes) >= sum(sizes) / 64, sizes
    first, second = _by_id(tmp / "prep" / "shards"), _by_id(again / "shards")
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)
    assert _digest(again / "vocab") == _digest(tmp / "prep" / "vocab")
    assert _digest(again / "graph") == _digest(tmp / "prep" / "graph")


def test_pass_two_encodes_each_work_file_in_its_own_task(prepared, tmp_path):
    """A batch size on the encoder made Ray Data fuse it with the file reader and bundle that
    many *files* into one task: all of pass 2 ran as one task, on one CPU. Each ``_work``
    file must stay its own task (what lets pass 2 use every worker)."""
    from egecmp_ray.data.ingest import validated_rows
    from egecmp_ray.entities import preprocess
    from egecmp_ray.entities.encode import work_batch

    tmp, cfg, _, m = prepared
    work = tmp_path / "work"  # pass 1's output, in files of 64 rows
    (validated_rows(resolve_source(str(tmp / "synth")), cfg.data, None,
                    featurise=preprocess.GRID_FEATURISE)
     .map_batches(work_batch, batch_format="numpy", fn_kwargs={"cfg": cfg.entities})
     .write_parquet(str(work), max_rows_per_file=64))
    files = len(list(work.glob("*.parquet")))
    ds = preprocess.encoded_rows(str(work), cfg.entities, str(tmp / "prep" / "vocab")).materialize()
    assert ds.count() == m["rows_out"] and files >= 5
    tasks = [int(n) for n in re.findall(r"(\d+) tasks executed", ds.stats())]
    assert max(tasks) >= files, ds.stats()


def test_the_passes_ray_data_fns_do_not_import_torch():
    """Every worker that runs one of preprocess's Ray Data fns (the counts, pass 2's file
    reader) imports the module they live in: torch and torch_geometric there cost ~1.7 s of
    CPU per worker process, on the critical path of the counts and pass 2 (200k rows, 2
    workers: counts 10.9 -> 8.7 s). Only the entity-graph task may import them."""
    import subprocess
    import sys

    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, egecmp_ray.entities.preprocess, egecmp_ray.data.ingest;"
         "print(sorted(m for m in ('torch', 'torch_geometric') if m in sys.modules))"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert heavy == "[]"


@pytest.mark.slow
def test_given_tokenizer_is_used_and_bad_arguments_fail_first(prepared, tmp_path):
    from egecmp_ray.config import InputError

    tmp, cfg, _, m = prepared
    (tmp_path / "tok").mkdir()
    vocab_txt = (tmp / "prep" / "vocab" / "vocab.txt").read_text(encoding="utf-8")
    (tmp_path / "tok" / "vocab.txt").write_text(vocab_txt, encoding="utf-8")
    out = tmp_path / "out"
    again = run_preprocess(resolve_source(str(tmp / "synth")), str(out), cfg,
                           tokenizer_path=str(tmp_path / "tok"))
    assert again["inputs"]["tokenizer"] == str(tmp_path / "tok")
    assert (out / "vocab" / "vocab.txt").read_text(encoding="utf-8") == vocab_txt
    before = sorted(p.name for p in out.rglob("*"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(InputError, match="special tokens"):
        run_preprocess(resolve_source(str(tmp / "synth")), str(out), cfg,
                       tokenizer_path=str(tmp_path / "bad"))
    bad_cfg = dataclasses.replace(cfg, entities=dataclasses.replace(cfg.entities, extractor="nope:fn"))
    with pytest.raises(InputError, match="extractor"):
        run_preprocess(resolve_source(str(tmp / "synth")), str(out), bad_cfg)
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing was removed


def test_real_dev_titles(ray_session, dev_file, tmp_path):
    cfg = load_config(preset="tiny")
    m = run_preprocess(resolve_source(str(dev_file)), str(tmp_path / "dev"), cfg)
    assert m["rows_out"] == 2673 and m["rows_quarantined"] == 0
    vocab = [line.split("\t")[0] for line in
             (tmp_path / "dev" / "vocab" / "entities.tsv").read_text(encoding="utf-8").splitlines()]
    assert "ahc" in vocab
    batch = pq.read_table(tmp_path / "dev" / "shards").slice(0, 4).to_pydict()
    assert not any(batch["image_mask"])  # the real files here have no images
