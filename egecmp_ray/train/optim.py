"""AdamW parameter groups and the warm-up + linear-decay schedule (DESIGN.md section 4)."""

from __future__ import annotations

import torch

from egecmp_ray.config import TrainConfig
from egecmp_ray.model.egecmp import EGECMP

NO_DECAY = ("bias", "norm", "LayerNorm", "no_image")


def param_groups(model: EGECMP, train: TrainConfig) -> list[dict]:
    """Four groups: (BERT-checkpoint weights at ``bert_lr_scale`` x lr, the rest at lr) x
    (weight decay, none for biases, norms and the "no image" token)."""
    bert = set(model.bert_parameter_names())
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (name in bert, any(k in name for k in NO_DECAY))
            groups.setdefault(key, []).append(p)
    return [{"params": params, "lr": train.lr * (train.bert_lr_scale if is_bert else 1.0),
             "weight_decay": 0.0 if no_decay else train.weight_decay}
            for (is_bert, no_decay), params in sorted(groups.items())]


def lr_factor(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Linear warm-up over the first ``warmup_fraction`` of steps, then linear decay to 0."""
    warmup = int(total_steps * warmup_fraction)
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def build_optimizer(model: EGECMP, train: TrainConfig, total_steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(param_groups(model, train), lr=train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total_steps, train.warmup_fraction))
    return opt, sched
