"""How to fuse the dense and the lexical side, measured in-process: one model's vectors, BM25
over the same title n-grams the Milvus collection indexes, and each fusion rule over the two
candidate lists (``--candidates`` per side), scored by the exact Product1M metrics.

Rules: ``rrf`` (Milvus' RRFRanker, rank-based) and the client-side normalised fusions of
``egecmp_ray.retrieval.fusion`` (the code ``index.hybrid_ranker=zscore|minmax`` runs): each
side's scores standardised (``zscore``) or scaled to [0, 1] (``minmax``) within the query's
candidates, then weighted.

    python benchmarks/fusion_probe.py --model RUN/model --data DEV.txt        # dev as both
    python benchmarks/fusion_probe.py --model RUN/model --data SYNTH_DIR      # query vs gallery
Appends a table to results/quality_log.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from egecmp_ray.model.encoder import ItemEncoder
from egecmp_ray.model.model_dir import VOCAB_DIR, load_model_dir
from egecmp_ray.retrieval.fusion import NORMALISERS, fuse
from egecmp_ray.retrieval.lexical import lexical_text

ROOT = Path(__file__).resolve().parents[1]


def bm25_scores(queries: list[str], docs: list[str], k1: float = 1.2, b: float = 0.75,
                max_ngram: int = 2) -> torch.Tensor:
    """[Q, D] BM25 (Lucene's idf) over ``lexical_text`` tokens, as Milvus' BM25 function."""
    doc_tokens = [lexical_text(d, max_ngram).lower().split() for d in docs]
    vocab: dict[str, int] = {}
    for toks in doc_tokens:
        for t in toks:
            vocab.setdefault(t, len(vocab))
    tf = torch.zeros(len(docs), len(vocab))
    for i, toks in enumerate(doc_tokens):
        for t, c in Counter(toks).items():
            tf[i, vocab[t]] = c
    dl = tf.sum(1, keepdim=True)
    df = (tf > 0).sum(0).float()
    idf = torch.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
    weight = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / dl.mean()))
    q = torch.zeros(len(queries), len(vocab))
    for i, text in enumerate(queries):
        for t, c in Counter(lexical_text(text, max_ngram).lower().split()).items():
            if t in vocab:
                q[i, vocab[t]] = c
    return q @ weight.T


def hit_lists(scores: torch.Tensor, k: int) -> list[list[dict]]:
    """Each query's top-``k`` gallery rows as Milvus-style hits (id = row, score)."""
    s, i = scores.topk(min(k, scores.shape[1]), dim=1)
    return [[{"id": int(j), "score": float(v)} for j, v in zip(row_i, row_s) if v > float("-inf")]
            for row_i, row_s in zip(i.tolist(), s.tolist())]


def rrf(dense: list[list[dict]], lexical: list[list[dict]], k: int = 60) -> list[list[int]]:
    """Milvus' RRFRanker: the sum of 1 / (k + rank) over the sides that list an item."""
    out = []
    for d, lx in zip(dense, lexical):
        score: dict[int, float] = {}
        for hits in (d, lx):
            for rank, h in enumerate(hits, 1):
                score[h["id"]] = score.get(h["id"], 0.0) + 1.0 / (k + rank)
        out.append(sorted(score, key=lambda i: -score[i])[:101])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--weights", default=None, metavar="JSON",
                    help='model.retrieval_weights to read the model with, e.g. \'{"graph": 2}\' '
                         "(merged over the model dir's own)")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args()
    from quality_probe import read_rows, score_rankings  # same folder: the probe's reading, metrics

    t0 = time.perf_counter()
    model, cfg = load_model_dir(args.model)
    if args.weights:
        model.cfg.retrieval_weights = {**model.cfg.retrieval_weights, **json.loads(args.weights)}
    queries, gallery = read_rows(args.data)
    enc = ItemEncoder(model, cfg.entities, str(Path(args.model) / VOCAB_DIR))
    vec = {role: enc.encode([r["title"] for r in items], [r.get("image") for r in items],
                            [r["item_id"] for r in items])["item"]
           for role, items in (("q", queries), ("g", gallery))}
    dense = torch.from_numpy(vec["q"]) @ torch.from_numpy(vec["g"]).T
    lexical = bm25_scores([r["title"] for r in queries], [r["title"] for r in gallery],
                          max_ngram=cfg.index.lexical_max_ngram)
    same = np.array([[q["item_id"] == g["item_id"] for g in gallery] for q in queries])
    if same.any():  # dev as both: the query itself is no candidate
        dense[torch.from_numpy(same)] = float("-inf")
        lexical[torch.from_numpy(same)] = float("-inf")
    d, lx = hit_lists(dense, args.candidates), hit_lists(lexical, args.candidates)

    def ids(hits: list[list[dict]]) -> list[list[int]]:
        return [[h["id"] for h in row[:101]] for row in hits]

    rows = [{"rule": "dense alone", **score_rankings(ids(d), queries, gallery)},
            {"rule": "BM25 alone", **score_rankings(ids(lx), queries, gallery)},
            {"rule": "rrf k=60", **score_rankings(rrf(d, lx), queries, gallery)}]
    print(rows, flush=True)
    for how in NORMALISERS:
        for w in (0.1, 0.2, 0.3, 0.4, 0.5):
            fused = fuse(d, lx, (w, 1.0 - w), 101, how)
            rows.append({"rule": f"{how}, dense {w} / lexical {1 - w:.1f}",
                         **score_rankings(ids(fused), queries, gallery)})
            print(rows[-1], flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "quality_log.md", "a", encoding="utf-8") as f:
        f.write(f"\n### fusion probe: {args.label or args.model} on {Path(args.data).name} "
                f"({args.candidates} candidates a side, {time.perf_counter() - t0:.0f} s)\n\n"
                "| rule | mAP@10 | mAR@10 | Prec@10 |\n|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['rule']} | {r['mAP@10']} | {r['mAR@10']} | {r['Prec@10']} |\n")


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
