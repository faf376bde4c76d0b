"""The per-worker training loop Ray Train runs: DeepSpeed engine, streamed shard batches,
graph refresh each epoch, checkpoints (with the latest metrics) through ``ray.train.report``.

Read it top to bottom as one training step: batch -> ``pretrain_losses`` -> ``engine.backward``
-> ``engine.step``; every ``log_every_steps`` a ``metrics.jsonl`` line, every
``checkpoint_every_steps`` a checkpoint all workers write their ZeRO partitions into.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from egecmp_ray.config import GRAPH_LOSSES, Config, InputError, config_from_dict
from egecmp_ray.data import storage
from egecmp_ray.entities.gae import learn_graph
from egecmp_ray.entities.graph import load_graph
from egecmp_ray.entities.tokenizer import load_tokenizer
from egecmp_ray.model.egecmp import EGECMP, TokenIds
from egecmp_ray.model.model_dir import save_model_dir
from egecmp_ray.model.pretraining import GraphContext, pretrain_losses
from egecmp_ray.runtime import interpreter_tools_first
from egecmp_ray.train import checkpoint as ckpt
from egecmp_ray.train.cpu_wait import thread_schedstats, waited_share
from egecmp_ray.train.deepspeed_config import (deepspeed_config, resolve_precision,
                                               skip_identity_allreduce)
from egecmp_ray.train.optim import build_optimizer

log = logging.getLogger(__name__)

# The shard columns a training step reads (strings stay behind in the Parquet files).
TRAIN_COLUMNS = ("title_ids", "entity_seq_ids", "entity_ids", "region_feats", "region_boxes",
                 "image_mask")
NODE_BATCH = 512


@dataclasses.dataclass
class LoopArgs:
    """What the driver (``pretrain.py``) hands every worker: Ray passes it as a dict
    (``train_loop_config``), the loop reads it back into this."""

    config: dict  # Config.to_dict()
    data_dir: str
    total_steps: int
    steps_per_epoch: int  # micro-batches per epoch and worker, divided by grad_accum
    data: dict  # the preprocess output's identity (checkpoints record it)
    metrics_path: Optional[str] = None
    run_dir: Optional[str] = None  # where the run's checkpoints live (resume lists them)
    fail_marker: Optional[str] = None  # fault injection (tests): written when it fires


@dataclasses.dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint as trainer_state.json."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already trained on
    samples: int = 0  # samples seen, all workers
    config_hash: str = ""
    model_config: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)  # which preprocess output (data_identity)
    train: dict = dataclasses.field(default_factory=dict)  # checkpoint.train_shape


@torch.no_grad()
def node_features(model: EGECMP, node_tokens: torch.Tensor) -> torch.Tensor:
    """Each entity node's representation from the model's text stream (the graph-learning
    input). Every worker runs it (ZeRO-3 gathers weights inside forward)."""
    was = model.training
    model.eval()
    device = model.device_of()
    out = [model.entity_reps(node_tokens[i:i + NODE_BATCH].to(device)).float().cpu()
           for i in range(0, len(node_tokens), NODE_BATCH)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, model.cfg.hidden)


def refresh_graph(model: EGECMP, graph: GraphContext, base, cfg: Config,
                  epoch: int) -> GraphContext:
    """Rank 0 re-learns the positive/negative sets from the model's node features on the
    preprocessed graph ``base`` (edges, and the candidates positives come from); every
    worker receives them."""
    import torch.distributed as dist

    feats = node_features(model, graph.node_tokens)
    payload: list[Any] = [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        sets, _ = learn_graph(feats, base.edge_index, cfg.entities, seed=cfg.data.seed + epoch + 1,
                              candidates=getattr(base, "candidates", None))
        payload = [(sets.positives, sets.negatives)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(payload, src=0)
    pos, neg = payload[0]
    return GraphContext(graph.node_tokens, pos, neg)


def _metrics_line(path: Optional[str], record: dict[str, Any]) -> None:
    if path:
        storage.append_line(path, json.dumps(record))


def _metrics_resumed(path: Optional[str], step: int, checkpoint: str) -> None:
    """A resumed run trains the steps after its checkpoint again: drop their old lines (and
    events logged after it), so ``metrics.jsonl`` holds each step once, then note the resume.
    A line cut short by the crash is dropped with a warning, not a reason to fail every
    restart."""
    fs, file = storage.resolve(path) if path else (None, "")
    if path and storage.exists(fs, file):
        kept, cut = [], 0
        for line in storage.read_text(fs, file).splitlines():
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                cut += 1
                continue
            # a graph refresh logged at the checkpoint's step came after it (the epoch's
            # last step checkpoints first): the resumed run refreshes and logs it again
            at = record.get("step", 0) if isinstance(record, dict) else None
            if at is not None and (at < step or at == step and
                                   record.get("event") != "graph_refresh"):
                kept.append(line)
        if cut:
            log.warning("%s: dropped %d unreadable line(s) (cut short by the crash?)", path, cut)
        storage.write_text(fs, file, "".join(line + "\n" for line in kept))
    _metrics_line(path, {"event": "resumed", "checkpoint": checkpoint, "step": step})


def _save(engine, state: TrainerState, graph: Optional[GraphContext], gen: torch.Generator,
          rank: int, model_dir: Optional[tuple[Config, TokenIds, Path]] = None):
    """Every worker writes its ZeRO partition into a local dir; Ray merges them in storage
    (and deletes the local copy once uploaded)."""
    from ray.train import Checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="egecmp-ckpt-"))
    engine.save_checkpoint(str(tmp), tag=ckpt.DS_TAG)
    ckpt.save_rng(tmp / f"rng_{rank}.pt", gen)
    if rank == 0:
        (tmp / ckpt.STATE_FILE).write_text(json.dumps(dataclasses.asdict(state)))
        if graph is not None:
            torch.save({"positives": graph.positives, "negatives": graph.negatives},
                       tmp / "graph_sets.pt")
    if model_dir is not None:
        _consolidate(engine, tmp / "model", graph, rank, *model_dir)
    ckpt.write_file_list(tmp, rank)
    return Checkpoint.from_directory(str(tmp))


def _consolidate(engine, out: Path, graph: Optional[GraphContext], rank: int, cfg: Config,
                 tokens: TokenIds, vocab_dir: Path) -> None:
    """fp32 weights for inference, gathered from ZeRO-3 partitions when needed."""
    import deepspeed

    module = engine.module
    params = list(module.parameters())
    stage3 = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=stage3):
        if rank == 0:
            sets = None if graph is None else {"positives": graph.positives,
                                               "negatives": graph.negatives}
            save_model_dir(out, module.state_dict(), cfg, tokens, vocab_dir, sets)


def _resume_point(registered, run_dir: Optional[str], rank: int, world: int):
    """The checkpoint to resume from: Ray Train's registered one when it is whole, else the
    newest complete one on storage (a damaged registered one is skipped with a warning; a newer
    complete one whose report died with a worker is taken, see :func:`ckpt.newest_complete`).
    Rank 0 decides and broadcasts, so every rank loads the same checkpoint."""
    import torch.distributed as dist
    from ray.train import Checkpoint

    choice = [None]
    if rank == 0:
        registered_step, problem = -1, None
        if registered is not None:
            with registered.as_directory() as d:
                problem = ckpt.checkpoint_problem(Path(d), world)
                registered_step = -1 if problem else ckpt.check_checkpoint(Path(d))["step"]
        found = ckpt.newest_complete(run_dir, world) if run_dir else None
        if problem:
            log.warning("skipping damaged checkpoint %s: %s", registered.path, problem)
            if found is None:
                raise InputError(f"checkpoint {registered.path} is damaged ({problem}) and no "
                                 "complete one is on storage; delete the run to start over")
        if found is not None and found[0] > registered_step:
            if not problem:
                log.warning("Ray Train has %s; resuming from %s (step %d), which storage holds "
                            "complete but whose report was lost with a failed worker",
                            "no checkpoint registered" if registered is None
                            else f"step {registered_step} registered", found[1], found[0])
            choice = [str(found[1])]
    if world > 1 and dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    return Checkpoint(choice[0]) if choice[0] else registered  # a local path or a URI


class StepTimer:
    """Seconds spent per phase of the step over a logging window (``metrics.jsonl``'s
    ``time_*_s``: per optimizer step). On a GPU a timed phase ends with a synchronize, so it is
    charged its own kernels, not the next phase's wait; as a synchronize also drains the queue
    the host keeps ahead of the GPU, there the device phases (``SAMPLED``) are timed on the
    first optimizer step of each window only. Data waits (host time blocked on the iterator)
    and checkpoints are timed on every step. It also reads how long the process's threads
    waited for a CPU over the window (:mod:`cpu_wait`)."""

    PHASES = ("data", "forward", "backward", "optimizer", "checkpoint")
    SAMPLED = ("forward", "backward", "optimizer")

    def __init__(self, device: torch.device):
        self.sampled = device.type == "cuda"
        self.sync = torch.cuda.synchronize if self.sampled else (lambda: None)
        self.reset()
        self.mark()

    def reset(self) -> None:
        """A new window; it starts with the device's queue drained, so its timed step is not
        charged the untimed steps' kernels."""
        self.sync()
        self.spent = dict.fromkeys(self.PHASES, 0.0)
        self.timed = 0  # optimizer steps whose device phases were timed
        self.schedstats = thread_schedstats()

    def cpu_wait_frac(self) -> Optional[float]:
        """Of the time this process's threads were runnable in this window, the share they
        waited for a CPU (None where Linux does not say)."""
        return waited_share(self.schedstats, thread_schedstats())

    @property
    def timing(self) -> bool:
        """Whether this step's device phases are timed: every step on a CPU, the window's
        first on a GPU."""
        return not self.sampled or self.timed == 0

    def mark(self) -> None:
        """Start timing the next phase from now."""
        self.t = time.perf_counter()

    def charge(self, phase: str) -> None:
        """The time since the last mark goes to ``phase``."""
        if phase in self.SAMPLED and not self.timing:
            self.mark()
            return
        if self.timing or phase == "checkpoint":
            self.sync()
        now = time.perf_counter()
        self.spent[phase] += now - self.t
        self.t = now

    def step_done(self) -> None:
        """An optimizer step ended; on a GPU the next ones run untimed until :meth:`reset`."""
        self.timed += self.timing

    def per_step(self, steps: int) -> dict[str, float]:
        return {f"time_{k}_s": round(v / max(self.timed if k in self.SAMPLED else steps, 1), 4)
                for k, v in self.spent.items()}


def _restore(restored, engine, state: TrainerState, gen: torch.Generator,
             graph: Optional[GraphContext], args: LoopArgs, rank: int
             ) -> tuple[TrainerState, Optional[GraphContext]]:
    """Load a checkpoint into the engine, the trainer state, this rank's RNG streams and the
    graph sets it was taken with; ``metrics.jsonl`` drops the steps trained again."""
    with restored.as_directory() as d:
        d = Path(d)
        saved = ckpt.check_checkpoint(d)
        ckpt.refuse_other_config(saved, state.model_config, None, str(restored.path),
                                 state.train)
        loaded, _ = engine.load_checkpoint(str(d), tag=ckpt.DS_TAG)
        if loaded is None:  # DeepSpeed warns and keeps the fresh weights: never train on those
            raise RuntimeError(f"DeepSpeed could not load the model from checkpoint "
                               f"{restored.path} (see its warning above)")
        # the driver checked the data; a checkpoint older than the train check records none
        state = TrainerState(**{**saved, "data": state.data, "train": state.train})
        rng_file = d / f"rng_{rank}.pt"
        if rng_file.is_file():
            ckpt.load_rng(rng_file, gen)
        if graph is not None and (d / "graph_sets.pt").is_file():
            sets = torch.load(d / "graph_sets.pt", weights_only=True)
            graph = GraphContext(graph.node_tokens, sets["positives"], sets["negatives"])
    if rank == 0:
        log.info("resumed from %s (step %d, epoch %d)", restored.path, state.step, state.epoch)
        _metrics_resumed(args.metrics_path, state.step, restored.path)
    return state, graph


def _inject_fault(args: LoopArgs, cfg: Config, step: int, rank: int, world: int) -> None:
    """Fault injection (tests): the last worker kills itself once at ``train.fail_at_step``;
    the marker file keeps the restarted run from doing it again."""
    if (args.fail_marker and step == cfg.train.fail_at_step and rank == world - 1
            and not storage.exists(*storage.resolve(args.fail_marker))):
        storage.write_text(*storage.resolve(args.fail_marker), str(step))
        log.warning("fault injection: killing worker %d at step %d", rank, step)
        os.kill(os.getpid(), signal.SIGKILL)


def train_loop(loop_config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs (``TorchTrainer(train_loop, ...)``), with
    ``loop_config`` = ``dataclasses.asdict(LoopArgs(...))``."""
    import deepspeed
    import ray.train
    import torch.distributed as dist

    # -- setup: config, device, threads, build tools --------------------------------------
    interpreter_tools_first()  # DeepSpeed builds its CPU op with this venv's ninja
    args = LoopArgs(**loop_config)
    cfg = config_from_dict(args.config)
    # An object-store --data: vocabulary and graph fetched once (the shards stream via Ray Data).
    data_dir = storage.local_input(args.data_dir, skip=("shards", "quarantine"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_gpu = device.type == "cuda"
    if not use_gpu:  # Ray sets one OpenMP thread per reserved CPU; the config may say more
        torch.set_num_threads(cfg.train.threads_per_worker
                              or max(1, int(cfg.train.cpus_per_worker)))

    # -- model, optimizer, DeepSpeed engine (identical initial weights on every worker) ---
    tokens = TokenIds.from_tokenizer(load_tokenizer(str(data_dir / "vocab" / "tokenizer.json")))
    torch.manual_seed(cfg.data.seed)
    model = EGECMP(cfg.model, tokens)
    precision = resolve_precision(cfg.train, use_gpu,
                                  use_gpu and torch.cuda.is_bf16_supported())
    optimizer, scheduler = build_optimizer(model, cfg.train, args.total_steps)
    if cfg.train.compile:  # the instance's forward: parameter names and checkpoints unchanged
        model.forward = torch.compile(model.forward, dynamic=False)
    ds_config = deepspeed_config(cfg.train, world, precision)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
        dist_init_required=False)
    engine.checkpoint_engine = ckpt.safe_checkpoint_engine()
    if skip_identity_allreduce(engine) and rank == 0:
        log.info("one fp32 worker at ZeRO 0: DeepSpeed's gradient all-reduce (an identity "
                 "over one rank) is skipped")
    gen = torch.Generator().manual_seed(cfg.data.seed * 1000 + rank)  # masking draws

    # -- the entity graph (variants with graph losses only) ------------------------------
    uses_graph = bool(set(cfg.model.active_losses()) & set(GRAPH_LOSSES))
    graph = GraphContext.load(str(data_dir)) if uses_graph else None
    base = load_graph(data_dir / "graph") if graph is not None else None
    state = TrainerState(config_hash=cfg.hash("model"), model_config=dataclasses.asdict(cfg.model),
                         data=args.data, train=ckpt.train_shape(cfg.train, ds_config, precision))

    # -- resume ---------------------------------------------------------------------------
    restored = _resume_point(ray.train.get_checkpoint(), args.run_dir, rank, world)
    if restored is not None:
        state, graph = _restore(restored, engine, state, gen, graph, args, rank)
    if graph is not None:
        graph = graph.to(device)

    # -- epochs of steps ------------------------------------------------------------------
    shard = ray.train.get_dataset_shard("train")
    micro, accum = cfg.train.micro_batch, cfg.train.grad_accum
    timer = StepTimer(device)
    window_t, window_samples, window_steps = time.perf_counter(), 0, 0
    metrics: dict[str, Any] = {}  # the last logged window's
    while state.epoch < cfg.train.epochs and state.step < args.total_steps:
        skip = state.batches_in_epoch  # batches this epoch already trained on (resume)
        batches = shard.iter_torch_batches(
            batch_size=micro, drop_last=True, local_shuffle_buffer_size=4 * micro,
            local_shuffle_seed=cfg.data.seed + state.epoch)
        timer.mark()
        for i, batch in enumerate(batches):
            if i >= args.steps_per_epoch * accum or state.step >= args.total_steps:
                break  # every worker runs the same number of steps
            if i < skip:
                timer.mark()
                continue
            timer.charge("data")
            # forward + losses, backward, optimizer step (DeepSpeed steps every accum)
            losses = pretrain_losses(engine.module, batch, graph, gen)
            timer.charge("forward")
            engine.backward(losses["loss"])
            timer.charge("backward")
            engine.step()
            timer.charge("optimizer")
            state.batches_in_epoch = i + 1
            state.samples += micro * world
            window_samples += micro * world
            if (i + 1) % accum:
                timer.mark()
                continue
            state.step += 1
            window_steps += 1
            timer.step_done()

            # metrics every log_every_steps (and at the last step): metrics.jsonl and the log.
            # They reach Ray Train with the checkpoints only: its controller takes one report
            # per health-check poll (2 s; the worker's result queue holds one), so a report
            # each window blocked the step (measured: 0.8 s a report on an H200).
            if state.step % cfg.train.log_every_steps == 0 or state.step == args.total_steps:
                elapsed = time.perf_counter() - window_t
                metrics = {"step": state.step, "epoch": state.epoch, "samples": state.samples,
                           **{k: round(float(v.detach()), 5) for k, v in losses.items()},
                           "lr": scheduler_lr(engine),
                           "samples_per_s": round(window_samples / elapsed, 2),
                           "step_time_s": round(elapsed / max(window_steps, 1), 4),
                           **timer.per_step(window_steps),
                           "data_wait_s": round(timer.spent["data"], 4),
                           "cpu_wait_frac": timer.cpu_wait_frac(),
                           "graph": graph is not None}
                if rank == 0:
                    _metrics_line(args.metrics_path, metrics)
                    log.info("step %d/%d loss %.4f (%s samples/s)", state.step,
                             args.total_steps, metrics["loss"], metrics["samples_per_s"])
                timer.reset()
                timer.mark()
                window_t, window_samples, window_steps = timer.t, 0, 0

            # checkpoint every checkpoint_every_steps (the last step's comes after the loop)
            if state.step % cfg.train.checkpoint_every_steps == 0 and state.step < args.total_steps:
                timer.mark()
                ray.train.report({**metrics, "step": state.step, "checkpoint_step": state.step},
                                 checkpoint=_save(engine, state, graph, gen, rank),
                                 delete_local_checkpoint_after_upload=True)
                timer.charge("checkpoint")
            _inject_fault(args, cfg, state.step, rank, world)
            timer.mark()
        if state.step >= args.total_steps:
            break

        # -- end of epoch: graph refresh from the model's current entity features -----------
        state.epoch += 1
        state.batches_in_epoch = 0
        if graph is not None and state.epoch % cfg.train.graph_refresh_epochs == 0:
            graph = refresh_graph(engine.module, graph.to(torch.device("cpu")), base, cfg,
                                  state.epoch)
            usable = int(((graph.positives >= 0).any(1) & (graph.negatives >= 0).any(1)).sum())
            if rank == 0:
                log.info("entity graph refreshed from the model: %d of %d nodes have a positive "
                         "and a negative", usable, len(graph.positives))
                _metrics_line(args.metrics_path,
                              {"event": "graph_refresh", "epoch": state.epoch,
                               "step": state.step, "nodes": len(graph.positives),
                               "usable_anchors": usable})
            graph = graph.to(device)

    # -- final checkpoint with the consolidated model dir ---------------------------------
    if dist.is_initialized():
        dist.barrier()
    checkpoint = _save(engine, state, graph, gen, rank, model_dir=(cfg, tokens, data_dir / "vocab"))
    ray.train.report({**metrics, "step": state.step, "final": True, "samples": state.samples,
                      "device": device.type, "precision": precision,
                      "backend": dist.get_backend() if dist.is_initialized() else None,
                      "worker_nice": os.getpriority(os.PRIO_PROCESS, 0)},
                     checkpoint=checkpoint, delete_local_checkpoint_after_upload=True)


def scheduler_lr(engine) -> float:
    """The base learning rate (loaded BERT weights run at a fraction of it)."""
    return float(max(engine.get_lr()))
