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
from torch.profiler import record_function
from torch.utils.flop_counter import FlopCounterMode

from egecmp_ray.benchmarking import bench_parser, write_results
from egecmp_ray.config import load_config
from egecmp_ray.model.egecmp import EGECMP, TokenIds, parameter_counts
from egecmp_ray.model.pretraining import PHASES, pretrain_losses
from egecmp_ray.model.samples import random_batch, random_graph


def build(preset: str, config: str | None) -> EGECMP:
    cfg = load_config(config, preset=preset)
    torch.manual_seed(0)
    return EGECMP(cfg.model, TokenIds(cfg.model.vocab_size))


def training_step(model: EGECMP, batch_size: int, gpu: bool = False, compiled: bool = False,
                  bf16_weights: bool = False):
    """One training step of all losses on a fixed random batch, as ``step(i)``: forward +
    backward + AdamW. With ``gpu``: on the CUDA device, bf16 autocast over fp32 weights,
    fused AdamW. With ``compiled``: the model's forward through ``torch.compile`` (the losses
    stay eager). With ``bf16_weights``: as DeepSpeed's bf16 mode trains, forward and backward
    on bf16 weights (no autocast casts), AdamW on fp32 master copies that are copied back
    after each step. ``train_rate`` times it; ``--profile`` traces it."""
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

    def step(i: int) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            loss = pretrain_losses(model, batch, graph, torch.Generator().manual_seed(i))["loss"]
        with record_function(STEP_PHASES[0]):
            opt.zero_grad()
            loss.backward()
        with record_function(STEP_PHASES[1]):
            if bf16_weights:
                for m, p in zip(master, params):
                    m.grad, p.grad = None if p.grad is None else p.grad.float(), None
            opt.step()
            if bf16_weights:
                with torch.no_grad():
                    torch._foreach_copy_(params, master)
    return step


STEP_PHASES = ("step.backward", "step.optimizer")


def train_rate(model: EGECMP, batch_size: int, steps: int, gpu: bool = False,
               compiled: bool = False, bf16_weights: bool = False,
               profile_to: Path | None = None) -> dict[str, float]:
    """``training_step``'s median step time over ``steps`` after warm-up (on a GPU between
    CUDA synchronisations, with the peak memory; compiled: also the seconds the first step
    took, the compilation). ``profile_to``: then a torch.profiler trace of 3 more steps,
    summarised there by kernel kind (``profile_steps``)."""
    step = training_step(model, batch_size, gpu, compiled, bf16_weights)
    if gpu:
        torch.cuda.reset_peak_memory_stats()  # peak_mem_gb: the training steps' own
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    warm = 3 if gpu else 2  # warm-up steps (on a GPU also cuBLAS heuristics, the allocator)
    times = []
    for i in range(steps + warm):
        sync()
        t0 = time.perf_counter()
        step(i)
        sync()
        times.append(time.perf_counter() - t0)
    # the upper median on CPU (the machine is shared), as the committed CPU figures were taken
    step_s = (statistics.median if gpu else statistics.median_high)(times[warm:])
    out = {"step_s": round(step_s, 4), "samples_per_s": round(batch_size / step_s, 1)}
    if compiled:
        out["first_step_s"] = round(times[0], 1)
    if gpu:
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if profile_to is not None:
        out.update(profile_steps(step, sync, gpu, profile_to))
    return out


# Kernel kinds by name fragment, first match wins (attention before matmul: the
# memory-efficient attention kernels are CUTLASS kernels).
KERNEL_KINDS = (("attention", ("fmha", "flash", "attention", "sdpa", "attn")),
                ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "wgmma", "cublas", "sm90_")),
                ("optimizer", ("adam", "multi_tensor_apply")),
                ("copy/fill", ("memcpy", "memset", "copy", "fill")),
                ("fused (inductor)", ("triton_",)),
                ("norm/softmax/reduce", ("layer_norm", "softmax", "reduce", "norm", "cross_entropy",
                                         "nll_loss", "log_softmax", "sum", "mean")),
                ("index/sort/scatter", ("index", "scatter", "gather", "sort", "unique", "nonzero",
                                        "radix", "masked", "cub::")))


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)),
                "elementwise/other")


def profile_steps(step, sync, gpu: bool, path: Path, steps: int = 3) -> dict[str, float]:
    """Trace ``steps`` training steps with torch.profiler and write, to ``path`` (markdown),
    the device time per kernel kind and the 25 costliest kernels. Returns the device-busy
    fraction (kernel time / wall time: under 1 means the GPU waited on the host)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    sync()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(1000 + i)
        sync()
        wall_us = (time.perf_counter() - t0) * 1e6
    labels = PHASES + STEP_PHASES  # their device-side ranges are annotations, not kernels
    kernels = [e for e in prof.key_averages()
               if getattr(e, "device_type", None) == DeviceType.CUDA
               and e.self_device_time_total > 0 and e.key not in labels] if gpu else []
    total = sum(e.self_device_time_total for e in kernels) or 1.0
    kinds: dict[str, list[float]] = {}
    for e in kernels:
        k = kinds.setdefault(kernel_kind(e.key), [0.0, 0])
        k[0] += e.self_device_time_total
        k[1] += e.count
    host = [e for e in prof.key_averages() if getattr(e, "device_type", None) == DeviceType.CPU]
    waits = sum(e.self_cpu_time_total for e in host if "Synchronize" in e.key)
    syncs = sum(e.count for e in host if e.key in ("aten::item", "aten::nonzero",
                                                   "aten::_local_scalar_dense"))
    idle = idle_by_phase(prof.events(), labels)
    lines = [f"# profile: {path.stem}", "",
             f"{steps} steps, wall {wall_us / steps / 1e3:.1f} ms a step, kernels "
             f"{total / steps / 1e3:.1f} ms a step (busy {total / wall_us:.3f}); host waits in "
             f"CUDA synchronisation {waits / steps / 1e3:.1f} ms a step, {syncs // steps} "
             "item/nonzero calls a step", "",
             "| kind | ms a step | share | kernels a step |", "|---|---|---|---|"]
    for kind, (us, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {kind} | {us / steps / 1e3:.2f} | {us / total:.3f} | {n // steps} |")
    lines += ["", "Device idle (no kernel running) by the host phase it fell in:", "",
              "| phase | idle ms a step |", "|---|---|"]
    lines += [f"| {ph} | {us / steps / 1e3:.2f} |" for ph, us in idle.items()]
    lines += ["", "| kernel | kind | ms a step | calls a step |", "|---|---|---|---|"]
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:25]:
        lines.append(f"| `{e.key[:110]}` | {kernel_kind(e.key)} | "
                     f"{e.self_device_time_total / steps / 1e3:.2f} | {e.count // steps} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:16]), flush=True)
    return {"gpu_busy": round(total / wall_us, 3),
            **{f"idle_ms_{ph.split('.')[-1]}": round(us / steps / 1e3, 2)
               for ph, us in idle.items()}}


def idle_by_phase(events, phases: tuple[str, ...]) -> dict[str, float]:
    """Device idle time (gaps between kernels, µs) by the labelled host range (``phases``)
    open when each gap began: the phase whose host work kept the device waiting."""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == DeviceType.CUDA and e.name not in phases)
    ranges = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                    if e.device_type == DeviceType.CPU and e.name in phases)
    out = {ph: 0.0 for ph in phases}
    out["other"] = 0.0
    if not spans:
        return out
    busy_until = spans[0][1]
    for start, end in spans[1:]:
        if start > busy_until:
            phase = next((name for r0, r1, name in ranges if r0 <= busy_until < r1), "other")
            out[phase] += start - busy_until
        busy_until = max(busy_until, end)
    return out


def matmul_ceiling(tokens: int, width: int, ffn: int, reps: int = 20) -> dict[str, float]:
    """bf16 TFLOP/s of the paper preset's own GEMM shapes on random data ([tokens, width] x
    [width, width | ffn] and [tokens, ffn] x [ffn, width]): what its matmuls can reach on this
    card, against which the MFU is read."""
    out = {}
    for k, n in ((width, width), (width, ffn), (ffn, width)):
        a = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        seconds = cuda_ms(lambda: a @ b, reps) / 1e3
        out[f"gemm_{k}x{n}_tflops"] = round(2 * tokens * k * n / seconds / 1e12, 1)
    return out


def cuda_ms(fn, reps: int, warm: int = 3) -> float:
    """Median milliseconds of ``fn()`` on the CUDA device over ``reps`` calls after ``warm``
    untimed ones, each timed between its own CUDA events."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


ATTENTION = ("auto", "cudnn", "flash", "efficient", "math")


def use_attention(backend: str) -> None:
    """Restrict scaled_dot_product_attention to one CUDA backend (math stays on as the
    fallback for calls the chosen one cannot take); ``auto``: PyTorch's own choice."""
    if backend == "auto":
        return
    cuda = torch.backends.cuda
    cuda.enable_cudnn_sdp(backend == "cudnn")
    cuda.enable_flash_sdp(backend == "flash")
    cuda.enable_mem_efficient_sdp(backend == "efficient")
    cuda.enable_math_sdp(True)


def attention_timings(batch: int, reps: int = 10) -> dict[str, float]:
    """Forward + backward ms of one attention call at the paper preset's shapes (bf16, a
    key-padding mask, dropout 0.1) per SDPA backend, and the math backend under
    torch.compile: which kernel suits these short sequences."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    shapes = {"cross_h8_l73_d96": (8, 73, 73, 96), "text_h12_l36_d64": (12, 36, 36, 64),
              "coattn_h8_l36x37_d64": (8, 36, 37, 64)}
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "math": SDPBackend.MATH}

    def attend(q, k, v, keep):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=0.1)

    out = {}
    for shape, (heads, lq, lk, d) in shapes.items():
        def draw(length: int) -> torch.Tensor:
            return torch.randn(batch, heads, length, d, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True)

        q, k, v = draw(lq), draw(lk), draw(lk)
        lengths = torch.randint(6, lk + 1, (batch, 1), device="cuda")
        keep = (torch.arange(lk, device="cuda")[None] < lengths)[:, None, None, :]
        grad = torch.randn(batch, heads, lq, d, device="cuda", dtype=torch.bfloat16)
        variants = [(name, be, attend) for name, be in backends.items()]
        variants.append(("math_compiled", SDPBackend.MATH, torch.compile(attend, dynamic=False)))
        for name, be, fn in variants:
            try:
                with sdpa_kernel([be]):
                    ms = cuda_ms(lambda: fn(q, k, v, keep).backward(grad), reps)
                out[f"attn_{shape}_{name}_ms"] = round(ms, 3)
            except RuntimeError as err:  # a backend that cannot take this call
                out[f"attn_{shape}_{name}_ms"] = f"n/a: {str(err)[:60]}"
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
    use_attention(args.attention)
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or peak_bf16_tflops(name)
    steps = args.steps or (3 if args.quick else 20)
    rows: list[dict] = []
    ceiling: dict[str, float] = {}

    def save() -> tuple[Path, dict]:  # after every row: a run cut off keeps what it measured
        timed = [r for r in rows if "mfu" in r]
        best = max(timed, key=lambda r: r["samples_per_s"]) if timed else {}
        eager = max((r for r in timed if r["forward"] == "eager"),
                    key=lambda r: r["samples_per_s"], default={})
        summary = {"device": name, "peak_bf16_tflops": peak, "best_batch": best.get("batch"),
                   "best_forward": best.get("forward"),
                   "samples_per_s_paper": best.get("samples_per_s"),
                   "mfu_paper": best.get("mfu"), "mfu_paper_eager": eager.get("mfu"), **ceiling}
        columns = list(dict.fromkeys(k for r in rows for k in r))
        suffix = ("" if args.precision == ["autocast"] else "_" + "_".join(args.precision)) + (
            "" if args.attention == "auto" else f"_{args.attention}_attention")
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

    if args.kernels:  # what this card's GEMMs and SDPA kernels reach at the preset's shapes
        cfg = load_config(args.config, preset="paper").model
        ceiling.update(matmul_ceiling(max(args.batches) * 73, cfg.hidden, cfg.text_ffn))
        ceiling.update(attention_timings(max(args.batches)))
        print(ceiling, flush=True)
    runs = [(b, c, w == "bf16") for w in args.precision for b in args.batches
            for c in ((False, True) if args.compile else (False,))]
    for batch_size, compiled, bf16_weights in runs:
        row = {"preset": "paper", "device": name,
               "dtype": "bf16 weights, fp32 master" if bf16_weights else "bf16 autocast",
               "forward": "torch.compile" if compiled else "eager", "batch": batch_size,
               "attention": args.attention}
        model = build("paper", args.config).cuda()
        try:
            counted = flops(model, batch_size, autocast=True)["train_flops_per_sample"]
            trace = (Path(args.out) / f"profile_model_gpu_{'bf16' if bf16_weights else 'autocast'}"
                     f"_{'compiled' if compiled else 'eager'}_{batch_size}_{args.attention}.md"
                     if args.profile else None)
            row.update(train_rate(model, batch_size, steps, gpu=True, compiled=compiled,
                                  bf16_weights=bf16_weights, profile_to=trace))
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
    with FlopCounterMode(display=False) as counter:  # (no fused eval fast path to hide from
        model.encode(batch)  # it: the stacks are blocks.EncoderStack, not nn.TransformerEncoder)
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
    parser.add_argument("--profile", action="store_true",
                        help="--gpu: also trace 3 steps of each row with torch.profiler "
                             "(device time by kernel kind, and device idle by host phase -> "
                             "profile_model_gpu_*.md beside the results)")
    parser.add_argument("--kernels", action="store_true",
                        help="--gpu: first time bf16 GEMMs and attention (per SDPA backend) "
                             "alone at the preset's shapes")
    parser.add_argument("--attention", choices=ATTENTION, default="auto",
                        help="--gpu: the scaled_dot_product_attention backend [default: auto, "
                             "PyTorch's choice]")
    parser.add_argument("--steps", type=int, default=None,
                        help="--gpu: timed steps a row [default: 20, --quick 3]")
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
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
