"""Synthetic generation at scale: rows/s and peak memory at 100k and 1M rows.

Each size runs `egecmp synth` as its own process (a fresh local Ray cluster), sampling the
peak RSS of the driver and of the whole process tree. The same per-row function is also timed
in one plain Python process, so Ray Data's overhead (or gain from 2 workers) is a ratio.

    python benchmarks/bench_synth.py            # 100k and 1M rows (about 20 min on 2 cores)
    python benchmarks/bench_synth.py --quick    # 2k and 10k rows: checks it runs
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from egecmp_ray.benchmarking import bench_parser, run_measured, write_results
from egecmp_ray.config import DataConfig, load_config
from egecmp_ray.data.synth import generate_rows


def plain_python_rows_per_s(cfg: DataConfig, rows: int) -> float:
    """The per-row generator in this process, no Ray: the baseline for one core."""
    generate_rows(cfg, "train", 0, 1000)  # warm caches (catalogue, signature tiles)
    t0 = time.perf_counter()
    generate_rows(cfg, "train", 1000, 1000 + rows)
    return rows / (time.perf_counter() - t0)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    args = parser.parse_args()
    cfg = load_config(args.config)
    sizes = args.sizes or ([2_000, 10_000] if args.quick else [100_000, 1_000_000])

    plain = plain_python_rows_per_s(cfg.data, 500 if args.quick else 3000)
    print(f"plain python: {plain:,.0f} rows/s on one core", flush=True)
    rows = []
    for n in sizes:
        work = Path(args.work or tempfile.mkdtemp(prefix="bench-synth-")) / f"synth_{n}"
        shutil.rmtree(work, ignore_errors=True)
        cmd = [sys.executable, "-m", "egecmp_ray", "synth", "--rows", str(n), "--out", str(work),
               "--overwrite", "--log-level", "WARNING"] + (["--config", args.config] if args.config else [])
        r = run_measured(cmd)
        manifest = json.loads((work / "manifest.json").read_text())
        disk = sum(p.stat().st_size for p in work.rglob("*.parquet"))
        shutil.rmtree(work, ignore_errors=True)
        row = {"rows": n, "wall_s": r["wall_s"], "generate_s": manifest["elapsed_s"],
               "rows_per_s": manifest["rows_per_s"],
               "peak_rss_driver_mb": r["peak_rss_driver_mb"], "peak_rss_tree_mb": r["peak_rss_tree_mb"],
               "parquet_mb": round(disk / 2**20, 1), "images": True}
        print(row, flush=True)
        rows.append(row)

    small, big = rows[0], rows[-1]
    summary = {
        "plain_python_rows_per_s": round(plain, 1),
        f"rows_per_s_{small['rows']}": small["rows_per_s"],
        f"rows_per_s_{big['rows']}": big["rows_per_s"],
        f"peak_rss_driver_mb_{small['rows']}": small["peak_rss_driver_mb"],
        f"peak_rss_driver_mb_{big['rows']}": big["peak_rss_driver_mb"],
        f"peak_rss_tree_mb_{big['rows']}": big["peak_rss_tree_mb"],
        "ray_vs_plain_ratio": round(big["rows_per_s"] / plain, 2),
        "driver_rss_growth": round(big["peak_rss_driver_mb"] / small["peak_rss_driver_mb"], 2),
    }
    path = write_results(args.out, "synth", rows, summary,
                         ["rows", "wall_s", "generate_s", "rows_per_s", "peak_rss_driver_mb", "peak_rss_tree_mb",
                          "parquet_mb", "images"],
                         notes="wall_s includes starting a local Ray cluster; generate_s and rows_per_s "
                               "are the pipeline alone. ray_vs_plain_ratio is Ray Data rows/s "
                               "(all cores) over one plain Python process (one core).")
    print(f"bench synth: {summary} -> {path}")


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
