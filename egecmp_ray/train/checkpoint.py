"""Training checkpoints: DeepSpeed's sharded state loaded without arbitrary pickle and the
trainer's own state as JSON + tensors. (The inference model directory is ``model/model_dir.py``.)

A training checkpoint directory holds ``ds/`` (DeepSpeed: model, optimizer, scheduler, one
file per ZeRO partition), ``trainer_state.json`` (step, epoch, samples seen, config hash),
``rng_<rank>.pt``, ``graph_sets.pt`` and ``files_<rank>.json`` (the files each rank wrote, with
their sizes: how a reader tells a whole checkpoint from a half-uploaded one). Everything loads with ``torch.load(weights_only=True)``;
the few DeepSpeed classes its optimizer files hold are allow-listed by name.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any, Optional

import pyarrow.fs as pafs
import torch

from egecmp_ray.config import InputError
from egecmp_ray.data import storage

DS_TAG = "ds"
STATE_FILE = "trainer_state.json"
CHECKPOINT_NAME = r"checkpoint_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d+"  # Ray Train's dir names


def _deepspeed_safe_globals() -> list[Any]:
    """The non-tensor classes DeepSpeed 0.19 pickles into ZeRO optimizer files."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_checkpoint_engine():
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True``."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return SafeTorchCheckpointEngine()


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint directory (a local dir or a URI), or an
    :class:`InputError` naming what is missing or unreadable (never a silent fresh start)."""
    fs, root = storage.resolve(path)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise InputError(f"checkpoint {path} does not exist")
    state_file = storage.join(root, STATE_FILE)
    if not storage.exists(fs, state_file) or not storage.entries(fs, storage.join(root, DS_TAG)):
        raise InputError(f"checkpoint {path} is incomplete: it needs {STATE_FILE} and {DS_TAG}/ "
                         "(delete the run's output dir to start over)")
    try:
        return storage.read_json(fs, state_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"checkpoint {path}: {STATE_FILE} is corrupt ({exc})") from None


def write_file_list(directory: Path, rank: int) -> None:
    """Record, last, the files (and sizes) this rank put in its checkpoint directory, so a
    reader can tell a checkpoint every rank finished uploading from a half-copied one."""
    files = {str(p.relative_to(directory)): p.stat().st_size
             for p in sorted(directory.rglob("*")) if p.is_file()}
    (directory / f"files_{rank}.json").write_text(json.dumps(files), encoding="utf-8")


def checkpoint_problem(path: str | Path, world: int) -> Optional[str]:
    """Why a training checkpoint (a local dir or a URI) cannot be resumed from, or None when
    every rank's files reached storage whole (each rank's ``files_<rank>.json`` lists them with
    their sizes): a worker that died while uploading, or a damaged disk, leaves files missing
    or short."""
    if checkpoint_step(path) is None:
        return f"{STATE_FILE} is missing or unreadable"
    fs, root = storage.resolve(path)
    for r in range(world):
        try:
            listed = storage.read_json(fs, storage.join(root, f"files_{r}.json"))
        except (OSError, ValueError) as exc:
            return f"files_{r}.json is missing or unreadable ({type(exc).__name__})"
        for name, size in listed.items():
            info = fs.get_file_info(storage.join(root, name))
            if info.type != pafs.FileType.File:
                return f"{name} is missing"
            if info.size != size:
                return f"{name} has {info.size} bytes, {size} were written"
    return None


def partitions_complete(path: str | Path, world: int) -> bool:
    return checkpoint_problem(path, world) is None


def checkpoint_step(path: str | Path) -> Optional[int]:
    """The trained step a checkpoint directory records, or None when it has no readable state."""
    try:
        fs, root = storage.resolve(path)
        return int(storage.read_json(fs, storage.join(root, STATE_FILE))["step"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def checkpoint_dirs(run_dir: str | Path) -> list[str]:
    """The run's checkpoint directories (local paths or URIs, as ``run_dir`` is given)."""
    fs, root = storage.resolve(run_dir)
    return [storage.child(str(run_dir), posixpath.basename(i.path))
            for i in storage.entries(fs, root)
            if i.type == pafs.FileType.Directory
            and re.fullmatch(CHECKPOINT_NAME, posixpath.basename(i.path))]


def newest_complete(run_dir: str | Path, world: int) -> Optional[tuple[int, str]]:
    """(step, dir) of the run's newest checkpoint that has every rank's files.

    Ray Train registers a checkpoint when its controller has collected the report from every
    worker; a worker killed right after writing one can take its report down with it, and the
    restarted workers would then start over. Storage still holds the checkpoint: use it."""
    best = None
    for d in sorted(checkpoint_dirs(run_dir)):
        step = checkpoint_step(d)
        if step is not None and partitions_complete(d, world) and (best is None or step > best[0]):
            best = (step, d)
    return best


def recorded_checkpoints(run_dir: str | Path) -> set[str]:
    """Checkpoint dir names in Ray Train's own record of the run (empty without one)."""
    fs, root = storage.resolve(run_dir)
    snapshot = storage.join(root, "checkpoint_manager_snapshot.json")
    if not storage.exists(fs, snapshot):
        return set()
    return set(re.findall(CHECKPOINT_NAME, storage.read_text(fs, snapshot)))


def prune_unrecorded(run_dir: str | Path) -> list[str]:
    """Delete checkpoint dirs Ray Train never registered (their report died with a worker)
    once a newer registered one exists; Ray's ``num_to_keep`` only prunes the ones it knows."""
    recorded = recorded_checkpoints(run_dir)
    steps = [s for s in (checkpoint_step(storage.child(str(run_dir), n)) for n in recorded)
             if s is not None]
    if not steps:
        return []
    removed = []
    for d in checkpoint_dirs(run_dir):
        if posixpath.basename(d) not in recorded:
            step = checkpoint_step(d)
            if step is None or step < max(steps):
                storage.remove(*storage.resolve(d))
                removed.append(d)
    return removed


# Model keys that only change how a trained model is read for retrieval, never a training
# step: a resume may change them.
READOUT_ONLY = frozenset({"retrieval_weights"})


def config_mismatch(saved: dict[str, Any], current: dict[str, Any], prefix: str = "model"
                    ) -> list[str]:
    """Dotted keys whose values differ (a resume under a different model is refused)."""
    keys = sorted((set(saved) | set(current)) - (READOUT_ONLY if prefix == "model" else set()))
    return [f"{prefix}.{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys
            if saved.get(k) != current.get(k)]


# Training settings a resume keeps, as DeepSpeed runs them (after a user's DeepSpeed JSON and
# the one-worker ZeRO 0): ZeRO partitions and optimizer formats belong to ranks, stage and
# precision (workers, zero_stage, precision); the step and the batches of the epoch already
# trained count micro-batches (micro_batch, grad_accum) of these rows (splits). Changed, a
# resume would fail in DeepSpeed after every retry, or silently skip or repeat rows.
def train_shape(train: Any, ds_config: dict[str, Any], precision: Optional[str] = None
                ) -> dict[str, Any]:
    """What a checkpoint records of ``train`` and the DeepSpeed config built from it; the
    driver, which cannot tell bf16 from fp16 before a worker sees its device, leaves
    ``precision`` out (only keys both sides hold are compared)."""
    shape = {"workers": train.workers, "zero_stage": ds_config["zero_optimization"]["stage"],
             "micro_batch": ds_config["train_micro_batch_size_per_gpu"],
             "grad_accum": ds_config["gradient_accumulation_steps"], "splits": list(train.splits)}
    if precision is not None:
        shape["precision"] = precision
    return shape


def written_by(path: str | Path) -> Optional[int]:
    """How many workers wrote a checkpoint (None: not recorded, or unreadable)."""
    fs, root = storage.resolve(path)
    try:
        workers = storage.read_json(fs, storage.join(root, STATE_FILE)).get("train", {})
        return int(workers["workers"]) if "workers" in workers else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def refuse_other_config(saved: dict[str, Any], model_config: dict[str, Any],
                        data: Optional[dict[str, Any]], where: str,
                        train: Optional[dict[str, Any]] = None) -> None:
    """The one resume check (the driver runs it before starting, every worker again on the
    checkpoint it loads): a checkpoint trained with another model config, on other data
    (``data``: the preprocess output's identity; None skips it) or with other
    :func:`train_shape` (``train``; None skips it) raises an InputError naming the keys.
    Checkpoints older than a check carry nothing for it to compare."""
    diff = config_mismatch(saved.get("model_config", {}), model_config)
    if diff:
        raise InputError(f"checkpoint {where} was trained with another model config; refusing "
                         f"to resume ({'; '.join(diff)}). Use another --out or --run-name to "
                         "start a new run.")
    if train is not None and saved.get("train"):
        common = set(saved["train"]) & set(train)
        diff = config_mismatch({k: saved["train"][k] for k in common},
                               {k: train[k] for k in common}, prefix="train")
        if diff:
            raise InputError(f"checkpoint {where} was trained with other training settings "
                             f"({'; '.join(diff)}); a resume keeps them: set them back, or use "
                             "another --out or --run-name to start a new run.")
    if data is not None:
        diff = config_mismatch(saved.get("data") or data, data, prefix="data")
        if diff:
            raise InputError(f"checkpoint {where} was trained on other data ({'; '.join(diff)}); "
                             "refusing to resume. Use another --out or --run-name to start a "
                             "new run.")


def save_rng(path: Path, generator: torch.Generator) -> None:
    """This rank's random streams: torch's CPU one, the masking draws, and on a GPU the
    device's (dropout draws there)."""
    state = {"torch": torch.get_rng_state(), "masking": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, path)


def load_rng(path: Path, generator: torch.Generator) -> None:
    state = torch.load(path, weights_only=True)
    torch.set_rng_state(state["torch"])
    generator.set_state(state["masking"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
