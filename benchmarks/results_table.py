"""The retrieval results table: the TF-IDF baseline and the model ablations (`no_entity`,
CAPTURE-like; `no_graph`; `full`), each trained on the same data with the same step budget,
evaluated by the same harness. Two datasets: the synthetic benchmark (images, query/gallery
splits) and the real Product1M dev titles (text only, dev as both queries and gallery, each
query itself removed; pretraining reads the titles, never the labels).

    python benchmarks/results_table.py                    # small preset, --steps 300 a model
    python benchmarks/results_table.py --quick            # tiny: checks it runs
    python benchmarks/results_table.py --datasets synth   # one dataset

Every stage is an `egecmp` command in its own process; finished stages are reused when the
script is re-run with the same --work dir. Writes results/retrieval_table.md + .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from egecmp_ray.benchmarking import machine_info, run_measured

ROOT = Path(__file__).resolve().parents[1]
DEV_FILE = ROOT.parent / "shared" / "data" / "product1m" / "product1m_dev_ossurl_v2.txt"
VARIANTS = ("no_entity", "no_graph", "full")


def egecmp(*args: str) -> None:
    run_measured([sys.executable, "-m", "egecmp_ray", *args, "--log-level", "WARNING"])


def dataset_plan(name: str, work: Path, preset: str, rows: int) -> dict:
    """Inputs of one dataset: what to pretrain on and what to evaluate."""
    if name == "synth":
        synth = work / "synth"
        if not (synth / "manifest.json").is_file():
            egecmp("synth", "--rows", str(rows), "--out", str(synth), "--preset", preset)
        return {"input": str(synth), "queries": str(synth), "gallery": str(synth), "splits": "[train]"}
    if not DEV_FILE.is_file():
        raise SystemExit(f"{DEV_FILE} not found: run with --datasets synth")
    return {"input": str(DEV_FILE), "queries": str(DEV_FILE), "gallery": str(DEV_FILE),
            "splits": "[dev]"}


def run_dataset(name: str, work: Path, preset: str, rows: int, steps: int,
                overrides: list[str], finished_only: bool = False) -> list[dict]:
    plan = dataset_plan(name, work, preset, rows)
    prep = work / f"{name}_prep"
    if not (prep / "manifest.json").is_file():
        egecmp("preprocess", "--input", plan["input"], "--out", str(prep), "--preset", preset)
    results = []
    for method in ("tfidf", *VARIANTS):
        ev = work / f"{name}_eval_{method}"
        if finished_only and not (ev / "metric_results.json").is_file():
            results.append({"dataset": name, "method": method, "train_s": "not run"})
            continue
        t0 = time.perf_counter()
        if method == "tfidf":
            args = ["--method", "tfidf"]
            train_s = 0.0
        else:
            run = work / f"{name}_{method}"
            if not (run / "model" / "model.safetensors").is_file():
                egecmp("pretrain", "--data", str(prep), "--out", str(run), "--preset", preset,
                       "--max-steps", str(steps), f"model.variant={method}",
                       f"train.splits={plan['splits']}", "train.epochs=100",
                       f"train.checkpoint_every_steps={max(steps // 2, 1)}",
                       f"train.threads_per_worker={os.cpu_count() or 1}", *overrides)
            train_s = json.loads((run / "pretrain.json").read_text())["elapsed_s"]
            args = ["--model", str(run / "model")]
        if not (ev / "metric_results.json").is_file():
            egecmp("evaluate", *args, "--queries", plan["queries"], "--gallery", plan["gallery"],
                   "--out", str(ev), "--preset", preset)
        m = json.loads((ev / "metric_results.json").read_text())
        row = {"dataset": name, "method": method, "train_s": train_s,
               "wall_s": round(time.perf_counter() - t0, 1),
               **{f"{k}@{r}": round(m[f"top{r}"][k], 4) for r in (10, 50, 100)
                  for k in ("mAP", "Prec", "mAR")}}
        if "identical" in m:
            row.update({f"identical_{k}": round(v, 4) for k, v in m["identical"].items()})
        results.append(row)
        print(row, flush=True)
    return results


def write_table(out: Path, rows: list[dict], meta: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval_table.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    cols = ["dataset", "method", "mAP@10", "mAR@10", "Prec@10", "mAP@50", "mAP@100",
            "identical_mAP@1", "identical_Prec@5", "train_s"]
    lines = ["# Retrieval results", "",
             f"Machine: {meta['machine']['cpus']} CPUs, GPU: {meta['machine']['gpu']}; preset "
             f"{meta['preset']}, {meta['steps']} pretraining steps a model "
             f"{' '.join(meta['pretrain_overrides'])}; {meta['date']}", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    lines += ["", "synth: query split vs gallery split of the synthetic benchmark (images). "
              "dev: the real Product1M dev titles as queries and gallery (each query removed "
              "from its own list), text only. Metrics as DESIGN.md section 5."]
    (out / "retrieval_table.md").write_text("\n".join(lines) + "\n")
    return out / "retrieval_table.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results")
    parser.add_argument("--work", default=None, help="scratch dir, reused across re-runs")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps a model")
    parser.add_argument("--rows", type=int, default=10_000, help="synthetic rows")
    parser.add_argument("--datasets", default="synth,dev")
    parser.add_argument("--finished-only", action="store_true",
                        help="write the table from the stages already finished in --work; "
                             "the others show as not run")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="pretraining override for every model, "
                        "e.g. --set train.lr=5e-4 (recorded in the JSON)")
    args = parser.parse_args()
    preset = "tiny" if args.quick else "small"
    steps, rows = (4, 600) if args.quick else (args.steps, args.rows)
    work = Path(args.work or tempfile.mkdtemp(prefix="results-table-"))
    rows_out: list[dict] = []
    for name in args.datasets.split(","):
        rows_out += run_dataset(name, work, preset, rows, steps, args.overrides,
                                args.finished_only)
        meta = {"preset": preset, "steps": steps, "synthetic_rows": rows,
                "pretrain_overrides": args.overrides,
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info()}
        path = write_table(Path(args.out), rows_out, meta)
    print(f"results table -> {path}")


if __name__ == "__main__":
    main()
