"""The DeepSpeed JSON, derived from the typed config (never hand-kept in parallel).

A user's own JSON file (``train.deepspeed_config``) is merged on top, key by key, so it can
change any setting (e.g. ZeRO offload) while batch sizes stay consistent with the loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from egecmp_ray.config import InputError, TrainConfig


def resolve_precision(train: TrainConfig, use_gpu: bool, bf16_ok: bool) -> str:
    """``auto``: bf16 on a GPU that supports it (fp16 on an older one), fp32 on CPU."""
    if train.precision == "auto":
        return ("bf16" if bf16_ok else "fp16") if use_gpu else "fp32"
    if train.precision in ("bf16", "fp16") and not use_gpu:
        raise InputError(f"train.precision={train.precision} needs a GPU; use fp32 or auto on CPU")
    return train.precision


def merge_json(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, nested dicts merged key by key (neither is changed)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge_json(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def one_worker_stage(zero: dict[str, Any], world_size: int, precision: str) -> int:
    """The ZeRO stage DeepSpeed is given. ZeRO partitions optimizer state (1), gradients (2)
    and weights (3) across the data-parallel workers; one fp32 worker has nothing to
    partition, so the stage would only add its flattening and copies (DeepSpeed alone, `small`
    on CPU: 1.03-1.04x a plain PyTorch step at ZeRO-1, 1.005x at stage 0): it runs stage 0,
    unless the ZeRO settings ask for more than a stage (offload, say). In bf16/fp16 the stage
    stays: ZeRO's optimizer is what keeps fp32 master weights (stage 0 would update bf16
    weights in place)."""
    if world_size == 1 and precision == "fp32" and set(zero) == {"stage"}:
        return 0
    return int(zero["stage"])


def skip_identity_allreduce(engine) -> bool:
    """Turn off DeepSpeed's gradient all-reduce where it is an identity: one data-parallel
    rank, ZeRO stage 0, fp32 (the one-CPU-worker run). Each step it still flattens every
    gradient, calls the collective and copies the result back (`small` on CPU: 7-12 ms of
    a ~0.75 s step). With ZeRO or half precision the same call also moves gradients into the
    optimizer's buffers, so those keep it. Returns whether it was turned off."""
    if (engine.dp_world_size == 1 and engine.zero_optimization_stage() == 0
            and not (engine.fp16_enabled() or engine.bfloat16_enabled())):
        engine.enable_backward_allreduce = False
        return True
    return False


def deepspeed_config(train: TrainConfig, world_size: int, precision: str) -> dict[str, Any]:
    """ZeRO stage, batch sizes, clipping and precision from ``train``; the optimizer and the
    scheduler are built by the loop (AdamW param groups with the BERT lr scale). One fp32
    worker runs ZeRO stage 0 (:func:`one_worker_stage`)."""
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch * train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "zero_allow_untested_optimizer": True,  # our own torch AdamW with param groups
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,  # the loop logs its own metrics
        "wall_clock_breakdown": False,
    }
    if train.deepspeed_config:
        path = Path(train.deepspeed_config)
        if not path.is_file():
            raise InputError(f"train.deepspeed_config {path}: file not found")
        try:
            user = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"train.deepspeed_config {path} is not valid JSON: {exc}") from None
        cfg = merge_json(cfg, user)
        batch = cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * world_size
        if cfg["train_batch_size"] != batch:
            raise InputError(f"train.deepspeed_config {path}: train_batch_size "
                             f"{cfg['train_batch_size']} != micro batch x accumulation x "
                             f"{world_size} workers = {batch}")
    cfg["zero_optimization"]["stage"] = one_worker_stage(cfg["zero_optimization"], world_size,
                                                         precision)
    return cfg
