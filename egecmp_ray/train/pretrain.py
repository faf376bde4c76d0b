"""The pretraining job's driver: checks the preprocessed data, builds the Ray Data dataset and
the ``TorchTrainer``, resumes the run when one exists, and writes ``OUT/model/``.

Outputs under ``OUT``: ``ray_results/<run name>/`` (Ray Train: checkpoints, the latest
``keep_checkpoints`` kept), ``metrics.jsonl`` (one line per logged step, written by rank 0),
``model/`` (consolidated fp32 weights + everything inference needs) and ``pretrain.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import pyarrow.fs as pafs

from egecmp_ray.config import Config, InputError
from egecmp_ray.data import storage
from egecmp_ray.placement import cpu_task, gpu_worker
from egecmp_ray.train import checkpoint as ckpt
from egecmp_ray.train.deepspeed_config import deepspeed_config, resolve_precision
from egecmp_ray.train.loop import TRAIN_COLUMNS, LoopArgs, train_loop
from egecmp_ray.train.resources import fit_train_cpus, worker_runtime_env

log = logging.getLogger(__name__)


def data_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must have been trained on to resume: the preprocess config, the
    vocabulary and the entity vocabulary sizes (another --data changes token and node ids)."""
    return {k: manifest.get(k) for k in ("config_hash", "tokenizer_vocab", "entities")}


def check_data(data_dir: str) -> dict[str, Any]:
    """The preprocess manifest (a local path or an object-store URI), or an
    :class:`InputError` saying what is missing."""
    fs, root = storage.resolve(data_dir)
    if not storage.exists(fs, storage.join(root, storage.MANIFEST)):
        raise InputError(f"--data {data_dir}: no manifest.json (run `egecmp preprocess` first)")
    for need in ("shards", "vocab/tokenizer.json", "vocab/entities.tsv"):
        if not storage.exists(fs, storage.join(root, need)):
            raise InputError(f"--data {data_dir}: {need} is missing (an incomplete preprocess?)")
    return storage.read_json(fs, storage.join(root, storage.MANIFEST))


def split_rows(data_dir: str) -> dict[str, int]:
    """Rows per split of the shards (reads the split column only)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, root = storage.resolve(data_dir)
    table = pq.read_table(storage.join(root, "shards"), columns=["split"], filesystem=fs)
    counts = pc.value_counts(table["split"]).to_pylist()
    return {c["values"]: c["counts"] for c in counts}


def plan_steps(rows: int, cfg: Config) -> tuple[int, int]:
    """(steps per epoch, total steps). Ray Data splits rows equally across workers and each
    drops its last partial batch, so every worker runs the same number of steps."""
    t = cfg.train
    per_worker_batches = (rows // t.workers) // t.micro_batch
    steps_per_epoch = per_worker_batches // t.grad_accum
    if steps_per_epoch == 0:
        raise InputError(f"{rows} training rows are fewer than one step needs "
                         f"({t.workers} workers x micro batch {t.micro_batch} x accumulation "
                         f"{t.grad_accum}); lower train.micro_batch or add data")
    total = steps_per_epoch * t.epochs
    return steps_per_epoch, min(total, t.max_steps) if t.max_steps else total


def latest_checkpoint(run_dir: str, world: int = 1) -> Optional[str]:
    """The run's newest checkpoint (a path or URI, as ``run_dir``), by trained step, that
    every rank wrote whole; a damaged newer one is skipped with a warning naming it and why.
    One Ray Train recorded but that is gone from storage is an error naming it (never a silent
    fresh start)."""
    fs, root = storage.resolve(run_dir)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return None
    for name in sorted(ckpt.recorded_checkpoints(run_dir)):
        if fs.get_file_info(storage.join(root, name)).type != pafs.FileType.Directory:
            raise InputError(f"checkpoint {storage.child(run_dir, name)} is recorded by Ray "
                             f"Train but missing (delete {run_dir} to start over)")
    dirs = ckpt.checkpoint_dirs(run_dir)
    for d in sorted(dirs, key=lambda p: (ckpt.checkpoint_step(p) or -1, p), reverse=True):
        problem = ckpt.checkpoint_problem(d, world)
        if problem is None:
            return d
        wrote = ckpt.written_by(d)  # whole, but written by fewer workers than this run has?
        if wrote not in (None, world) and ckpt.checkpoint_problem(d, wrote) is None:
            raise InputError(f"checkpoint {d} was written by {wrote} workers and this run has "
                             f"{world} (train.workers): a ZeRO checkpoint resumes on as many "
                             f"workers as wrote it. Set --workers {wrote}, or use another --out "
                             "or --run-name to start a new run.")
        log.warning("skipping damaged checkpoint %s: %s", d, problem)
    if dirs:
        raise InputError(f"no complete checkpoint in {run_dir} (every one is damaged: see the "
                         "warnings); delete it to start over")
    return None


def training_dataset(data_dir: str, cfg: Config):
    """The rows the trainer streams: ``train.splits`` of the shards, the columns the loop
    reads, and (``train.shuffle=global``) a fresh seeded permutation every epoch: each epoch
    re-executes the dataset, and Ray reseeds the shuffle per execution. A resumed run draws
    new permutations (the execution count restarts), so the rest of an interrupted epoch is a
    sample of it, not the exact remainder."""
    import ray
    from ray.data import RandomSeedConfig
    from ray.data.expressions import col

    dataset = (ray.data.read_parquet(storage.child(data_dir, "shards"), ray_remote_args=cpu_task())
               .filter(expr=col("split").is_in(cfg.train.splits))
               .select_columns(list(TRAIN_COLUMNS)))
    if cfg.train.shuffle == "global":
        dataset = dataset.random_shuffle(seed=RandomSeedConfig(seed=cfg.data.seed,
                                                               reseed_after_execution=True))
    # The loop logs steps; Ray Data's bars from each worker's split would drown them.
    dataset.context.enable_progress_bars = False
    return dataset


def run_pretrain(data: str, out: str, cfg: Config, run_name: str = "pretrain") -> dict[str, Any]:
    """Train on ``data`` (a preprocess output dir) into ``out``; resumes ``out``'s run."""
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    data_dir, out_dir = storage.absolute(data), storage.absolute(out)  # paths or s3:// URIs
    manifest = check_data(data_dir)
    data = data_identity(manifest)
    if manifest["region_dim"] != cfg.model.region_dim:  # the data decides (grid 64, detector 2048)
        log.info("model.region_dim %d -> %d (the data's %s regions)", cfg.model.region_dim,
                 manifest["region_dim"], manifest.get("region_source", "grid"))
        cfg.model.region_dim = manifest["region_dim"]
    counts = split_rows(data_dir)
    rows = sum(counts.get(s, 0) for s in cfg.train.splits)
    if rows == 0:
        raise InputError(f"--data {data_dir} has no rows in splits {cfg.train.splits} "
                         f"(it has {counts}); set train.splits")
    steps_per_epoch, total_steps = plan_steps(rows, cfg)
    use_gpu = cfg.train.use_gpu if cfg.train.use_gpu is not None else \
        ray.cluster_resources().get("GPU", 0) >= 1
    cpus = fit_train_cpus(cfg.train, use_gpu, ray.cluster_resources(),  # before anything waits
                          local=not os.environ.get("RAY_ADDRESS"))
    results_dir = (storage.absolute(cfg.train.storage_path) if cfg.train.storage_path
                   else storage.child(out_dir, "ray_results"))
    run_dir = storage.child(results_dir, run_name)
    # The DeepSpeed JSON the workers will build (a bad user JSON fails here, before Ray waits).
    precision = resolve_precision(cfg.train, use_gpu, bf16_ok=True)  # fp32 or not is what counts
    ds_config = deepspeed_config(cfg.train, cfg.train.workers, precision)
    zero = ds_config["zero_optimization"]["stage"]
    resume = latest_checkpoint(run_dir, cfg.train.workers)
    if resume is not None:
        ckpt.refuse_other_config(ckpt.check_checkpoint(resume), dataclasses.asdict(cfg.model),
                                 data, f"{resume} (--data {data_dir})",
                                 ckpt.train_shape(cfg.train, ds_config))
        print(f"resumed from {resume}", flush=True)
    out_fs, out_root = storage.resolve(out_dir)
    storage.makedirs(out_fs, out_root)
    fail_marker = storage.child(out_dir, ".fault_injected") if cfg.train.fail_at_step else None
    log.info("pretrain: %d rows (%s), %d workers (%s), ZeRO %d%s, %d steps (%d an epoch) -> %s",
             rows, ",".join(cfg.train.splits), cfg.train.workers, "GPU" if use_gpu else "CPU",
             zero, f" (train.zero_stage={cfg.train.zero_stage}: one worker has nothing to "
             "partition)" if zero == 0 < cfg.train.zero_stage and cfg.train.workers == 1 else "",
             total_steps, steps_per_epoch, out_dir)

    dataset = training_dataset(data_dir, cfg)
    resources = {"CPU": cpus, **({"GPU": 1} if use_gpu else {}), **gpu_worker(cfg.cluster)}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=dataclasses.asdict(LoopArgs(
            config=cfg.to_dict(), data_dir=data_dir, total_steps=total_steps,
            steps_per_epoch=steps_per_epoch, data=data,
            metrics_path=storage.child(out_dir, "metrics.jsonl"), run_dir=run_dir,
            fail_marker=fail_marker)),
        scaling_config=ScalingConfig(num_workers=cfg.train.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=run_name, storage_path=results_dir,
                             worker_runtime_env=worker_runtime_env(cfg.train),
                             failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=cfg.train.keep_checkpoints)),
        datasets={"train": dataset},
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    elapsed = time.perf_counter() - t0
    if result.error is not None:
        raise result.error
    for orphan in ckpt.prune_unrecorded(run_dir):
        log.info("removed %s: a checkpoint Ray Train never registered, superseded", orphan)
    with result.checkpoint.as_directory() as d:
        model_src = Path(d) / "model"
        if not model_src.is_dir():
            raise RuntimeError(f"the final checkpoint {result.checkpoint.path} has no model/")
        storage.upload_dir(model_src, storage.child(out_dir, "model"))
    summary = {"rows": rows, "splits": cfg.train.splits, "workers": cfg.train.workers,
               "use_gpu": use_gpu, "zero_stage": zero, "steps": total_steps,
               "steps_per_epoch": steps_per_epoch, "final_step": result.metrics.get("step"),
               "samples": result.metrics.get("samples"), "elapsed_s": round(elapsed, 1),
               **{k: result.metrics.get(k)
                  for k in ("device", "precision", "backend", "worker_nice")},
               "resumed_from": str(resume) if resume else None,
               "checkpoint": result.checkpoint.path, "model_dir": storage.child(out_dir, "model"),
               "preprocess_config_hash": manifest.get("config_hash")}
    storage.write_text(out_fs, storage.join(out_root, "pretrain.json"), json.dumps(summary, indent=2))
    return summary
