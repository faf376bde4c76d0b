"""Choose the hybrid fusion by measurement: one indexed collection (written by
``egecmp evaluate --method hybrid``), its queries re-encoded in-process, searched with each
ranker setting; the exact Product1M metrics for each, next to the dense and BM25 sides alone.

    python benchmarks/hybrid_sweep.py --model RUN/model --milvus-uri EVAL/milvus.db \\
        --queries DEV.txt [--collection egecmp_eval] [--label "full, 1 step"]
Appends a table to results/quality_log.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from egecmp_ray.config import load_config
from egecmp_ray.model.encoder import ItemEncoder
from egecmp_ray.model.model_dir import VOCAB_DIR, item_dim, load_model_dir
from egecmp_ray.retrieval.metrics import evaluate_rankings
from egecmp_ray.retrieval.milvus_store import VectorStore

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [("rrf", {"rrf_k": 60}), ("weighted", {"hybrid_weights": [0.5, 0.5]}),
            ("weighted", {"hybrid_weights": [0.3, 0.7]}),
            ("weighted", {"hybrid_weights": [0.2, 0.8]}),
            ("minmax", {"hybrid_weights": [0.3, 0.7]}), ("zscore", {"hybrid_weights": [0.4, 0.6]})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--milvus-uri", required=True)
    ap.add_argument("--collection", default="egecmp_eval")
    ap.add_argument("--queries", required=True, help="The dev .txt (dev as both) or a synth dir.")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args()

    from quality_probe import read_rows  # same folder: the same row reading as the probe

    queries, gallery = read_rows(args.queries)
    model, cfg = load_model_dir(args.model)
    enc = ItemEncoder(model, cfg.entities, str(Path(args.model) / VOCAB_DIR))
    vectors = enc.query_vectors([q["title"] for q in queries], [q.get("image") for q in queries])
    titles = [q["title"] for q in queries]
    base = load_config(overrides=[f"index.milvus_uri={args.milvus_uri}"]).index
    store = VectorStore(base, item_dim(args.model), args.collection)
    qlabels = {q["item_id"]: q["labels"] for q in queries}
    glabels = {g["item_id"]: g["labels"][0] for g in gallery}

    def scored(hits) -> dict:
        ranked = {q["item_id"]: [h["id"] for h in row if h["id"] != q["item_id"]][:100]
                  for q, row in zip(queries, hits)}
        m = evaluate_rankings(ranked, qlabels, glabels)
        return {k: round(m["top10"][k], 4) for k in ("mAP", "mAR", "Prec")}

    rows = [{"setting": "dense alone", **scored(store.search(vectors, 101))},
            {"setting": "BM25 alone", **scored(store.lexical_search(titles, 101))}]
    for ranker, extra in SETTINGS:
        store.cfg = dataclasses.replace(base, hybrid_ranker=ranker, **extra)
        t0 = time.perf_counter()
        rows.append({"setting": f"{ranker} {extra}",
                     **scored(store.hybrid_search(vectors, titles, 101)),
                     "search_s": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    with open(Path(args.out) / "quality_log.md", "a", encoding="utf-8") as f:
        f.write(f"\n### hybrid fusion: {args.label or args.model} on {Path(args.queries).name}\n\n"
                "| setting | mAP@10 | mAR@10 | Prec@10 |\n|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['setting']} | {r['mAP']} | {r['mAR']} | {r['Prec']} |\n")


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
