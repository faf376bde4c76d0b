"""Model cost: forward+backward samples/s on CPU for the tiny and small presets (all losses,
graph included), and FLOPs per sample for the paper preset (so GPU MFU = samples/s x FLOPs
per sample / peak FLOP/s can be computed on any card). With ``--gpu``, the paper preset's
training step on the CUDA device in bf16 at several batch sizes (autocast over fp32 weights,
or bf16 weights with fp32 master copies; eager, or the forward under ``torch.compile``), and
its MFU against the card's dense bf16 peak.

    python benchmarks/bench_model.py            # -> results/bench_model.json + .md
    python benchmarks/bench_model.py --quick    # fewer steps: checks it runs
    python benchmarks/bench_model.py --gpu      # -> results/bench_model_gpu.json + .md
    python benchmarks/bench_model.py --gpu --compile --precision bf16 --batches 1024
                                                # -> results/bench_model_gpu_bf16.json + .md

FLOPs are counted by ``torch.utils.flop_counter`` (matmuls and attention; element-wise ops are
not counted), for one training step (forward + backward of every loss) and for ``encode``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

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


def train_rate(model: EGECMP, batch_size: int, steps: int, gpu: bool = False,
               compiled: bool = False, bf16_weights: bool = False) -> dict[str, float]:
    """Forward + backward (+ AdamW step) of all losses on a fixed random batch, median step.
    With ``gpu``: on the CUDA device, bf16 autocast over fp32 weights, fused AdamW, each step
    timed between CUDA synchronisations, and the peak memory. With ``compiled``: the model's
    forward through ``torch.compile`` (the losses stay eager), and the seconds the first step
    took (compilation). With ``bf16_weights``: as DeepSpeed's bf16 mode trains, forward and
    backward on bf16 weights (no autocast casts), AdamW on fp32 master copies that are copied
    back after each step."""
    device = torch.device("cuda" if gpu else "cpu")
    model = model.to(device).train()
    model.zero_grad(set_to_none=True)  # nothing carried over from an earlier pass
    if compiled:
        model.forward = torch.compile(model.forward, dynamic=False)
    batch = {k: v.to(device) for k, v in random_batch(model, batch_size).items()}
    graph = random_graph(model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    master = params
    if bf16_weights:
        model.to(torch.bfloat16)
        master = [p.detach().float().requires_grad_() for p in params]
    opt = torch.optim.AdamW(master, lr=1e-4, fused=gpu or None)
    autocast = gpu and not bf16_weights
    if gpu:
        torch.cuda.reset_peak_memory_stats()  # peak_mem_gb: the training steps' own
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    warm = 3 if gpu else 2  # warm-up steps (on a GPU also cuBLAS heuristics, the allocator)
    times = []
    for step in range(steps + warm):
        sync()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            loss = pretrain_losses(model, batch, graph, torch.Generator().manual_seed(step))["loss"]
        opt.zero_grad()
        loss.backward()
        if bf16_weights:
            for m, p in zip(master, params):
                m.grad, p.grad = None if p.grad is None else p.grad.float(), None
        opt.step()
        if bf16_weights:
            with torch.no_grad():
                torch._foreach_copy_(params, master)
        sync()
        times.append(time.perf_counter() - t0)
    # the upper median on CPU (the machine is shared), as the committed CPU figures were taken
    step_s = (statistics.median if gpu else statistics.median_high)(times[warm:])
    out = {"step_s": round(step_s, 4), "samples_per_s": round(batch_size / step_s, 1)}
    if compiled:
        out["first_step_s"] = round(times[0], 1)
    if gpu:
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


# Dense bf16 tensor-core peak (no sparsity) by device name, most specific first; --peak-tflops
# overrides it for a card not listed.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1),
                    ("L4", 121.0), ("A10", 125.0))


def peak_bf16_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def gpu_main(args) -> None:
    """``--gpu``: the paper preset on the CUDA device, MFU per batch size."""
    if not torch.cuda.is_available():
        raise SystemExit("bench_model --gpu: no CUDA device (torch.cuda.is_available() is False)")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or peak_bf16_tflops(name)
    steps = 3 if args.quick else 20
    rows: list[dict] = []

    def save() -> tuple[Path, dict]:  # after every row: a run cut off keeps what it measured
        timed = [r for r in rows if "mfu" in r]
        best = max(timed, key=lambda r: r["samples_per_s"]) if timed else {}
        eager = max((r for r in timed if r["forward"] == "eager"),
                    key=lambda r: r["samples_per_s"], default={})
        summary = {"device": name, "peak_bf16_tflops": peak, "best_batch": best.get("batch"),
                   "best_forward": best.get("forward"),
                   "samples_per_s_paper": best.get("samples_per_s"),
                   "mfu_paper": best.get("mfu"), "mfu_paper_eager": eager.get("mfu")}
        columns = list(dict.fromkeys(k for r in rows for k in r))
        suffix = "" if args.precision == ["autocast"] else "_" + "_".join(args.precision)
        return write_results(args.out, "model_gpu" + suffix, rows, summary, columns, notes=(
            "Paper preset, all the losses (graph losses on a random 40-node graph), one "
            "training step = forward + backward + fused AdamW under bf16 autocast over fp32 "
            "weights (or on bf16 weights with fp32 master copies, DeepSpeed's bf16 mode), "
            "median of the timed steps between CUDA synchronisations. MFU = "
            "samples/s x counted training FLOPs per sample (torch.utils.flop_counter: matmuls "
            f"and attention) / the card's dense bf16 peak ({peak} TFLOP/s). torch.compile "
            "rows: the model's forward compiled by inductor (dynamic=False; its backward "
            "follows), the losses and AdamW eager; first_step_s includes the compilation. "
            "peak_mem_gb: the timed training steps' peak allocation.")), summary

    runs = [(b, c, w == "bf16") for w in args.precision
            for c in ((False, True) if args.compile else (False,)) for b in args.batches]
    for batch_size, compiled, bf16_weights in runs:
        row = {"preset": "paper", "device": name,
               "dtype": "bf16 weights, fp32 master" if bf16_weights else "bf16 autocast",
               "forward": "torch.compile" if compiled else "eager", "batch": batch_size}
        model = build("paper", args.config).cuda()
        try:
            counted = flops(model, batch_size, autocast=True)["train_flops_per_sample"]
            row.update(train_rate(model, batch_size, steps, gpu=True, compiled=compiled,
                                  bf16_weights=bf16_weights))
            row["train_flops_per_sample"] = f"{counted:.3e}"
            achieved = row["samples_per_s"] * counted
            row["tflops"] = round(achieved / 1e12, 1)
            row["mfu"] = round(achieved / (peak * 1e12), 4) if peak else None
        except torch.cuda.OutOfMemoryError:
            row["step_s"] = "out of memory"
        rows.append(row)
        print(row, flush=True)
        path, summary = save()
        del model
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    print(f"bench_model --gpu: {summary} -> {path}")


def flops(model: EGECMP, batch_size: int, autocast: bool = False) -> dict[str, float]:
    """Counted FLOPs per sample of one training step and of ``encode``. ``autocast``: under
    CUDA bf16 autocast (the same count; about half the fp32 pass's memory, so a batch that
    trains also counts). Leaves no gradients behind."""
    device = model.device_of()
    batch = {k: v.to(device) for k, v in random_batch(model, batch_size).items()}
    graph = random_graph(model).to(device)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if autocast
           else contextlib.nullcontext())
    with FlopCounterMode(display=False) as counter, amp:
        pretrain_losses(model, batch, graph, torch.Generator().manual_seed(0))["loss"].backward()
    train = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
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
    parser.add_argument("--gpu", action="store_true",
                        help="the paper preset on the CUDA device in bf16: samples/s and MFU")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256],
                        help="--gpu: batch sizes to time [default: 64 128 256]")
    parser.add_argument("--compile", action="store_true",
                        help="--gpu: also time each batch with the forward under torch.compile")
    parser.add_argument("--precision", nargs="+", choices=("autocast", "bf16"),
                        default=["autocast"],
                        help="--gpu: autocast = bf16 autocast over fp32 weights; bf16 = bf16 "
                             "weights with fp32 master copies for AdamW, as DeepSpeed's bf16 "
                             "mode trains [default: autocast]")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="--gpu: the card's dense bf16 peak, TFLOP/s [default: by its name]")
    args = parser.parse_args()
    if args.gpu:
        return gpu_main(args)
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
