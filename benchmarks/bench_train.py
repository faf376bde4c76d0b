"""Training throughput: a plain single-process PyTorch loop vs Ray Train + DeepSpeed with one
worker on the same model, batch and data (the overhead ratio), then samples/s with 1 and 2
workers and ZeRO stages 1/2/3.

Each Ray run is `egecmp pretrain` in its own process and local Ray cluster. Every run gets the
same 2 cores: 1 worker x 2 CPUs or 2 workers x 1 CPU (the local cluster advertises one more
logical CPU for Ray Data's readers). Step time is the median over logged windows after the
first (cluster start, dataset start-up and warm-up excluded); it includes data waiting.
Then the same 1-worker comparison with the step (1 thread) on a core of its own and the Ray
cluster on the others: what Ray Train + DeepSpeed cost without the cluster's share of the cores.

    python benchmarks/bench_train.py            # small preset, 40 steps a run
    python benchmarks/bench_train.py --quick    # tiny preset, a few steps: checks it runs
    python benchmarks/bench_train.py --gpu      # one CUDA device, paper preset, bf16
                                                # -> results/bench_train_gpu.json + .md
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from egecmp_ray.benchmarking import ThreadPinner, bench_parser, run_measured, write_results
from egecmp_ray.config import load_config
from egecmp_ray.entities.tokenizer import load_tokenizer
from egecmp_ray.model.egecmp import EGECMP, TokenIds
from egecmp_ray.model.pretraining import GraphContext, pretrain_losses
from egecmp_ray.train.cpu_wait import thread_schedstats, waited_share
from egecmp_ray.train.loop import TRAIN_COLUMNS, StepTimer
from egecmp_ray.train.optim import build_optimizer

CORES = 2
PHASES = StepTimer.PHASES  # the loop's per-step breakdown in metrics.jsonl


def egecmp(*args: str, env: dict[str, str] | None = None, cores: set[int] | None = None) -> dict:
    return run_measured([sys.executable, "-m", "egecmp_ray", *args, "--log-level", "WARNING"],
                        env=env, cores=cores)


def core_split() -> tuple[set[int], set[int]] | None:
    """(one core for the step, the others for the rest) among this process's cores; None on
    a single core."""
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, set(cores[1:])) if len(cores) > 1 else None


def _numpy(column) -> np.ndarray:
    a = column.to_numpy(zero_copy_only=False)
    return np.stack(a) if a.dtype == object else a  # tensor columns come back row by row


# Training steps run so far, by process id (plain_loop's steps_before). Keyed by pid because
# a Ray task gets a pickled copy of this dict: its own process starts at 0.
_STEPS_RUN: dict[int, int] = {}
SERIES = ("step_s_by_10", "step_s_windows")  # JSON-only: step times over a run


def ray_data_batches(prep: Path, cfg, micro: int):
    """Batches as a Ray Train worker gets them (the training dataset through
    ``iter_torch_batches`` with the loop's arguments), without Ray Train; repeats the epoch."""
    from egecmp_ray.train.pretrain import training_dataset

    dataset = training_dataset(str(prep), cfg)
    while True:
        yield from dataset.iter_torch_batches(batch_size=micro, drop_last=True,
                                              local_shuffle_buffer_size=4 * micro,
                                              local_shuffle_seed=cfg.data.seed)


def plain_loop(prep: Path, preset: str, overrides: list[str], steps: int,
               deepspeed_engine: bool = False, gpu: bool = False,
               ds_extra: dict | None = None, ray_data: bool = False, warmup: int = 5,
               threads: int = CORES, cores: set[int] | None = None) -> dict:
    """The same model, optimizer, schedule, batch and losses in one process, no Ray; batches
    from the same shards, read into memory first. With ``deepspeed_engine``, the step goes
    through a single-process DeepSpeed engine configured as the Ray run's (fp32 + gloo on CPU,
    bf16 + NCCL on the GPU; ``ds_extra`` merged into its JSON): DeepSpeed's own share of the
    Ray + DeepSpeed overhead. With ``gpu``, on the CUDA device (the plain step under bf16
    autocast over fp32 weights), timed between CUDA synchronisations. With ``ray_data``, the
    batches stream from Ray Data as the Ray Train loop's do (a Ray cluster must be up).
    The first ``warmup`` steps are not timed; ``steps_before`` says how many steps this process
    ran before (kernels loaded, plans and allocator blocks cached: a fresh process is slower
    for longer than a few steps on a GPU). On CPU the step runs ``threads`` threads; ``cores``
    pins this thread (and so, with one thread, the step) to those cores for the run."""
    importlib.import_module("ray.data")  # registers the tensor column type before reading

    cfg = load_config(preset=preset, overrides=overrides)
    manifest = json.loads((prep / "manifest.json").read_text())
    cfg.model.region_dim = manifest["region_dim"]
    if not gpu:
        torch.set_num_threads(threads)
    before_cores = os.sched_getaffinity(0) if cores else None  # Linux only, as pinning is
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        return _plain_steps(prep, cfg, steps, deepspeed_engine, gpu, ds_extra, ray_data, warmup)
    finally:
        if before_cores:
            os.sched_setaffinity(0, before_cores)


def _plain_steps(prep: Path, cfg, steps: int, deepspeed_engine: bool, gpu: bool,
                 ds_extra: dict | None, ray_data: bool, warmup: int) -> dict:
    """:func:`plain_loop`'s body, once its threads and cores are set."""
    import pyarrow.parquet as pq

    table = pq.read_table(prep / "shards", columns=["split", *TRAIN_COLUMNS])
    table = table.filter(np.array(table["split"].to_pylist()) == "train")
    micro = cfg.train.micro_batch
    cols = {c: _numpy(table[c].combine_chunks()) for c in TRAIN_COLUMNS}
    tokens = TokenIds.from_tokenizer(load_tokenizer(str(prep / "vocab" / "tokenizer.json")))
    torch.manual_seed(cfg.data.seed)
    model = EGECMP(cfg.model, tokens)
    if gpu:
        model = model.cuda()
    opt, sched = build_optimizer(model, cfg.train, steps + warmup)
    engine, zero_stage = None, "-"
    if deepspeed_engine:
        import deepspeed

        from egecmp_ray.runtime import interpreter_tools_first
        from egecmp_ray.train.deepspeed_config import (deepspeed_config, merge_json,
                                                       skip_identity_allreduce)

        interpreter_tools_first()  # the ninja the Ray runs use: no op rebuild between them

        for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29531"), ("RANK", "0"),
                           ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(key, value)
        deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
        cfg.train.zero_stage = 1
        # One fp32 worker runs stage 0 (see there); bf16 keeps stage 1, as the Ray run.
        ds_config = merge_json(deepspeed_config(cfg.train, 1, "bf16" if gpu else "fp32"),
                           ds_extra or {})
        zero_stage = ds_config["zero_optimization"]["stage"]
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                               config=ds_config)
        skip_identity_allreduce(engine)  # as the train loop does
    graph = GraphContext.load(str(prep))
    if gpu:
        graph = graph.to(torch.device("cuda"))
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    stream = ray_data_batches(prep, cfg, micro) if ray_data else None
    times, sched_start = [], None
    for step in range(steps + warmup):
        if step == warmup:  # CPU waits over the timed steps only
            sched_start = thread_schedstats()
        if stream is not None:
            batch = next(stream)
        else:
            lo = (step * micro) % (len(table) - micro)
            batch = {c: torch.from_numpy(v[lo:lo + micro]) for c, v in cols.items()}
        sync()
        t0 = time.perf_counter()
        if engine is not None:
            loss = pretrain_losses(engine.module, batch, graph, gen)["loss"]
            engine.backward(loss)
            engine.step()
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext():
                loss = pretrain_losses(model, batch, graph, gen)["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            sched.step()
        sync()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[warmup:])
    cpu_wait = waited_share(sched_start, thread_schedstats())
    before = _STEPS_RUN.get(os.getpid(), 0)
    _STEPS_RUN[os.getpid()] = before + steps + warmup
    return {"run": ("DeepSpeed, one process" + (", bf16" if gpu else "")
                    + (", batches from Ray Data" if ray_data else ", no Ray")) if engine else
            "plain PyTorch, bf16 autocast" if gpu else "plain PyTorch",
            "workers": 1, "zero_stage": zero_stage, "step_s": round(step_s, 4),
            "samples_per_s": round(micro / step_s, 2), "cpu_wait_frac": cpu_wait,
            "steps_before": before,
            # every step's time, warm-up included, as medians of 10: how long start-up lasts
            "step_s_by_10": [round(statistics.median(times[i:i + 10]), 4)
                             for i in range(0, len(times), 10)]}


def ray_run(prep: Path, work: Path, preset: str, overrides: list[str], workers: int, zero: int,
            label: str = "Ray Train + DeepSpeed", env: dict[str, str] | None = None,
            gpu: bool = False, warmup: int = 0,
            own_core: tuple[set[int], set[int]] | None = None) -> dict:
    """One `egecmp pretrain` run; on CPU capped to the plain loop's cores, with ``gpu`` one
    GPU a worker and the machine's CPUs (4 a worker). Its step time is the median logged
    window after the first and after the first ``warmup`` steps. ``own_core`` (one worker,
    CPU): (the worker's core, the others): the cluster runs on the others and the train
    worker, 1 CPU, has its core to itself (:class:`ThreadPinner`)."""
    out = work / f"run_{workers}w_z{zero}"
    shutil.rmtree(out, ignore_errors=True)
    cpus = 1 if own_core else CORES // workers
    placement = (["train.use_gpu=true", "train.cpus_per_worker=4"] if gpu else
                 [f"train.cpus_per_worker={cpus}"])
    # the local cluster advertises one more CPU than the workers take, for Ray Data's readers
    pinner = (ThreadPinner("ray::RayTrainWorker", own_core[0]) if own_core
              else contextlib.nullcontext())
    with pinner:
        r = egecmp("pretrain", "--data", str(prep), "--out", str(out), "--preset", preset,
                   "--workers", str(workers), "--zero-stage", str(zero), *overrides, *placement,
                   env={**({} if gpu else {"EGECMP_NUM_CPUS": str(cpus * workers + 1)}),
                        **(env or {})},
                   cores=own_core[1] if own_core else None)
    if own_core and not pinner.pinned:
        raise RuntimeError(f"{label}: no ray::RayTrainWorker process was found to pin")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "pretrain.json").read_text())
    zero, nice = summary["zero_stage"], summary["worker_nice"]  # the ZeRO stage that ran
    logged = [x for x in lines if "step_time_s" in x]
    # The first window holds start-up; windows that start before step ``warmup`` are left out.
    windows = [x for prev, x in zip(logged, logged[1:]) if prev["step"] >= warmup]
    if not windows:
        raise RuntimeError(f"{label}: no logged window starts after step {warmup} "
                           f"(logged at steps {[x['step'] for x in logged]})")
    step_s = statistics.median(x["step_time_s"] for x in windows)
    micro = load_config(preset=preset, overrides=overrides).train.micro_batch
    shutil.rmtree(out, ignore_errors=True)
    # Where a step's time goes (train/loop.py's StepTimer): medians over the same windows
    # (no phase is called "step": step_s is the whole step).
    breakdown = {f"{phase}_s": round(statistics.median(x.get(f"time_{phase}_s", 0.0)
                                                       for x in windows), 4)
                 for phase in PHASES}
    waits = [x["cpu_wait_frac"] for x in windows if x.get("cpu_wait_frac") is not None]
    breakdown["cpu_wait_frac"] = round(statistics.median(waits), 4) if waits else None
    return {"run": label, "workers": workers, "zero_stage": zero, "nice": nice,
            "step_s": round(step_s, 4), "samples_per_s": round(micro * workers / step_s, 2),
            **breakdown, "wall_s": r["wall_s"], "peak_rss_tree_mb": r["peak_rss_tree_mb"],
            **({"cores": "own"} if own_core else {}),
            "step_s_windows": [x["step_time_s"] for x in logged]}


def run_overrides(max_steps: int) -> list[str]:
    """One epoch of ``max_steps`` steps, a logged window every 4, no checkpoint before the end."""
    return [f"train.max_steps={max_steps}", "train.log_every_steps=4",
            f"train.checkpoint_every_steps={10 * max_steps}", "train.epochs=1"]


def prepare(work: Path, preset: str, rows: int) -> Path:
    """Synthetic rows preprocessed for ``preset`` under ``work/prep`` (kept with --work)."""
    prep = work / "prep"
    if not (prep / "manifest.json").is_file():
        egecmp("synth", "--rows", str(rows), "--out", str(work / "synth"), "--preset", preset)
        egecmp("preprocess", "--input", str(work / "synth"), "--out", str(prep), "--preset", preset)
    return prep


# ``--gpu`` runs, in the order given: DeepSpeed's bf16 optimizer adds its fp32 gradient copy
# after backward; ``immediate`` (bf16.immediate_grad_update) makes that copy in backward's hooks.
IMMEDIATE = {"bf16": {"immediate_grad_update": True}}
GPU_RUNS = ("plain", "ray", "ds", "ds-task", "ds-data", "ds-immediate", "ray-immediate",
            "ray-compiled")


def in_ray(fn, **kwargs) -> dict:
    """``fn(**kwargs)`` inside a local Ray cluster: with ``task``, in a Ray task holding the GPU
    (if any) and ``task_cpus`` CPUs, as a train worker does, at the train workers' nice value (a
    Ray worker process, no Ray Train); else in this process with Ray up (for Ray Data). The
    cluster is shut down after, so the Ray Train runs start their own."""
    import ray

    from egecmp_ray.runtime import init_ray

    task, task_cpus = kwargs.pop("task", False), kwargs.pop("task_cpus", 4)
    init_ray(kwargs.pop("num_cpus", None))
    try:
        if not task:
            return fn(**kwargs)
        if fn.__module__ != "__main__":  # imported from benchmarks/, which workers lack
            ray.cloudpickle.register_pickle_by_value(sys.modules[fn.__module__])
        env = {"RAY_worker_niceness": "0", "MASTER_PORT": "29533"}  # this process holds 29531
        remote = ray.remote(num_gpus=int(torch.cuda.is_available()), num_cpus=task_cpus,
                            runtime_env={"env_vars": env})(fn)
        return ray.get(remote.remote(**kwargs))
    finally:
        ray.shutdown()


def gpu_main(args, work: Path) -> None:
    """``--gpu``: plain PyTorch (bf16 autocast), DeepSpeed in one process and Ray Train +
    DeepSpeed (bf16) on one GPU, each run of ``args.gpu_runs`` a row. The results are rewritten
    after every row (a run cut off by a time limit keeps what it measured; a failed run is
    recorded with its error)."""
    if not torch.cuda.is_available():
        raise SystemExit("bench_train --gpu: no CUDA device (torch.cuda.is_available() is False)")
    preset, steps = args.preset, args.steps or (8 if args.quick else 24)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    micro = load_config(preset=preset).train.micro_batch
    overrides = run_overrides(steps + warmup)
    need = max(1000, micro * (steps + warmup + 5) * 5 // 4)
    prep = prepare(work, preset, need)
    have = json.loads((prep / "manifest.json").read_text())["rows_out"]
    if have < need:  # a reused --work prep made for fewer steps: one epoch would end the run
        raise SystemExit(f"bench_train --gpu: {prep} has {have} rows, {steps} + {warmup} steps "
                         f"need {need}; use another --work or delete {prep}")
    immediate_json = (work / "immediate_grad_update.json").resolve()  # workers' cwd differs
    immediate_json.write_text(json.dumps(IMMEDIATE))
    name = torch.cuda.get_device_name(0)
    rows_out: list[dict] = []

    def save() -> Path:
        done = {r["variant"]: r for r in rows_out if "step_s" in r}
        summary: dict = {"device": name, "preset": preset, "micro_batch": micro,
                         "steps": steps, "warmup": warmup,
                         "complete": len(done) == len(args.gpu_runs)}
        plain = done.get("plain")
        if plain:
            summary["plain_samples_per_s"] = plain["samples_per_s"]
        for variant, row in done.items():
            if variant == "plain":
                continue
            key = "" if variant == "ray" else "_" + variant.replace("-", "_")
            summary[f"samples_per_s_1gpu{key}"] = row["samples_per_s"]
            if plain:
                summary[f"overhead_ratio{key}"] = round(row["step_s"] / plain["step_s"], 3)
            if variant.startswith("ray"):
                summary[f"ray_1gpu_breakdown_s{key}"] = {p: row[f"{p}_s"] for p in PHASES}
        columns = [k for k in dict.fromkeys(k for r in rows_out for k in r)
                   if k not in SERIES]  # the per-step series stay in the JSON
        return write_results(
            args.out, "train_gpu", rows_out, summary, columns,
            notes=(f"One {name}, preset {preset} (micro batch {micro}), all the losses with the "
                   "preprocess graph. plain: one process, bf16 autocast over fp32 weights, "
                   "eager, steps timed between CUDA synchronisations. ds: the same step through "
                   "a DeepSpeed engine in one process (bf16, ZeRO 1, NCCL), as the Ray run "
                   "configures it; ds-task: that process is a Ray task holding the GPU and 4 "
                   "CPUs (a Ray worker process); ds-data: its batches stream from Ray Data "
                   "as the Ray Train loop's do. "
                   "ray: `egecmp pretrain --workers 1` with train.use_gpu=true "
                   "(DeepSpeed bf16, NCCL), median logged window after the first (start-up "
                   "excluded; includes data waiting). -compiled: train.compile=true (the "
                   "forward through inductor). -immediate: DeepSpeed's "
                   "bf16.immediate_grad_update (the fp32 gradient copy made in backward's "
                   "hooks instead of after backward). overhead_ratio[_variant] = its step / "
                   f"the plain step. Each run times {steps} steps after {warmup} untimed ones "
                   "(a Ray run: its logged windows that start at or after that step); "
                   "steps_before: the steps its process ran before it (Ray Train runs and "
                   "ds-task start a fresh process). The JSON has each run's step times over "
                   "the run: step_s_by_10 (medians of 10 steps, warm-up included) and "
                   "step_s_windows (the Ray run's logged windows)."))

    def measure(variant: str) -> dict:
        if variant == "plain":
            return plain_loop(prep, preset, overrides, steps, gpu=True, warmup=warmup)
        if variant.startswith("ds"):
            kwargs = dict(prep=prep, preset=preset, overrides=overrides, steps=steps,
                          warmup=warmup, deepspeed_engine=True, gpu=True,
                          ds_extra=IMMEDIATE if variant == "ds-immediate" else None)
            if variant == "ds-task":
                return {**in_ray(plain_loop, task=True, **kwargs),
                        "run": "DeepSpeed, bf16, in a Ray task (no Ray Train, no Ray Data)"}
            if variant == "ds-data":
                return in_ray(plain_loop, ray_data=True, **kwargs)
            return plain_loop(**kwargs)
        extra = {"ray": [], "ray-compiled": ["train.compile=true"],
                 "ray-immediate": [f"train.deepspeed_config={immediate_json}"]}[variant]
        label = {"ray": "Ray Train + DeepSpeed, bf16",
                 "ray-compiled": "Ray Train + DeepSpeed, bf16, compiled",
                 "ray-immediate": "Ray Train + DeepSpeed, bf16, immediate grad update"}[variant]
        return ray_run(prep, work, preset, [*overrides, *extra], 1, 1, label, gpu=True,
                       warmup=warmup)

    for variant in args.gpu_runs:
        try:
            row = measure(variant)
        except RuntimeError as exc:  # keep the other rows; say what failed
            row = {"run": variant, "error": str(exc)[-500:]}
        rows_out.append({"variant": variant, **row})
        print(rows_out[-1], flush=True)
        save()
    print(f"bench train --gpu -> {save()}")


def main() -> None:
    parser = bench_parser(__doc__, config_help="ignored: presets are fixed so runs compare")
    parser.add_argument("--gpu", action="store_true",
                        help="one CUDA device: plain PyTorch vs Ray Train + DeepSpeed in bf16")
    parser.add_argument("--preset", default="paper", help="--gpu: model preset [default: paper]")
    parser.add_argument("--gpu-runs", nargs="+", choices=GPU_RUNS, default=list(GPU_RUNS),
                        help="--gpu: the runs to measure, in this order [default: all]: plain "
                             "PyTorch, Ray Train + DeepSpeed, DeepSpeed in one process (in a "
                             "Ray task; fed by Ray Data), the last two with DeepSpeed's bf16 "
                             "immediate_grad_update, Ray with train.compile")
    parser.add_argument("--steps", type=int, default=None,
                        help="--gpu: timed steps a run [default: 24, --quick 8]")
    parser.add_argument("--warmup", type=int, default=None,
                        help="--gpu: untimed steps first [default: 5, --quick 2]; on a GPU a "
                             "fresh process keeps getting faster for tens of steps")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-train-"))
    if args.gpu:
        gpu_main(args, work)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        return
    preset, rows, steps = ("tiny", 600, 8) if args.quick else ("small", 3000, 40)
    overrides = run_overrides(steps)
    prep = prepare(work, preset, rows)

    # The 1-worker comparison runs as three adjacent (plain, Ray) pairs, at the start, in the
    # middle and at the end, and the ratio is their median: identical runs here drift by 10-20%
    # over the ~12 minutes, more than the gap measured, and a pair shares its minute's drift.
    def plain_run(label: str) -> dict:
        return {**plain_loop(prep, preset, overrides, steps), "run": label}

    def one_worker(label: str) -> dict:
        return ray_run(prep, work, preset, overrides, 1, 1, label)

    rows_out: list[dict] = []

    def add(row: dict) -> dict:
        rows_out.append(row)
        print(row, flush=True)
        write_results(args.out, "train", rows_out, {"complete": False},
                      [k for k in dict.fromkeys(k for r in rows_out for k in r) if k not in SERIES])
        return row

    pairs = [(add(plain_run("plain PyTorch")), add(one_worker("Ray Train + DeepSpeed")))]
    ds_only = add(plain_loop(prep, preset, overrides, steps, deepspeed_engine=True))
    # The same DeepSpeed step in a Ray task (a Ray worker process, the cluster's control plane
    # beside it on the same cores) and fed by Ray Data: what each adds without Ray Train.
    ds_kwargs = dict(prep=prep, preset=preset, overrides=overrides, steps=steps,
                     deepspeed_engine=True, num_cpus=CORES + 1)
    ds_task = add({**in_ray(plain_loop, task=True, task_cpus=CORES, **ds_kwargs),
                   "run": "DeepSpeed in a Ray task (no Ray Train, no Ray Data)"})
    ds_data = add(in_ray(plain_loop, ray_data=True, **ds_kwargs))
    scaling = [add(ray_run(prep, work, preset, overrides, 2, zero)) for zero in (1, 2, 3)]
    pairs.append((add(plain_run("plain PyTorch (pair 2)")),
                  add(one_worker("Ray Train + DeepSpeed (pair 2)"))))
    # The lever found: the same 1-worker run at Ray's own worker niceness (15) instead of
    # train.worker_niceness=0.
    nice15 = add(ray_run(prep, work, preset, [*overrides, "train.worker_niceness=15"], 1, 1,
                         "the same, at Ray's worker niceness 15"))
    ray_last = add(one_worker("Ray Train + DeepSpeed (pair 3)"))  # Ray first, plain last
    pairs.append((add(plain_run("plain PyTorch (pair 3)")), ray_last))
    # Where the gap goes: the same comparison with the step on a core of its own. The plain loop runs 1 thread on that core; the Ray run's cluster (raylet, GCS,
    # dashboard, Ray Data, Ray Train's actors) runs on the other cores and its train worker
    # (1 CPU) is pinned to that core: Ray Train + DeepSpeed's own cost without the cluster's
    # share of the step's cores. Two pairs, plain first then Ray first.
    split = core_split()
    own_pairs: list[tuple[dict, dict]] = []
    if split:
        def plain_own(label: str) -> dict:
            return {**plain_loop(prep, preset, overrides, steps, threads=1, cores=split[0]),
                    "run": label, "cores": "own"}

        def ray_own(label: str) -> dict:
            return ray_run(prep, work, preset, overrides, 1, 1, label, own_core=split)

        plain_first = add(plain_own("plain PyTorch, 1 thread, a core of its own"))
        own_pairs.append((plain_first, add(ray_own("Ray Train + DeepSpeed, 1 CPU, a core of "
                                                   "its own (the cluster on the other)"))))
        ray_first = add(ray_own("Ray Train + DeepSpeed, own core (pair 2)"))
        own_pairs.append((add(plain_own("plain PyTorch, own core (pair 2)")), ray_first))
    plain_s = statistics.median(p["step_s"] for p, _ in pairs)
    one_s = statistics.median(r["step_s"] for _, r in pairs)
    ratios = [round(r["step_s"] / p["step_s"], 3) for p, r in pairs]
    one, two = pairs[0][1], scaling[0]
    summary = {
        "preset": preset,
        "plain_step_s": round(plain_s, 4),
        "ray_deepspeed_step_s": round(one_s, 4),
        "overhead_ratio": statistics.median(ratios),
        "overhead_ratio_runs": ratios,
        "deepspeed_only_ratio": round(ds_only["step_s"] / pairs[0][0]["step_s"], 3),
        "deepspeed_in_ray_task_ratio": round(ds_task["step_s"] / pairs[0][0]["step_s"], 3),
        "deepspeed_ray_data_ratio": round(ds_data["step_s"] / pairs[0][0]["step_s"], 3),
        "overhead_ratio_nice15": round(nice15["step_s"] / plain_s, 3),
        # the gap without the cluster on the step's cores (None on a single core)
        **({"overhead_ratio_own_core": round(statistics.median(
                r["step_s"] / p["step_s"] for p, r in own_pairs), 3),
            "overhead_ratio_own_core_runs": [round(r["step_s"] / p["step_s"], 3)
                                             for p, r in own_pairs],
            "cpu_wait_frac_own_core": [[p["cpu_wait_frac"], r["cpu_wait_frac"]]
                                       for p, r in own_pairs]}
           if own_pairs else {"overhead_ratio_own_core": None}),
        "ray_1w_breakdown_s": {phase: one[f"{phase}_s"] for phase in PHASES},
        # how long the step's threads waited for a CPU, each side (cpu_wait.py)
        "cpu_wait_frac_plain": [p["cpu_wait_frac"] for p, _ in pairs],
        "cpu_wait_frac_ray_1w": [r["cpu_wait_frac"] for _, r in pairs],
        "samples_per_s_1w": one["samples_per_s"],
        "samples_per_s_2w": two["samples_per_s"],
        **{f"samples_per_s_2w_zero{r['zero_stage']}": r["samples_per_s"] for r in scaling},
    }
    path = write_results(
        args.out, "train", rows_out, summary,
        ["run", "workers", "zero_stage", "nice", "cores", "step_s", "samples_per_s",
         *[f"{phase}_s" for phase in PHASES], "cpu_wait_frac", "wall_s", "peak_rss_tree_mb"],
        notes=(f"Preset {preset}, micro batch per worker as the preset says, all the losses "
               f"with the preprocess graph, fp32 on CPU (gloo). Both sides use {CORES} cores: "
               "the plain loop 2 threads; Ray 1 worker x 2 CPUs or 2 workers x 1 CPU. Ray step "
               "time = median logged window after the first (includes data waiting); wall_s "
               "includes cluster start; data_s ... checkpoint_s: the loop's own per-step "
               "breakdown (median window; the rest of step_s is untimed glue). cpu_wait_frac: "
               "of the time the step's process's threads were runnable, the share they waited "
               "for a CPU other processes held (Linux schedstat; Ray: the median window, "
               "plain: the timed steps; summary: each pair's plain and Ray). overhead_ratio = "
               "the median of three Ray+DeepSpeed 1-worker step / plain step ratios, each from "
               "a pair run back to back (first, middle and last: overhead_ratio_runs); "
               "plain_step_s and ray_deepspeed_step_s are the medians of each side. "
               "deepspeed_only_ratio = the same DeepSpeed engine in one process / the first "
               "plain step; deepspeed_in_ray_task_ratio: that process a Ray task (2 CPUs, a "
               "local cluster of 3 running); deepspeed_ray_data_ratio: in this process with "
               "its batches from Ray Data as the train loop's (the same cluster). One fp32 worker runs "
               "ZeRO stage 0 (nothing to partition: zero_stage shows the stage that ran). nice: "
               "the train workers' nice value (train.worker_niceness; Ray starts its workers at 15); "
               "overhead_ratio_nice15 = the run at 15 / the median plain step. cores = own: "
               "the step's core left to it: the plain loop 1 thread pinned to the first core (the "
               "other idle); Ray's local cluster on the other cores (it advertises 2 logical "
               "CPUs: the worker's and one for Ray Data's readers) and its 1-CPU train worker, "
               "every thread, pinned to the first core once it starts "
               "(benchmarking.ThreadPinner). "
               "overhead_ratio_own_core = the median of two such pairs' Ray / plain step "
               "(plain first, then Ray first): what Ray Train + DeepSpeed cost the step "
               "without the cluster's share of its cores."))
    print(f"bench train: {summary} -> {path}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
