"""Preprocess throughput: 1 vs 2 CPU workers, driver memory at 100k vs 400k rows, and the same
per-row functions in one plain Python process (so Ray Data's overhead shows as a ratio) and in
two at once (what the machine's cores give this work without Ray).

Each pipeline run is `egecmp preprocess` in its own process with its own local Ray cluster
(EGECMP_NUM_CPUS=1 or 2); rows/s come from its manifest (cluster start excluded), peak RSS
from sampling the driver process.

    python benchmarks/bench_preprocess.py            # synth 400k rows, then 7 pipeline runs (~30 min)
    python benchmarks/bench_preprocess.py --quick    # 2k / 4k rows: checks it runs
"""

from __future__ import annotations

import json
import os
from collections import Counter
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from egecmp_ray.benchmarking import bench_parser, run_measured, write_results
from egecmp_ray.config import load_config
from egecmp_ray.data.synth import generate_rows
from egecmp_ray.data.sources import tag_parquet_batch
from egecmp_ray.data.validate import Limits, quarantine_batch
from egecmp_ray.entities.encode import (encode_batch, encode_work_batch, text_batch, work_batch,
                                        write_vocab)
from egecmp_ray.entities.graph import make_vocab
from egecmp_ray.entities.preprocess import GRID_FEATURISE
from egecmp_ray.entities.regions import region_batch
from egecmp_ray.entities.tokenizer import save_tokenizer, train_wordpiece


# Stages that do not spread over workers: the WordPiece build on the driver, the wait for the
# entity-graph task after pass 2, and two distributed stages that barely speed up from 1 to 2
# workers (200k rows, 2026-11-28 04:21, 1 -> 2 workers: repeated ids 7.1 -> 8.3 s, counts 11.3
# -> 8.9 s): short shuffles whose time is mostly task and shuffle start-up, not rows.
SERIAL_STAGES = ("repeated ids", "counts: entities, pairs, words", "tokenizer",
                 "entity graph: wait after pass 2")


def plain_python(cfg, rows: int, work: Path) -> dict[str, float]:
    """Per-core rates of the per-row functions the pipeline runs, without Ray."""
    table, _ = generate_rows(cfg.data, "train", 0, rows)
    batch = {k: np.array(table[k].to_pylist() + [None], dtype=object)[:-1] for k in table.column_names}
    vocab_dir = work / "plain_vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    text = text_batch(batch, cfg.entities)  # also warms jieba
    save_tokenizer(train_wordpiece(text["title"].to_pylist(), cfg.model.vocab_size), vocab_dir)
    counts = Counter(e for ents in text["entities"].to_pylist() for e in ents)
    write_vocab(vocab_dir / "entities.tsv", make_vocab(list(counts.items()), cfg.entities.min_count))

    text_only = dict(batch, image=np.array([None] * rows, dtype=object))
    encode_batch({k: v[:50] for k, v in batch.items()}, cfg.entities, str(vocab_dir))  # warm caches

    def best_of_3(fn) -> float:  # the least disturbed of three runs (the machine is shared)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    # clean + entities + tokens (regions of image-less rows are only zeros)
    text_s = best_of_3(lambda: encode_batch(text_only, cfg.entities, str(vocab_dir)))
    image_s = best_of_3(lambda: region_batch(list(batch["image"])))
    full_s = best_of_3(both_passes(cfg, table, vocab_dir))
    return {"text_rows_per_s": rows / text_s, "image_rows_per_s": rows / image_s,
            "full_rows_per_s": rows / full_s}


def both_passes(cfg, table: pa.Table, vocab_dir: Path):
    """What the pipeline runs a row through (quarantine aside), as one call over ``table``."""
    tagged = tag_parquet_batch(table, pa.array([f"plain:{i}" for i in range(len(table))], pa.string()))
    limits = Limits.from_config(cfg.data)

    def run() -> None:
        good = quarantine_batch(tagged, limits, None, {}, GRID_FEATURISE)
        work = work_batch(numpy_batch(good), cfg.entities)
        encode_work_batch(numpy_batch(work), cfg.entities, str(vocab_dir))
    return run


def _timed_process(config, rows: int, vocab_dir: str, start, seconds) -> None:
    """One plain process of ``hardware_scaling``: both passes over ``rows`` rows, twice."""
    cfg = load_config(config)
    run = both_passes(cfg, generate_rows(cfg.data, "train", 0, rows)[0], Path(vocab_dir))
    run()  # warm (jieba, tokenizer caches)
    start.wait()  # the processes of a round start their timed work together
    t0 = time.perf_counter()
    run()
    run()
    seconds.put(time.perf_counter() - t0)


def hardware_scaling(config, rows: int, work: Path) -> dict[str, float]:
    """The machine's own 2-core scaling for this work: the per-row functions in 1 plain
    process, then in 2 at once (no Ray, nothing shared), in the order 1, 2, 2, 1. What a
    2-worker pipeline could reach here if Ray cost nothing (vCPUs may share a host core)."""
    import importlib
    import multiprocessing as mp

    # The child's target by its module name: run as a script or through `egecmp bench`
    # (runpy), this file's own functions live in a __main__ a spawned process cannot import.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    target = importlib.import_module("bench_preprocess")._timed_process
    ctx = mp.get_context("spawn")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for n in (1, 2, 2, 1):
        start, seconds = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=target,
                             args=(config, rows, str(work / "plain_vocab"), start, seconds))
                 for _ in range(n)]
        for proc in procs:
            proc.start()
        rates[n].append(sum(2 * rows / seconds.get() for _ in procs))
        for proc in procs:
            proc.join()
    one, two = (sum(v) / len(v) for v in (rates[1], rates[2]))
    return {"plain_rows_per_s_1proc": round(one, 1), "plain_rows_per_s_2proc": round(two, 1),
            "hardware_2proc_efficiency": round(two / (2 * one), 3)}


def numpy_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """A table as Ray Data's numpy batch format gives it (tensor columns as ndarrays)."""
    out = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        out[name] = (column.to_numpy_ndarray() if isinstance(column.type, pa.FixedShapeTensorType)
                     else np.array(column.to_pylist() + [None], dtype=object)[:-1])
    return out


def subset(synth: Path, rows: int, dest: Path) -> Path:
    """A Parquet directory holding the first ``rows`` rows (whole shards) of a synth output."""
    import pyarrow.parquet as pq

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    total = 0
    for path in sorted(synth.glob("*/part-*.parquet")):
        if total >= rows:
            break
        (dest / f"{path.parent.name}-{path.name}").symlink_to(path)
        total += pq.read_metadata(path).num_rows
    return dest


def pipeline(input_dir: Path, out: Path, cpus: int, config: str | None, pinned: bool = False) -> dict:
    """One ``egecmp preprocess`` run on a local cluster of ``cpus`` CPUs; ``pinned``: the whole
    process tree (driver, raylet, GCS, dashboard, workers) confined to that many cores."""
    cmd = [sys.executable, "-m", "egecmp_ray", "preprocess", "--input", str(input_dir),
           "--out", str(out), "--log-level", "WARNING"] + (["--config", config] if config else [])
    r = run_measured(cmd, env={"EGECMP_NUM_CPUS": str(cpus)},
                     cores=set(sorted(os.sched_getaffinity(0))[:cpus]) if pinned else None)
    m = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"rows": m["rows_in"], "workers": cpus, "pinned": pinned, "wall_s": r["wall_s"],
            "pipeline_s": m["elapsed_s"],
            "rows_per_s": m["rows_per_s"], "rows_per_s_per_core": round(m["rows_per_s"] / cpus, 1),
            "peak_rss_driver_mb": r["peak_rss_driver_mb"], "peak_rss_tree_mb": r["peak_rss_tree_mb"],
            "entities": m["entities"], "stages_s": m["timings_s"]}


def _summed(runs: list[dict]) -> dict:
    """Pipeline and stage seconds of same-size runs added up (an ABBA pair's one side)."""
    stages: dict[str, float] = {}
    for r in runs:
        for k, v in r["stages_s"].items():
            stages[k] = stages.get(k, 0.0) + v
    return {"pipeline_s": sum(r["pipeline_s"] for r in runs), "stages_s": stages}


def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-prep-"))
    try:
        run(args, work)
    finally:  # a temp dir of its own goes (400k synthetic rows are ~1 GB); --work stays
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    cfg = load_config(args.config)
    scale, small, big = (2_000, 1_000, 4_000) if args.quick else (200_000, 100_000, 400_000)

    synth = work / "synth"
    synth_cmd = [sys.executable, "-m", "egecmp_ray", "synth", "--rows", str(big), "--out", str(synth),
                 "--log-level", "WARNING"] + (["--config", args.config] if args.config else [])
    run_measured(synth_cmd)  # resumes if an earlier run left it complete

    # 1 vs 2 workers in the order 2, 1, ..., 1, 2 (ABBA): this host drifts by 10-15% within
    # minutes (the same 1-worker run: 170 s, then 195 s), and with each side's two runs centred
    # on the same moment a linear drift cancels out of their sums. The pinned run, the driver
    # memory runs and the plain process sit between.
    at_scale = subset(synth, scale, work / f"in_{scale}")
    plan = [("2w a", at_scale, 2, False), ("1w a", at_scale, 1, False),
            ("1w pinned", at_scale, 1, True),
            ("2w small", subset(synth, small, work / f"in_{small}"), 2, False),
            ("2w big", synth, 2, False), ("1w b", at_scale, 1, False),
            ("plain", None, 0, False), ("2w b", at_scale, 2, False)]
    runs: dict[str, dict] = {}
    rows = []
    for name, input_dir, cpus, pinned in plan:
        if name == "plain":  # the same per-row functions in this one process, beside 1w b
            plain = plain_python(cfg, 300 if args.quick else 3000, work)
            print("plain python:", {k: round(v, 1) for k, v in plain.items()}, flush=True)
            hardware = hardware_scaling(args.config, 200 if args.quick else 2000, work)
            print("plain processes, 1 vs 2:", hardware, flush=True)
            continue
        runs[name] = pipeline(input_dir, work / "p", cpus, args.config, pinned)
        rows.append({"run": name, **runs[name]})
        print({k: v for k, v in rows[-1].items() if k != "stages_s"}, flush=True)
        write_results(args.out, "preprocess", rows, {"complete": False}, list(rows[0]))
    one_runs, two_runs = [runs["1w a"], runs["1w b"]], [runs["2w a"], runs["2w b"]]
    one, two = _summed(one_runs), _summed(two_runs)
    one_pinned = runs["1w pinned"]
    # Amdahl: the stages where only the driver (or one task) works bound the 2-worker speed-up.
    serial_s = sum(one["stages_s"].get(k, 0.0) for k in SERIAL_STAGES)
    serial = serial_s / one["pipeline_s"]
    summary = {
        "scaling_efficiency": round(one["pipeline_s"] / (2 * two["pipeline_s"]), 3),
        # each adjacent pair alone (2w a then 1w a; 1w b then 2w b): how far drift moves it
        "scaling_efficiency_pairs": [round(o["pipeline_s"] / (2 * t["pipeline_s"]), 3)
                                     for o, t in zip(one_runs, two_runs)],
        # the machine's own 2-core scaling for this work (no Ray) and the share of it reached
        **hardware,
        "scaling_vs_hardware": round(one["pipeline_s"] / (2 * two["pipeline_s"])
                                     / hardware["hardware_2proc_efficiency"], 3),
        # the same, against 1 worker whose control plane shares its one core (as the 2-worker
        # run's shares its two) instead of running free on the machine's other core:
        # pinned s / (2 x the mean 2-worker s)
        "scaling_efficiency_1w_pinned": round(one_pinned["pipeline_s"] / two["pipeline_s"], 3),
        "control_plane_cost_1w": round(1 - runs["1w a"]["pipeline_s"] / one_pinned["pipeline_s"], 3),
        "serial_fraction_1w": round(serial, 3),
        "amdahl_efficiency_bound_2w": round(1 / (2 * (serial + (1 - serial) / 2)), 3),
        # each stage's own 2-vs-1-worker efficiency: where the rest of the loss is
        "stage_efficiency": {k: round(v / (2 * two["stages_s"][k]), 3)
                             for k, v in one["stages_s"].items()
                             if two["stages_s"].get(k, 0) > 1.0 and v > 1.0},
        "rows_per_s_1w": round(2 * scale / one["pipeline_s"], 1),
        "rows_per_s_2w": round(2 * scale / two["pipeline_s"], 1),
        "text_rows_per_s_per_core": round(plain["text_rows_per_s"], 1),
        "image_rows_per_s_per_core": round(plain["image_rows_per_s"], 1),
        "plain_python_rows_per_s": round(plain["full_rows_per_s"], 1),
        "ray_1w_vs_plain_ratio": round(runs["1w b"]["rows_per_s"] / plain["full_rows_per_s"], 3),
        f"peak_rss_mb_{small // 1000}k": runs["2w small"]["peak_rss_driver_mb"],
        f"peak_rss_mb_{big // 1000}k": runs["2w big"]["peak_rss_driver_mb"],
    }
    path = write_results(
        args.out, "preprocess", rows, summary,
        ["run", "rows", "workers", "pinned", "wall_s", "pipeline_s", "rows_per_s", "rows_per_s_per_core",
         "peak_rss_driver_mb", "peak_rss_tree_mb", "entities", "stages_s"],
        notes=("text_/image_rows_per_s_per_core time the per-row functions (clean + entities + "
               "tokens; grid regions) in one plain Python process; plain_python_rows_per_s runs "
               "a row through both passes' functions there (validation with one image decode "
               "that also makes the regions, entities, tokens). Pipeline rows/s cover both "
               "passes (the input is read and validated once), the groupby aggregations, "
               "tokenizer and graph; cluster start excluded. "
               "scaling_efficiency = 2-worker rows/s / (2 x 1-worker rows/s), each side the sum "
               "of its two runs, taken in the order 2w a, 1w a, ..., 1w b, 2w b so that a linear "
               "drift of the host cancels (scaling_efficiency_pairs: each adjacent pair alone); "
               "both include the serial steps. hardware_2proc_efficiency: the same per-row "
               "functions in 1 plain process, then 2 at once (no Ray), rows/s of 2 / (2 x 1): "
               "what this machine's two vCPUs give this work; scaling_vs_hardware = "
               "scaling_efficiency / that. The 1-worker run has a Ray CPU of 1 on a 2-core machine, so its "
               "driver, raylet, GCS and dashboard run on the idle second core, while the "
               "2-worker run's share its two cores with the workers: scaling_efficiency_1w_pinned "
               "divides by a 1-worker run pinned (its whole process tree) to one core instead, "
               "and control_plane_cost_1w is the rows/s that pinning costs 1 worker. "
               "serial_fraction_1w: the 1-worker run's share in the stages that do "
               "not spread (repeated ids and counts: short shuffles measured not to speed up; "
               "the driver's WordPiece build; the wait for the entity-graph task, which runs "
               "the kNN, context edges and GAE as one Ray task beside pass 2); "
               "amdahl_efficiency_bound_2w = 1 / (2 (s + (1 - s) / 2)), the efficiency that "
               "serial share allows; stage_efficiency: each stage's 1-worker seconds / (2 x "
               "its 2-worker seconds)."))
    print(f"bench preprocess: {summary} -> {path}")


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
