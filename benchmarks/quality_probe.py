"""Where the retrieval signal is, at no training cost: one model directory's vectors scored in
several readouts against the same queries and gallery, by the exact Product1M metrics.

Readouts: ``item`` (what the index holds: [image; text]), ``text`` and ``image`` halves alone,
each also centred on the gallery mean (a shared component, common in untrained transformers,
swamps the cosine), and for both retrieval feature sets (``fused``: the cross-pass readout
through fixed projections; ``single``: the single-stream outputs through the InfoNCE heads).
Vectors are computed in-process with the serving encoder and ranked by brute force, so the
figures isolate the representation from the index.

    python benchmarks/quality_probe.py --model RUN/model --data SYNTH_DIR      # query vs gallery
    python benchmarks/quality_probe.py --model RUN/model --data DEV.txt        # dev as both
Appends rows to results/quality_log.md and writes results/quality_probe.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from egecmp_ray.data import product1m
from egecmp_ray.data.validate import Limits, row_problem
from egecmp_ray.model.encoder import ItemEncoder
from egecmp_ray.model.model_dir import VOCAB_DIR, load_model_dir
from egecmp_ray.retrieval.metrics import evaluate_rankings

ROOT = Path(__file__).resolve().parents[1]


def read_rows(path: str) -> tuple[list[dict], list[dict]]:
    """(queries, gallery) valid rows: a synth dir's query and gallery splits, or a .txt file as
    both (dev as both: each query removed from its own list by the metrics)."""
    if path.endswith(".txt"):
        rows = [product1m.parse_line(line, "dev") for line in open(path, "rb") if line.strip()]
        rows = [r for r in rows if r["reason"] is None]
        return rows, rows

    def split(name: str) -> list[dict]:
        rows = [r for f in sorted((Path(path) / name).glob("*.parquet"))
                for r in pq.read_table(f).to_pylist()]
        return [r for r in rows if row_problem(r, Limits()) is None]

    return split("query"), split("gallery")


def rank(q: np.ndarray, g: np.ndarray, top_k: int = 101) -> np.ndarray:
    scores = torch.from_numpy(q) @ torch.from_numpy(g).T
    return scores.topk(min(top_k, g.shape[0]), dim=1).indices.numpy()


def score(qv: np.ndarray, gv: np.ndarray, queries: list[dict], gallery: list[dict]) -> dict:
    return score_rankings(rank(qv, gv), queries, gallery)


def score_rankings(idx, queries: list[dict], gallery: list[dict]) -> dict:
    """mAP/mAR/Prec@10 of rankings of gallery rows (each query's own row dropped)."""
    gids = [r["item_id"] for r in gallery]
    rankings = {q["item_id"]: [gids[j] for j in row if gids[j] != q["item_id"]][:100]
                for q, row in zip(queries, idx)}
    m = evaluate_rankings(rankings, {q["item_id"]: q["labels"] for q in queries},
                          {r["item_id"]: r["labels"][0] for r in gallery})
    return {"mAP@10": round(m["top10"]["mAP"], 4), "mAR@10": round(m["top10"]["mAR"], 4),
            "Prec@10": round(m["top10"]["Prec"], 4)}


def normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def probe(model_dir: str, data: str) -> list[dict]:
    model, cfg = load_model_dir(model_dir)
    queries, gallery = read_rows(data)
    rows = []
    for features in ("fused", "single"):
        if features == "single" and not hasattr(model, "itc_text"):
            continue  # a variant without InfoNCE heads has no single-stream readout
        model.cfg.retrieval_features = features
        enc = ItemEncoder(model, cfg.entities, str(Path(model_dir) / VOCAB_DIR))
        vec = {}
        for role, items in (("q", queries), ("g", gallery)):
            vec[role] = enc.encode([r["title"] for r in items], [r.get("image") for r in items],
                                   [r["item_id"] for r in items])
        halves = {"item": "item", "text": "text"}
        if any(r.get("image") for r in gallery):
            halves["image"] = "image"
        for name, key in halves.items():
            q, g = vec["q"][key], vec["g"][key]
            for centred in (False, True):
                if centred:
                    mean = g.mean(0, keepdims=True)
                    q, g = normalise(q - mean), normalise(g - mean)
                rows.append({"features": features, "readout": name, "centred": centred,
                             **score(q, g, queries, gallery)})
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--label", default="", help="What this model is (for the log row).")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    rows = probe(args.model, args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "data": args.data, "label": args.label, "rows": rows,
              "elapsed_s": round(time.perf_counter() - t0, 1)}
    path = out / "quality_probe.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps(history + [record], indent=2, ensure_ascii=False))
    with open(out / "quality_log.md", "a", encoding="utf-8") as f:
        f.write(f"\n### probe: {args.label or args.model} on {Path(args.data).name}\n\n"
                "| features | readout | centred | mAP@10 | mAR@10 | Prec@10 |\n|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['features']} | {r['readout']} | {r['centred']} | {r['mAP@10']} | "
                    f"{r['mAR@10']} | {r['Prec@10']} |\n")


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
