"""Indexing and search: embedding rows/s with 1 and 2 encoder replicas (Ray Data actor pool),
Milvus insert rows/s, batched vs single-query search (QPS, p50/p99 latency) at 100k and 1M
vectors, and recall@100 of IVF_FLAT and HNSW against exact numpy search.

    python benchmarks/bench_index.py            # 2k items embedded; 100k and 1M vectors
    python benchmarks/bench_index.py --quick    # small sizes: checks it runs

Search figures use random unit vectors of the small preset's item size (512-d) in Milvus Lite
(the embedded default; a Milvus server behaves differently, and Lite treats HNSW as exact).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Optional
from pathlib import Path

import numpy as np

from egecmp_ray.benchmarking import run_measured, write_results
from egecmp_ray.config import load_config

DIM = 512


def unit(n: int, seed: int, clusters: int = 2_000, spread: float = 0.6) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (item embeddings cluster by product;
    uniformly random vectors have no neighbourhoods for IVF to find and understate recall)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(size=(clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    v = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, DIM)).astype(
        np.float32) / np.sqrt(DIM)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def embed_rate(work: Path, rows: int, workers: int) -> dict:
    """Embedding throughput of `egecmp index`'s actor pool, measured in a child process."""
    code = f"""
import json, time, sys
from egecmp_ray.config import load_config
from egecmp_ray.data.sources import resolve_source
from egecmp_ray.retrieval.embed import embed_rows
from egecmp_ray.runtime import init_ray
init_ray()
cfg = load_config(preset="small")
ds = embed_rows(resolve_source({str(work / 'synth')!r}, splits=["train"]), {str(work / 'model')!r},
                cfg, None, workers={workers})
ds.take(1)  # actors up, model loaded
t0 = time.perf_counter()
n = sum(len(b["id"]) for b in ds.iter_batches(batch_size=256))
print(json.dumps({{"rows": n, "s": time.perf_counter() - t0}}))
"""
    r = run_measured([sys.executable, "-c", code], env={"EGECMP_NUM_CPUS": str(workers + 1)})
    res = json.loads([x for x in r["output"].splitlines() if x.startswith("{")][-1])
    return {"embed_workers": workers, "embed_rows": res["rows"],
            "embed_rows_per_s": round(res["rows"] / res["s"], 1)}


def search_figures(store, queries: np.ndarray, top_k: int, singles: int) -> dict:
    t0 = time.perf_counter()
    store.search(queries, top_k)
    batched_s = time.perf_counter() - t0
    lat = []
    for q in queries[:singles]:
        t = time.perf_counter()
        store.search(q[None], top_k)
        lat.append(time.perf_counter() - t)
    lat_ms = np.array(lat) * 1000
    return {"qps_batched": round(len(queries) / batched_s, 1),
            "qps_single": round(float(len(lat) / (lat_ms.sum() / 1000)), 1),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 2)}


def recall(store, base: np.ndarray, queries: np.ndarray, top_k: int) -> float:
    exact = np.argsort(-(queries @ base.T), axis=1)[:, :top_k]
    hits = store.search(queries, top_k)
    found = [len({int(h["id"]) for h in row} & set(ex.tolist())) / top_k
             for row, ex in zip(hits, exact)]
    return round(float(np.mean(found)), 4)


def milvus_runs(work: Path, sizes: list[int], n_queries: int, singles: int,
                only: Optional[set[int]] = None) -> list[dict]:
    from egecmp_ray.retrieval.milvus_store import VectorStore

    rows = []
    queries = unit(n_queries, 99)
    for size in sizes:
        if only is not None and size not in only:
            continue
        base = unit(size, size)
        for index_type in (["FLAT", "IVF_FLAT", "HNSW"] if size == sizes[0] else ["FLAT"]):
            cfg = load_config(preset="small", overrides=[
                f"index.milvus_uri={work / f'm_{size}_{index_type}.db'}",
                f"index.index_type={index_type}", "index.insert_batch=5000",
                "index.nlist=1024", "index.nprobe=128"]).index
            store = VectorStore(cfg, DIM, collection="bench", fresh=True)
            t0 = time.perf_counter()
            for start in range(0, size, 50_000):
                part = base[start:start + 50_000]
                ids = [str(i) for i in range(start, start + len(part))]
                store.upsert({"id": ids, "vector": part, "label": [""] * len(ids),
                              "title": [""] * len(ids), "price": [0.0] * len(ids),
                              "category": [""] * len(ids)})
            count = store.count()
            insert_s = time.perf_counter() - t0
            row = {"vectors": size, "index": index_type,
                   "insert_rows_per_s": round(count / insert_s, 1),
                   **search_figures(store, queries, 100, singles)}
            if size == sizes[0]:
                row["recall_at_100"] = recall(store, base, queries[:100], 100)
            store.close()
            shutil.rmtree(work / f"m_{size}_{index_type}.db", ignore_errors=True)
            if (work / f"m_{size}_{index_type}.db").exists():
                os.remove(work / f"m_{size}_{index_type}.db")
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", default=None, help="scratch dir [default: a temp dir]")
    parser.add_argument("--config", default=None, help="ignored (fixed sizes compare)")
    parser.add_argument("--sizes", default=None,
                        help="search part: only these collection sizes (e.g. 1000000); the "
                             "other sizes' rows come from the existing OUT/bench_index.json")
    parser.add_argument("--parts", default="embed,search",
                        help="what to measure; rows of a part not run come from the existing "
                             "OUT/bench_index.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    previous = []
    only = {int(x) for x in args.sizes.split(",")} if args.sizes else None
    if (parts != {"embed", "search"} or only) and (Path(args.out) / "bench_index.json").is_file():
        previous = json.loads((Path(args.out) / "bench_index.json").read_text())["rows"]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-index-"))
    embed_rows_n, sizes, n_q, singles = ((300, [5_000, 20_000], 50, 20) if args.quick
                                         else (2_000, [100_000, 1_000_000], 200, 100))

    # An untrained small model: embedding cost does not depend on the weights.
    if "embed" in parts and not (work / "model" / "model_config.json").is_file():
        run_measured([sys.executable, "-m", "egecmp_ray", "synth", "--rows", str(embed_rows_n),
                      "--out", str(work / "synth"), "--preset", "small", "--log-level", "WARNING"])
        run_measured([sys.executable, "-c", f"""
import torch
from pathlib import Path
from egecmp_ray.config import load_config
from egecmp_ray.model.egecmp import EGECMP, TokenIds
from egecmp_ray.model.model_dir import save_model_dir
from egecmp_ray.entities.tokenizer import train_wordpiece, save_tokenizer
from egecmp_ray.entities.encode import write_vocab
cfg = load_config(preset="small")
vocab = Path({str(work / 'vocab')!r}); vocab.mkdir(parents=True, exist_ok=True)
tok = train_wordpiece(["SK-II 神仙水 正品", "AHC 黄金面霜"] * 50, cfg.model.vocab_size)
save_tokenizer(tok, vocab)
write_vocab(vocab / "entities.tsv", [("sk", 2), ("神仙水", 2)])
tokens = TokenIds.from_tokenizer(tok)
save_model_dir(Path({str(work / 'model')!r}), EGECMP(cfg.model, tokens).state_dict(), cfg, tokens,
               vocab, None)
"""])
    if "embed" in parts:
        rows = [embed_rate(work, embed_rows_n, 1), embed_rate(work, embed_rows_n, 2)]
        for r in rows:
            print(r, flush=True)
    else:
        rows = [r for r in previous if "embed_workers" in r]
    rows += (milvus_runs(work, sizes, n_q, singles, only) if "search" in parts else [])
    rows += [r for r in previous if "vectors" in r and not ("search" in parts and (
        only is None or r["vectors"] in only))]
    rows.sort(key=lambda r: (r.get("vectors", 0), r.get("embed_workers", 0)))
    flat = [r for r in rows if r.get("index") == "FLAT"]
    by_size = {r["vectors"]: r for r in flat}
    small, big = sizes
    approx = [r for r in rows if r.get("index") in ("IVF_FLAT", "HNSW")]
    summary = {
        "embed_rows_per_s_1w": rows[0]["embed_rows_per_s"],
        "embed_rows_per_s_2w": rows[1]["embed_rows_per_s"],
        "insert_rows_per_s": by_size[small]["insert_rows_per_s"],
        "qps_batched": by_size[small]["qps_batched"],
        "qps_single": by_size[small]["qps_single"],
        "p50_ms": by_size[small]["p50_ms"],
        "p99_ms": by_size[small]["p99_ms"],
        "recall_at_100": min(r["recall_at_100"] for r in approx),
        **{f"recall_at_100_{r['index'].lower()}": r["recall_at_100"] for r in approx},
        f"qps_batched_{big // 1000}k": by_size[big]["qps_batched"],
        f"p50_ms_{big // 1000}k": by_size[big]["p50_ms"],
        f"p99_ms_{big // 1000}k": by_size[big]["p99_ms"],
    }
    path = write_results(
        args.out, "index", rows, summary,
        ["embed_workers", "embed_rows", "embed_rows_per_s", "vectors", "index",
         "insert_rows_per_s", "qps_batched", "qps_single", "p50_ms", "p99_ms", "recall_at_100"],
        notes=(f"Embedding: the small preset (untrained weights; cost does not depend on them), "
               f"{embed_rows_n} synthetic items with images, 1 CPU a replica. Search: Milvus Lite, "
               f"{DIM}-d unit vectors around 2,000 random centres, inner product, top-100; batched = {n_q} queries "
               f"in one call; single = one query a call ({singles} calls). recall@100 against "
               "exact numpy search (IVF_FLAT nlist 1024, nprobe 128; Lite's HNSW is exact)."))
    print(f"bench index: {summary} -> {path}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
