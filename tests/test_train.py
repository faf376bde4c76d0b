"""Pretraining with Ray Train + DeepSpeed on the session's local Ray cluster: a killed worker
resumes from the last checkpoint, a re-run resumes, bad checkpoints are named, checkpoints load
without pickle, and the model directory serves inference. Pure config helpers are unit-tested."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from egecmp_ray.config import InputError, load_config
from egecmp_ray.model.model_dir import MODEL_CONFIG, load_model_dir
from egecmp_ray.train import checkpoint as ckpt
from egecmp_ray.train.deepspeed_config import deepspeed_config, resolve_precision
from egecmp_ray.train.optim import lr_factor, param_groups
from egecmp_ray.train.pretrain import latest_checkpoint, plan_steps, run_pretrain, training_dataset

TINY_RUN = ["train.use_gpu=false", "train.micro_batch=8", "train.checkpoint_every_steps=2", "train.log_every_steps=1",
            "train.keep_checkpoints=3", "train.cpus_per_worker=0.5"]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def killed_then_resumed(prepared, tmp_path_factory):
    """One worker of two is killed at step 3 (after the step-2 checkpoint); the run restarts
    from that checkpoint and finishes 6 steps. Then the same command resumes to 8."""
    tmp, _, _, _ = prepared
    out = tmp_path_factory.mktemp("train") / "run"
    cfg = load_config(preset="tiny", overrides=[*TINY_RUN, "train.workers=2", "train.max_steps=6",
                                                "train.fail_at_step=3", "train.max_failures=1"])
    first = run_pretrain(str(tmp / "prep"), str(out), cfg)
    cfg2 = load_config(preset="tiny", overrides=[*TINY_RUN, "train.workers=2", "train.max_steps=8"])
    second = run_pretrain(str(tmp / "prep"), str(out), cfg2)
    return out, first, second


@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint(killed_then_resumed):
    out, first, _ = killed_then_resumed
    assert (out / ".fault_injected").read_text() == "3"  # the kill really happened
    assert first["final_step"] == 6 and first["resumed_from"] is None
    events = _metrics(out)
    assert [e["step"] for e in events if e.get("event") == "resumed"] == [2, 6]
    # step 3 ran, the worker died, the run went back to the step-2 checkpoint and trained step
    # 3 again: its first line was dropped, so each step is logged once; then the re-run
    assert [e["step"] for e in events if "loss" in e] == [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.slow
def test_rerun_resumes_instead_of_starting_over(killed_then_resumed):
    out, first, second = killed_then_resumed
    assert second["resumed_from"] is not None and second["final_step"] == 8
    # CPU: fp32 over gloo (tests/test_gpu.py pins bf16 over NCCL on a CUDA device)
    assert (second["device"], second["precision"], second["backend"]) == ("cpu", "fp32", "gloo")
    assert second["worker_nice"] == 0  # train.worker_niceness, not Ray's 15 for its workers
    last = [e for e in _metrics(out) if e.get("event") == "resumed"][-1]
    assert last["step"] == 6  # from the first run's final checkpoint, not from 0
    assert all(e["graph"] for e in _metrics(out) if "loss" in e)
    last = _metrics(out)[-1]
    for name in ("mlm", "mem", "mrm", "itc_text", "graph_node", "lr", "samples_per_s",
                 "step_time_s", "data_wait_s", "cpu_wait_frac"):
        assert name in last, name
    assert 0 <= last["cpu_wait_frac"] < 1  # Linux says (schedstat)
    # the step-time breakdown: each phase per optimizer step, within the window's step time
    phases = [last[f"time_{p}_s"] for p in ("data", "forward", "backward", "optimizer",
                                            "checkpoint")]
    assert all(t >= 0 for t in phases) and last["time_forward_s"] > 0
    assert sum(phases) <= last["step_time_s"] * 1.05 + 1e-3


@pytest.mark.slow
def test_checkpoints_load_without_pickle_and_the_model_dir_serves(killed_then_resumed):
    out, _, _ = killed_then_resumed
    run_dir = out / "ray_results" / "pretrain"
    latest = Path(latest_checkpoint(run_dir))
    files = list(latest.rglob("*.pt"))
    assert any(f.parent.name == ckpt.DS_TAG for f in files)  # DeepSpeed's model + optimizer
    for f in files:
        with torch.serialization.safe_globals(ckpt._deepspeed_safe_globals()):
            torch.load(f, weights_only=True)
    assert len([d for d in run_dir.iterdir() if d.name.startswith("checkpoint_2")]) <= 3

    model, cfg = load_model_dir(str(out / "model"))
    from egecmp_ray.model.encoder import ItemEncoder

    vecs = ItemEncoder(model, cfg.entities, str(out / "model" / "vocab")).encode(
        ["SK-II 神仙水 230ml 正品", "AHC 眼霜"])
    assert vecs["item"].shape == (2, 2 * cfg.model.embed_dim) and (vecs["image"] == 0).all()
    assert (out / "model" / "graph_sets.pt").is_file()


def test_model_dirs_naming_a_retired_loss_still_load(tiny_model_dir, tmp_path):
    old = shutil.copytree(tiny_model_dir, tmp_path / "model")
    meta = json.loads((old / MODEL_CONFIG).read_text())
    meta["model"]["losses"] = [*meta["model"]["losses"], "itc_retrieval"]  # before its removal
    (old / MODEL_CONFIG).write_text(json.dumps(meta))
    _, cfg = load_model_dir(str(old))
    assert "itc_retrieval" not in cfg.model.losses and "mlm" in cfg.model.losses
    assert cfg.model.retrieval_features == "single"  # trained now: the saved config says so
    for key in ("retrieval_features", "single_pooling"):  # a dir from before the readout choice
        meta["model"].pop(key)
    (old / MODEL_CONFIG).write_text(json.dumps(meta))
    _, cfg = load_model_dir(str(old))
    assert (cfg.model.retrieval_features, cfg.model.single_pooling) == ("fused", "cls")


@pytest.mark.slow
def test_bad_checkpoints_and_other_models_are_refused(killed_then_resumed, prepared, tmp_path):
    out, _, _ = killed_then_resumed
    tmp, _, _, _ = prepared
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    cfg = load_config(preset="tiny", overrides=[*TINY_RUN, "train.workers=2", "model.hidden=32"])
    with pytest.raises(InputError, match="model.hidden"):
        run_pretrain(str(tmp / "prep"), str(copy), cfg)
    # Training settings a resume keeps: fewer workers, another micro-batch, more workers
    for change, match in ((["train.workers=1"], "train.workers: 2 -> 1"),
                          (["train.workers=2", "train.micro_batch=7"], "train.micro_batch: .* -> 7"),
                          (["train.workers=3"], "written by 2 workers .* has 3")):
        with pytest.raises(InputError, match=match):
            run_pretrain(str(tmp / "prep"), str(copy),
                         load_config(preset="tiny", overrides=[*TINY_RUN, *change]))
    latest = Path(latest_checkpoint(copy / "ray_results" / "pretrain"))
    (latest / ckpt.STATE_FILE).unlink()
    assert ckpt.checkpoint_problem(latest, 2) == f"{ckpt.STATE_FILE} is missing or unreadable"
    older = latest_checkpoint(copy / "ray_results" / "pretrain", world=2)
    assert older is not None and Path(older) != latest  # the damaged newest is skipped, not fatal
    shutil.rmtree(latest)
    with pytest.raises(InputError, match="missing"):
        latest_checkpoint(copy / "ray_results" / "pretrain")


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_resumes_from_the_last_whole_one(
        killed_then_resumed, prepared, tmp_path, caplog):
    out, _, _ = killed_then_resumed
    tmp, _, _, _ = prepared
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    run_dir = copy / "ray_results" / "pretrain"
    newest = Path(latest_checkpoint(run_dir, world=2))
    listed = json.loads((newest / "files_1.json").read_text())
    victim = next(name for name in listed if name.startswith(ckpt.DS_TAG))
    (newest / victim).write_bytes((newest / victim).read_bytes()[:10])  # a truncated upload
    assert "bytes" in ckpt.checkpoint_problem(newest, 2)
    older = latest_checkpoint(run_dir, world=2)
    assert ckpt.checkpoint_step(older) == 6  # the step before the damaged step-8 one
    cfg = load_config(preset="tiny", overrides=[*TINY_RUN, "train.workers=2", "train.max_steps=9"])
    with caplog.at_level("WARNING"):
        result = run_pretrain(str(tmp / "prep"), str(copy), cfg)
    assert f"skipping damaged checkpoint {newest}" in caplog.text
    assert result["resumed_from"] == str(older) and result["final_step"] == 9


@pytest.mark.slow
def test_resuming_on_other_data_is_refused(killed_then_resumed, prepared, tmp_path):
    out, _, _ = killed_then_resumed
    tmp, _, _, _ = prepared
    copy, other = tmp_path / "run", tmp_path / "prep"
    shutil.copytree(out, copy)
    shutil.copytree(tmp / "prep", other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "config_hash": "another"}))
    cfg = load_config(preset="tiny", overrides=[*TINY_RUN, "train.workers=2", "train.max_steps=9"])
    with pytest.raises(InputError, match="other data.*data.config_hash"):
        run_pretrain(str(other), str(copy), cfg)


@pytest.mark.slow
def test_storage_checkpoints_ray_never_registered_are_found_then_pruned(killed_then_resumed,
                                                                         tmp_path):
    """A worker killed right after a checkpoint can take its report down with it: the files
    on storage still resume the run, and are pruned once a registered one supersedes them."""
    out, _, _ = killed_then_resumed
    run_dir = tmp_path / "pretrain"
    shutil.copytree(out / "ray_results" / "pretrain", run_dir)
    step, newest = ckpt.newest_complete(run_dir, world=2)
    assert step == 8 and newest == latest_checkpoint(run_dir)
    newest = Path(newest)
    assert ckpt.newest_complete(run_dir, world=3) is None  # no rank-2 partition anywhere
    rng_1 = (newest / "rng_1.pt").read_bytes()
    (newest / "rng_1.pt").write_bytes(rng_1[:-1])  # rank 1 died mid-upload
    assert not ckpt.partitions_complete(newest, 2)
    (newest / "rng_1.pt").unlink()
    assert not ckpt.partitions_complete(newest, 2)
    step, older = ckpt.newest_complete(run_dir, world=2)
    assert step == 6
    older = Path(older)
    orphan = run_dir / "checkpoint_2000-01-01_00-00-00.000001"
    shutil.copytree(older, orphan)
    assert [Path(p) for p in ckpt.prune_unrecorded(run_dir)] == [orphan] and not orphan.exists()
    assert older.exists() and newest.exists()  # registered ones are Ray's to prune


def test_one_resume_check_names_the_keys_and_lets_readout_weights_change():
    saved = {"model_config": {"hidden": 64, "retrieval_weights": {"text": 1.0}},
             "data": {"config_hash": "a"}}
    ckpt.refuse_other_config(saved, {"hidden": 64, "retrieval_weights": {"graph": 2.0}},
                             {"config_hash": "a"}, "c")  # a readout weight trains nothing
    with pytest.raises(InputError, match=r"another model config.*model.hidden: 64 -> 32"):
        ckpt.refuse_other_config(saved, {"hidden": 32}, None, "c")
    with pytest.raises(InputError, match=r"other data.*data.config_hash: 'a' -> 'b'"):
        ckpt.refuse_other_config(saved, {"hidden": 64, "retrieval_weights": {}},
                                 {"config_hash": "b"}, "c")
    ckpt.refuse_other_config({"model_config": {"hidden": 64}}, {"hidden": 64},
                             {"config_hash": "b"}, "c")  # an old checkpoint has no data identity
    tiny = load_config(preset="tiny").train
    train = ckpt.train_shape(tiny, deepspeed_config(tiny, 1, "fp32"), "fp32")
    assert train["zero_stage"] == 0  # what DeepSpeed runs: one fp32 worker has no partitions
    saved = {"model_config": {"hidden": 64}, "train": train}
    ckpt.refuse_other_config(saved, {"hidden": 64}, None, "c", dict(train))
    driver = {k: v for k, v in train.items() if k != "precision"}  # it cannot tell bf16 yet
    ckpt.refuse_other_config(saved, {"hidden": 64}, None, "c", driver)
    with pytest.raises(InputError, match=r"train.precision: 'fp32' -> 'bf16'"):
        ckpt.refuse_other_config(saved, {"hidden": 64}, None, "c", {**train, "precision": "bf16"})
    with pytest.raises(InputError, match=r"other training settings.*train.splits: \['train'\] -> "):
        ckpt.refuse_other_config(saved, {"hidden": 64}, None, "c",
                                 {**train, "splits": ["train", "gallery"]})
    ckpt.refuse_other_config({"model_config": {"hidden": 64}}, {"hidden": 64}, None, "c",
                             train)  # an old checkpoint records no training settings


def test_a_checkpoints_rng_restores_this_ranks_draws(tmp_path):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(7)
    ckpt.save_rng(tmp_path / "rng.pt", gen)
    after = (torch.rand(5), torch.rand(5, generator=gen))
    torch.manual_seed(0)
    gen.manual_seed(0)
    ckpt.load_rng(tmp_path / "rng.pt", gen)
    assert all(torch.equal(a, b) for a, b in zip((torch.rand(5), torch.rand(5, generator=gen)),
                                                 after))


def test_a_resume_drops_later_steps_and_events_and_survives_a_line_cut_short(tmp_path, caplog):
    from egecmp_ray.train.loop import _metrics_resumed

    path = tmp_path / "metrics.jsonl"
    # the epoch ends at step 3: its checkpoint is taken before the graph refresh logged at 3
    lines = [{"step": 1, "loss": 2.0}, {"event": "graph_refresh", "step": 2}, {"step": 3},
             {"event": "graph_refresh", "step": 3}, {"step": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')
    with caplog.at_level("WARNING"):
        _metrics_resumed(str(path), 3, "ckpt")
    assert "1 unreadable line" in caplog.text
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        *lines[:3], {"event": "resumed", "checkpoint": "ckpt", "step": 3}]


def test_every_epoch_streams_every_row_in_a_new_order(prepared):
    """train.shuffle=global: each epoch (one execution through the trainer's streaming split)
    is a new permutation of the same rows, not the files' order (where a product's listings
    sit together and become each other's InfoNCE negatives)."""
    tmp, cfg, _, _ = prepared

    def rows(ds) -> list[tuple[int, ...]]:
        return [tuple(int(x) for x in r["title_ids"]) + tuple(int(x) for x in r["entity_ids"])
                for r in ds.iter_rows()]

    split = training_dataset(tmp / "prep", cfg).streaming_split(1, equal=True)[0]
    first, second = rows(split), rows(split)
    in_files = rows(training_dataset(tmp / "prep", load_config(
        preset="tiny", overrides=["train.shuffle=local"])))
    assert sorted(first) == sorted(second) == sorted(in_files) and len(first) > 100
    assert first != in_files and second != first


def test_data_checks_name_the_problem(tmp_path):
    cfg = load_config(preset="tiny")
    with pytest.raises(InputError, match="manifest.json"):
        run_pretrain(str(tmp_path), str(tmp_path / "out"), cfg)
    with pytest.raises(InputError, match="fewer than one step"):
        plan_steps(5, cfg)
    assert plan_steps(100, load_config(preset="tiny", overrides=[
        "train.workers=2", "train.micro_batch=8", "train.grad_accum=2", "train.epochs=3"])) == (3, 9)


def test_deepspeed_config_from_the_typed_config(tmp_path):
    train = load_config(preset="tiny", overrides=["train.zero_stage=3", "train.grad_accum=2"]).train
    ds = deepspeed_config(train, world_size=2, precision="fp32")
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["train_batch_size"] == train.micro_batch * 2 * 2
    assert not ds["bf16"]["enabled"] and ds["gradient_clipping"] == train.grad_clip
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}))
    train.deepspeed_config = str(user)
    merged = deepspeed_config(train, 2, "fp32")
    assert merged["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    user.write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        deepspeed_config(train, 2, "fp32")
    # One fp32 worker has nothing to partition: stage 0, unless the ZeRO settings ask for
    # more; in bf16 ZeRO's optimizer holds the fp32 master weights, so the stage stays.
    train.deepspeed_config = None
    assert deepspeed_config(train, 1, "fp32")["zero_optimization"] == {"stage": 0}
    assert deepspeed_config(train, 1, "bf16")["zero_optimization"] == {"stage": 3}
    train.deepspeed_config = str(user)
    user.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}))
    assert deepspeed_config(train, 1, "fp32")["zero_optimization"]["stage"] == 3
    assert resolve_precision(train, use_gpu=True, bf16_ok=True) == "bf16"
    assert resolve_precision(train, use_gpu=False, bf16_ok=False) == "fp32"
    train.precision = "bf16"
    with pytest.raises(InputError, match="needs a GPU"):
        resolve_precision(train, use_gpu=False, bf16_ok=False)


def _timed_window(monkeypatch, as_on_a_gpu: bool):
    """Three steps through a StepTimer whose clock ticks 1 s a reading; (timer, syncs)."""
    from egecmp_ray.train import loop

    clock = iter(range(1000))
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    syncs = []
    timer = loop.StepTimer(torch.device("cpu"))
    timer.sampled, timer.sync = as_on_a_gpu, lambda: syncs.append(1)
    timer.reset()
    timer.mark()
    for _ in range(3):
        for phase in ("data", "forward", "backward", "optimizer"):
            timer.charge(phase)
        timer.step_done()
        timer.mark()
    return timer, syncs


def test_step_timer_on_a_gpu_times_the_device_phases_of_one_step_a_window(monkeypatch):
    """A synchronize drains the GPU's queue: on a GPU only the window's first step is timed
    (5 syncs: the window's start and that step's 4 phases, not 13); data waits count every
    step; the breakdown stays per step."""
    timer, syncs = _timed_window(monkeypatch, as_on_a_gpu=True)
    assert len(syncs) == 5 and timer.timed == 1
    assert timer.spent["forward"] == 1 and timer.spent["data"] == 3
    assert timer.per_step(3)["time_forward_s"] == 1 and timer.per_step(3)["time_data_s"] == 1
    timer, syncs = _timed_window(monkeypatch, as_on_a_gpu=False)  # CPU: every step timed
    assert timer.timed == 3 and timer.spent["forward"] == 3
    assert timer.per_step(3)["time_forward_s"] == 1


def test_cpu_wait_counts_new_threads_from_zero_and_drops_ended_ones(tmp_path):
    from egecmp_ray.train.cpu_wait import thread_schedstats, waited_share

    start = {1: (100, 10), 2: (50, 0), 3: (900, 900)}
    # 1 ran 100 more and waited 30 more; 2 ended; 4 is new; 3's id went to a new thread
    end = {1: (200, 40), 4: (60, 20), 3: (40, 0)}
    assert waited_share(start, end) == round(50 / (200 + 50), 4)
    assert waited_share(None, end) is None and waited_share(start, {1: (100, 10)}) is None
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "schedstat").write_text("123 45 6\n")
    (tmp_path / "8").mkdir()  # a thread that ended between the listing and the read
    assert thread_schedstats(tmp_path) == {7: (123, 45)}
    assert thread_schedstats(tmp_path / "absent") is None


_CONTENDED = """
import os, subprocess, sys, time
from egecmp_ray.train.cpu_wait import thread_schedstats, waited_share
core = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {core})
spin = "import time\\nt = time.time()\\nwhile time.time() - t < 20: pass"  # ends by itself
rival = subprocess.Popen([sys.executable, "-c", spin]) if sys.argv[1] == "shared" else None
try:
    time.sleep(0.3)
    start, t = thread_schedstats(), time.perf_counter()
    while time.perf_counter() - t < 1.5:
        pass
    print(waited_share(start, thread_schedstats()))
finally:
    if rival:
        rival.kill()
"""


def test_cpu_wait_sees_a_core_shared_with_another_busy_process():
    """A busy thread pinned to a core waits for it about half the time once another busy
    process shares that core, and hardly at all alone."""
    import subprocess
    import sys

    def share(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _CONTENDED, mode], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        return float(out.split()[-1])

    assert share("shared") > 0.3
    assert share("alone") < 0.25


_IDENTITY_ALLREDUCE = """
import os, socket, torch, deepspeed
from egecmp_ray.train.deepspeed_config import skip_identity_allreduce
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
deepspeed.init_distributed(dist_backend="gloo")
def engine(stage):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    config = {"train_micro_batch_size_per_gpu": 4, "train_batch_size": 4, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
    return deepspeed.initialize(model=model, config=config,
                                optimizer=torch.optim.AdamW(model.parameters(), lr=0.1))[0]
def train(e):
    x, y = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), torch.ones(4, 1)
    for _ in range(3):
        e.backward(((e(x) - y) ** 2).mean()); e.step()
    return [p.detach().clone() for p in e.module.parameters()]
skipped, kept, zero1 = engine(0), engine(0), engine(1)
assert skip_identity_allreduce(skipped) and not skip_identity_allreduce(zero1)
assert zero1.enable_backward_allreduce and kept.enable_backward_allreduce
def never(*args, **kwargs):
    raise AssertionError("the all-reduce ran")
skipped.allreduce_gradients = never
first = [p.detach().clone() for p in kept.module.parameters()]
a, b = train(skipped), train(kept)
assert all(torch.equal(u, v) for u, v in zip(a, b)), "skipping changed the update"
assert not all(torch.equal(u, v) for u, v in zip(a, first)), "no update happened"
print("identity all-reduce skipped")
"""


def test_one_fp32_rank_skips_deepspeeds_identity_allreduce_with_the_same_update():
    """One rank at ZeRO 0 in fp32: the gradient all-reduce is skipped (it would raise here),
    and three steps give bit-identical weights to an engine that ran it; a ZeRO engine keeps
    it (its optimizer takes the gradients through that call). In a child process: DeepSpeed's
    process group is global."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _IDENTITY_ALLREDUCE], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "identity all-reduce skipped" in done.stdout


def test_schedule_and_parameter_groups():
    factors = [lr_factor(s, 100, 0.1) for s in range(100)]
    assert factors[9] == 1.0 and factors[0] == 0.1 and factors[-1] == pytest.approx(0.0111, 0.01)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # linear decay after warm-up
    from egecmp_ray.model.egecmp import EGECMP, TokenIds

    cfg = load_config(preset="tiny")
    model = EGECMP(cfg.model, TokenIds(cfg.model.vocab_size))
    groups = param_groups(model, cfg.train)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable) < len(list(model.parameters()))
    assert {g["weight_decay"] for g in groups} == {0.0, cfg.train.weight_decay}


def test_deepspeed_ops_build_with_this_interpreters_ninja(monkeypatch):
    """The loop puts the venv's bin/ first: a system ninja of another version keeps another
    build log, and alternating between the two rebuilt DeepSpeed's CPU op on every switch."""
    import os
    import sys

    from egecmp_ray.runtime import interpreter_tools_first

    here = os.path.dirname(sys.executable)
    if not os.path.isfile(os.path.join(here, "ninja")):
        pytest.skip("no ninja beside this interpreter (DeepSpeed installs one into a venv)")
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", here, "/bin"]))
    interpreter_tools_first()
    interpreter_tools_first()
    assert os.environ["PATH"].split(os.pathsep) == [here, "/usr/bin", "/bin"]
