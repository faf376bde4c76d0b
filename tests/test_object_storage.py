"""Stages read and write object-store URIs (s3:// here, a real S3 API on loopback): the same
outputs as on a local disk, through the same commands."""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pytest

from egecmp_ray.data import storage
from egecmp_ray.data.sources import resolve_source
from egecmp_ray.entities.preprocess import run_preprocess

pytestmark = pytest.mark.slow  # ~150 s: three stages end to end against the S3 server


def _upload(local, uri: str) -> None:
    fs, path = storage.resolve(uri)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def _text(uri: str) -> str:
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


@pytest.fixture(scope="module")
def s3_prep(prepared, s3):
    """The session's synthetic rows uploaded, then preprocessed from S3 to S3: the manifest."""
    tmp, cfg, _, _ = prepared
    _upload(tmp / "synth", f"{s3}/synth")
    return run_preprocess(resolve_source(f"{s3}/synth"), f"{s3}/prep", cfg)


def test_preprocess_from_and_to_s3_writes_what_a_local_run_writes(prepared, s3, s3_prep):
    tmp, _, _, local = prepared
    manifest = s3_prep
    for key in ("rows_in", "rows_out", "rows_quarantined", "entities", "edges_pmi",
                "edges_knn", "edges_context", "tokenizer_vocab"):
        assert manifest[key] == local[key], key
    assert json.loads(_text(f"{s3}/prep/manifest.json"))["rows_out"] == local["rows_out"]
    for name in ("vocab/entities.tsv", "vocab/tokenizer.json"):
        assert _text(f"{s3}/prep/{name}") == (tmp / "prep" / name).read_text(encoding="utf-8")
    fs, root = storage.resolve(f"{s3}/prep")
    names = {i.path[len(root) + 1:] for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))}
    assert {"graph/graph.pt", "graph/sets.pt", "graph/edges_context.parquet"} <= names
    assert not any(n.startswith((".staging", "_work")) for n in names), names
    assert len(storage.list_files(fs, f"{root}/shards")) >= 1


def test_pretrain_on_s3_survives_a_killed_worker_and_a_rerun_resumes_there(prepared, s3,
                                                                          s3_prep):
    """--data and --out on the object store: the manifest and split counts read there, the
    shards streamed by Ray Data, the vocabulary and graph fetched by each worker; Ray Train
    checkpoints there (storage_path defaults to <out>/ray_results), a killed worker resumes
    from one, metrics.jsonl, the model dir and pretrain.json land there, and the same command
    run again resumes from storage."""
    from egecmp_ray.config import load_config
    from egecmp_ray.train.pretrain import run_pretrain

    tmp, _, _, _ = prepared
    out = f"{s3}/run"
    run = ["train.micro_batch=8", "train.checkpoint_every_steps=2", "train.log_every_steps=1",
           "train.cpus_per_worker=0.5"]
    cfg = load_config(preset="tiny", overrides=[*run, "train.max_steps=4", "train.fail_at_step=3",
                                                "train.max_failures=1"])
    first = run_pretrain(f"{s3}/prep", out, cfg)
    assert _text(f"{out}/.fault_injected") == "3" and first["final_step"] == 4
    events = [json.loads(x) for x in _text(f"{out}/metrics.jsonl").splitlines()]
    assert [e["step"] for e in events if e.get("event") == "resumed"] == [2]
    assert [e["step"] for e in events if "loss" in e] == [1, 2, 3, 4]
    fs, root = storage.resolve(out)
    assert storage.exists(fs, f"{root}/model/model.safetensors")
    assert _text(f"{out}/model/vocab/tokenizer.json") == \
        (tmp / "prep" / "vocab" / "tokenizer.json").read_text(encoding="utf-8")
    assert storage.exists(fs, f"{root}/ray_results/pretrain/checkpoint_manager_snapshot.json")

    cfg = load_config(preset="tiny", overrides=[*run, "train.max_steps=6"])
    second = run_pretrain(f"{s3}/prep", out, cfg)
    assert second["resumed_from"].startswith(f"{s3}/run/ray_results/pretrain/checkpoint_")
    assert second["final_step"] == 6
    assert json.loads(_text(f"{out}/pretrain.json"))["final_step"] == 6


def test_evaluate_reads_a_model_and_data_on_s3_and_writes_there(tiny_model_dir, s3, s3_prep,
                                                                tmp_path):
    """A model dir and the synthetic splits on the object store (the index stage's own code
    path: evaluate embeds and indexes the gallery with it); evaluate writes there."""
    from egecmp_ray.config import load_config
    from egecmp_ray.retrieval.evaluate import run_evaluate

    _upload(tiny_model_dir, f"{s3}/model")
    cfg = load_config(preset="tiny", overrides=[f"index.milvus_uri={tmp_path / 'items.db'}"])
    summary = run_evaluate(f"{s3}/synth", f"{s3}/synth", f"{s3}/eval", cfg, "model",
                           f"{s3}/model")
    written = json.loads(_text(f"{s3}/eval/evaluate.json"))
    assert written["metrics"]["top10"] == summary["metrics"]["top10"]
    counts = summary["metrics"]["counts"]
    assert len(_text(f"{s3}/eval/retrieval_id_list.txt").splitlines()) == \
        counts["queries"] + counts["unlabelled_queries"] > 0
