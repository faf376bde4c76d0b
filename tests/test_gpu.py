"""On a CUDA device: a real pretraining run through Ray Train + DeepSpeed trains in bf16 over
NCCL (the GPU path the CPU suite cannot reach). Skipped where there is no CUDA device."""

from __future__ import annotations

import json
import math

import pytest
import torch

from egecmp_ray.config import load_config
from egecmp_ray.model.model_dir import load_model_dir
from egecmp_ray.train.pretrain import run_pretrain

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_pretrain_steps_in_bf16_over_nccl_on_the_gpu(prepared, tmp_path):
    tmp, _, _, _ = prepared
    cfg = load_config(preset="tiny", overrides=["train.max_steps=3", "train.log_every_steps=1",
                                                "train.use_gpu=true", "train.cpus_per_worker=1",
                                                "train.precision=auto"])
    summary = run_pretrain(str(tmp / "prep"), str(tmp_path / "run"), cfg)
    assert summary["use_gpu"] and summary["final_step"] == 3
    assert summary["device"] == "cuda"
    assert summary["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert summary["backend"] == "nccl"
    losses = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in losses if "loss" in e]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_pretrain_with_a_compiled_forward_saves_a_model_that_loads(prepared, tmp_path):
    """``train.compile``: the forward through inductor inside the DeepSpeed engine; the
    consolidated model keeps the parameter names (it loads into an eager model)."""
    tmp, _, _, _ = prepared
    cfg = load_config(preset="tiny", overrides=["train.max_steps=2", "train.log_every_steps=1",
                                                "train.use_gpu=true", "train.cpus_per_worker=1",
                                                "train.compile=true"])
    summary = run_pretrain(str(tmp / "prep"), str(tmp_path / "run"), cfg)
    assert summary["device"] == "cuda" and summary["final_step"] == 2
    load_model_dir(str(tmp_path / "run" / "model"))  # raises on missing/unexpected names


def test_a_checkpoints_rng_restores_the_devices_dropout_draws(tmp_path):
    """Dropout on a GPU draws from the device's generator: a resume must restore it too."""
    from egecmp_ray.train import checkpoint as ckpt

    gen = torch.Generator().manual_seed(1)
    torch.cuda.manual_seed(7)
    torch.rand(3, device="cuda")
    ckpt.save_rng(tmp_path / "rng.pt", gen)
    after = torch.rand(5, device="cuda")
    torch.cuda.manual_seed(0)  # a restarted worker seeds afresh
    ckpt.load_rng(tmp_path / "rng.pt", gen)
    assert torch.equal(torch.rand(5, device="cuda"), after)
