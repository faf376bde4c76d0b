"""Model cost: forward+backward samples/s on CPU for the tiny and small presets (all losses,
graph included), and FLOPs per sample for the paper preset (so GPU MFU = samples/s x FLOPs
per sample / peak FLOP/s can be computed on any card).

    python benchmarks/bench_model.py            # -> results/bench_model.json + .md
    python benchmarks/bench_model.py --quick    # fewer steps: checks it runs

FLOPs are counted by ``torch.utils.flop_counter`` (matmuls and attention; element-wise ops are
not counted), for one training step (forward + backward of every loss) and for ``encode``.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from egecmp_ray.benchmarking import bench_parser, write_results
from egecmp_ray.config import load_config
from egecmp_ray.model.egecmp import EGECMP, TokenIds, parameter_counts
from egecmp_ray.model.pretraining import pretrain_losses
from egecmp_ray.model.samples import random_batch, random_graph


def build(preset: str, config: str | None) -> EGECMP:
    cfg = load_config(config, preset=preset)
    torch.manual_seed(0)
    return EGECMP(cfg.model, TokenIds(cfg.model.vocab_size))


def train_rate(model: EGECMP, batch_size: int, steps: int) -> dict[str, float]:
    """Forward + backward (+ AdamW step) of all losses on a fixed random batch."""
    batch, graph = random_batch(model, batch_size), random_graph(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for step in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        loss = pretrain_losses(model, batch, graph, torch.Generator().manual_seed(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step_s = sorted(times[2:])[len(times[2:]) // 2]  # median: the machine is shared
    return {"step_s": round(step_s, 4), "samples_per_s": round(batch_size / step_s, 1)}


def flops(model: EGECMP, batch_size: int) -> dict[str, float]:
    batch, graph = random_batch(model, batch_size), random_graph(model)
    with FlopCounterMode(display=False) as counter:
        pretrain_losses(model, batch, graph, torch.Generator().manual_seed(0))["loss"].backward()
    train = counter.get_total_flops()
    # nn.TransformerEncoder's eval fast path is a fused kernel the counter cannot see.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            model.encode(batch)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return {"train_flops_per_sample": train / batch_size,
            "encode_flops_per_sample": counter.get_total_flops() / batch_size}


def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    steps = 3 if args.quick else 20
    torch.set_num_threads(max(1, torch.get_num_threads()))

    rows = []
    for preset in ("tiny", "small", "paper"):
        model = build(preset, args.config)
        # paper: FLOPs at batch 16 (graph losses cost per batch, not per sample; 16 keeps
        # that share near a real batch's while the count runs on 2 CPU cores in ~30 s)
        micro = 16 if preset == "paper" else load_config(args.config, preset=preset).train.micro_batch
        row = {"preset": preset, "parameters": parameter_counts(model)["total"],
               "batch": micro, "threads": torch.get_num_threads()}
        if preset != "paper":
            row.update(train_rate(model, micro, steps))
        row.update({k: f"{v:.3e}" for k, v in flops(model, micro).items()})
        rows.append(row)
        print(row, flush=True)

    by = {r["preset"]: r for r in rows}
    summary = {
        "samples_per_s_tiny": by["tiny"]["samples_per_s"],
        "samples_per_s_small": by["small"]["samples_per_s"],
        "flops_per_sample_paper": float(by["paper"]["train_flops_per_sample"]),
        "encode_flops_per_sample_paper": float(by["paper"]["encode_flops_per_sample"]),
    }
    columns = ["preset", "parameters", "batch", "threads", "step_s", "samples_per_s",
               "train_flops_per_sample", "encode_flops_per_sample"]
    path = write_results(args.out, "model", rows, summary, columns, notes=(
        "samples/s: forward + backward + AdamW step of all the losses (graph losses on a "
        "random 40-node graph) on CPU, median step. FLOPs: torch.utils.flop_counter, one "
        "training step (fwd+bwd) and one encode, per sample at the row's batch. "
        "MFU on a GPU = samples/s x train_flops_per_sample / peak FLOP/s."))
    print(f"bench_model: tiny {summary['samples_per_s_tiny']} samples/s, small "
          f"{summary['samples_per_s_small']} samples/s, paper "
          f"{summary['flops_per_sample_paper']:.3e} FLOPs/sample (train) -> {path}")


if __name__ == "__main__":
    main()
