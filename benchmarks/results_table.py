"""The retrieval results table: the TF-IDF baseline, the untrained model, the model ablations
(`no_entity`, CAPTURE-like; `no_graph`; `full`) and `hybrid` (the `full` model fused with BM25
in Milvus), each trained on the same data with the same step budget for every seed (mean ±
spread over seeds), evaluated by the same harness. Two datasets: the synthetic benchmark (images, query/gallery
splits) and the real Product1M dev titles (text only, dev as both queries and gallery, each
query itself removed; pretraining reads the titles, never the labels).

    python benchmarks/results_table.py                    # small preset, synth 600 / dev 300 steps
    python benchmarks/results_table.py --steps 400        # one budget for both datasets
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


DEFAULT_STEPS = "synth=600,dev=300"


def parse_steps(text: str) -> dict[str, int]:
    """``"600"`` (every dataset) or ``"synth=600,dev=300"`` -> {dataset: steps}."""
    try:
        if "=" not in text:
            return {"synth": int(text), "dev": int(text)}
        return {k.strip(): int(v) for k, v in (part.split("=", 1) for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or NAME=N,...") from None


# method -> (model variant to pretrain or None, evaluate --method, pretraining steps or None)
METHODS = {"tfidf": (None, "tfidf"), "untrained": ("full", "model"),
           "no_entity": ("no_entity", "model"), "no_graph": ("no_graph", "model"),
           "full": ("full", "model"), "hybrid": ("full", "hybrid")}
METRICS = [f"{k}@{r}" for r in (10, 50, 100) for k in ("mAP", "Prec", "mAR")]


def pretrained(name: str, work: Path, prep: Path, plan: dict, preset: str, variant: str,
               steps: int, seed: int, overrides: list[str]) -> tuple[Path, float]:
    """The model dir of one (variant, steps, seed), trained once and reused (hybrid reads the
    ``full`` model; ``untrained`` is one step at warm-up lr 0: the initial weights)."""
    run = work / f"{name}_{variant}_{steps}steps_s{seed}"
    if not (run / "model" / "model.safetensors").is_file():
        egecmp("pretrain", "--data", str(prep), "--out", str(run), "--preset", preset,
               "--max-steps", str(steps), f"model.variant={variant}", f"data.seed={seed}",
               f"train.splits={plan['splits']}", "train.epochs=100",
               f"train.checkpoint_every_steps={max(steps // 2, 1)}",
               f"train.threads_per_worker={os.cpu_count() or 1}", *overrides)
    return run / "model", json.loads((run / "pretrain.json").read_text())["elapsed_s"]


def run_dataset(name: str, work: Path, preset: str, rows: int, steps: int,
                overrides: list[str], seeds: list[int], methods: list[str],
                finished_only: bool = False) -> list[dict]:
    """One row per (method, seed): the exact metrics of DESIGN.md section 5."""
    plan = dataset_plan(name, work, preset, rows)
    prep = work / f"{name}_prep"
    if not (prep / "manifest.json").is_file():
        egecmp("preprocess", "--input", plan["input"], "--out", str(prep), "--preset", preset)
    results = []
    for method in methods:
        variant, how = METHODS[method]
        for seed in ([0] if variant is None else seeds):
            ev = work / f"{name}_eval_{method}_s{seed}"
            row = {"dataset": name, "method": method, "seed": seed}
            if finished_only and not (ev / "metric_results.json").is_file():
                results.append({**row, "train_s": "not run"})
                continue
            t0 = time.perf_counter()
            args, train_s = ["--method", how], 0.0
            if variant is not None:
                model, train_s = pretrained(name, work, prep, plan, preset, variant,
                                            1 if method == "untrained" else steps, seed,
                                            overrides)
                args += ["--model", str(model)]
            if not (ev / "metric_results.json").is_file():
                egecmp("evaluate", *args, "--queries", plan["queries"], "--gallery",
                       plan["gallery"], "--out", str(ev), "--preset", preset)
            m = json.loads((ev / "metric_results.json").read_text())
            row.update({"train_s": train_s, "wall_s": round(time.perf_counter() - t0, 1),
                        **{f"{k}@{r}": m[f"top{r}"][k] for r in (10, 50, 100)
                           for k in ("mAP", "Prec", "mAR")}})
            if "identical" in m:
                row.update({f"identical_{k}": v for k, v in m["identical"].items()})
            for side, cm in m.get("components", {}).items():
                row[f"{side}_alone_mAP@10"] = cm["top10"]["mAP"]
            results.append(row)
            print(row, flush=True)
    return results


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds and the spread (half the max-min range) of each metric, per
    (dataset, method)."""
    out = []
    keys = sorted({(r["dataset"], r["method"]) for r in rows}, key=lambda k: (
        k[0], list(METHODS).index(k[1]) if k[1] in METHODS else 99))
    for dataset, method in keys:
        runs = [r for r in rows if (r["dataset"], r["method"]) == (dataset, method)
                and "mAP@10" in r]
        if not runs:
            out.append({"dataset": dataset, "method": method, "seeds": 0})
            continue
        summary = {"dataset": dataset, "method": method, "seeds": len(runs)}
        for col in [*METRICS, "identical_mAP@1", "identical_Prec@5", "train_s",
                    "lexical_alone_mAP@10", "dense_alone_mAP@10"]:
            values = [r[col] for r in runs if isinstance(r.get(col), (int, float))]
            if values:
                summary[col] = round(sum(values) / len(values), 4)
                summary[f"{col}_spread"] = round((max(values) - min(values)) / 2, 4)
        out.append(summary)
    return out


def write_table(out: Path, rows: list[dict], meta: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    (out / "retrieval_table.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "rows": rows}, indent=2))
    # No seconds here: the budget is the step count; train_s (wall time) stays in the JSON.
    cols = ["mAP@10", "mAR@10", "Prec@10", "mAP@50", "mAP@100", "identical_mAP@1",
            "dense_alone_mAP@10", "lexical_alone_mAP@10"]

    def cell(r: dict, c: str) -> str:
        if c not in r:
            return ""
        spread = r.get(f"{c}_spread")
        return f"{r[c]:.4f} ± {spread:.4f}" if r["seeds"] > 1 else f"{r[c]:.4f}"

    lines = ["# Retrieval results", "",
             f"Machine: {meta['machine']['cpus']} CPUs, GPU: {meta['machine']['gpu']}; preset "
             f"{meta['preset']}, pretraining steps a model: "
             f"{', '.join(f'{k} {v}' for k, v in meta['steps'].items())}; seeds "
             f"{meta['seeds']}{''.join(' ' + o for o in meta['pretrain_overrides'])}; {meta['date']}", "",
             "| dataset | method | seeds | " + " | ".join(cols) + " |",
             "|" + "---|" * (len(cols) + 3)]
    lines += [f"| {r['dataset']} | {r['method']} | {r['seeds']} | "
              + " | ".join(cell(r, c) for c in cols) + " |" for r in summary]
    lines += ["", "Each model row: the mean over seeds ± half the max-min range. synth: query "
              "split vs gallery split of the synthetic benchmark (images). dev: the real "
              "Product1M dev titles as queries and gallery (each query removed from its own "
              "list and from its label's count), text only. untrained: the `full` model after "
              "one step at warm-up learning rate 0. hybrid: the `full` model's vectors fused "
              "with BM25 over title n-grams in Milvus (index.hybrid_ranker, default minmax: each "
              "side's scores min-max scaled within the query's candidates, 0.3 dense / 0.7 "
              "lexical). Metrics exactly as DESIGN.md section 5 (CAPTURE's evaluate_suit.py)."]
    if any(r["seeds"] == 0 for r in summary):
        lines += ["", "Rows with 0 seeds were not run (`--finished-only` after a partial run); "
                  "fewer seeds than asked means the other seeds' runs did not finish."]
    (out / "retrieval_table.md").write_text("\n".join(lines) + "\n")
    return out / "retrieval_table.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results")
    parser.add_argument("--work", default=None, help="scratch dir, reused across re-runs")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", default=DEFAULT_STEPS, type=parse_steps,
                        help="pretraining steps a model: N for every dataset, or per dataset "
                             f"as NAME=N,... (default {DEFAULT_STEPS}: about 1.4 epochs of "
                             "synth's 7,100 training rows, 1.8 of the 2,673 dev titles)")
    parser.add_argument("--rows", type=int, default=10_000, help="synthetic rows")
    parser.add_argument("--datasets", default="synth,dev")
    parser.add_argument("--seeds", default="0,1", help="training seeds (data.seed) a model")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--finished-only", action="store_true",
                        help="write the table from the stages already finished in --work; "
                             "the others show as not run")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="pretraining override for every model, "
                        "e.g. --set train.lr=5e-4 (recorded in the JSON)")
    args = parser.parse_args()
    preset = "tiny" if args.quick else "small"
    steps, rows = ({"synth": 4, "dev": 4}, 600) if args.quick else (args.steps, args.rows)
    missing = [name for name in args.datasets.split(",") if name not in steps]
    if missing:
        parser.error(f"--steps names no budget for dataset(s) {missing}")
    seeds = [int(x) for x in args.seeds.split(",")]
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; known: {list(METHODS)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="results-table-"))
    rows_out: list[dict] = []
    for name in args.datasets.split(","):
        rows_out += run_dataset(name, work, preset, rows, steps[name], args.overrides, seeds,
                                methods, args.finished_only)
        meta = {"preset": preset, "steps": steps, "synthetic_rows": rows, "seeds": seeds,
                "pretrain_overrides": args.overrides,
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info()}
        path = write_table(Path(args.out), rows_out, meta)
    print(f"results table -> {path}")


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
