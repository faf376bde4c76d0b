"""Indexing and search: embedding rows/s with 1 and 2 encoder replicas (Ray Data actor pool),
Milvus insert rows/s, batched vs single-query search (QPS, p50/p99 latency) at 100k and 1M
vectors, and the recall@100 / QPS trade-off of IVF_FLAT (nprobe) and HNSW (ef) against exact
numpy search, each ANN index timed only once built.

    python benchmarks/bench_index.py            # 2k items embedded; 100k and 1M vectors
    python benchmarks/bench_index.py --quick    # small sizes: checks it runs
    python benchmarks/bench_index.py --parts search --milvus-uri http://host:19530  # a server

Search figures use random unit vectors of the small preset's item size (512-d) in Milvus Lite
(the embedded default; a Milvus server behaves differently). Lite's IVF_FLAT and HNSW are
real faiss indexes, but rows not yet flushed and indexed are searched exactly, and each
search call pays a Python pass over every stored row (see the notes it writes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Optional
from pathlib import Path

import numpy as np

from egecmp_ray.benchmarking import bench_parser, run_measured, write_results
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
    """Batched QPS (every query in one call: Lite pays a per-call cost that grows with the
    collection, see the notes) at ``top_k`` and at top-10, and single-query latency."""
    out = {}
    for k, name in ((top_k, "qps_batched"), (10, "qps_batched_top10")):
        t0 = time.perf_counter()
        store.search(queries, k)
        out[name] = round(len(queries) / (time.perf_counter() - t0), 1)
    lat = []
    for q in queries[:singles]:
        t = time.perf_counter()
        store.search(q[None], top_k)
        lat.append(time.perf_counter() - t)
    lat_ms = np.array(lat) * 1000
    return {**out,
            "qps_single": round(float(len(lat) / (lat_ms.sum() / 1000)), 1),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 2)}


def exact_top(base: np.ndarray, queries: np.ndarray, top_k: int) -> np.ndarray:
    """Each query's true top-``top_k`` rows by inner product (numpy, blockwise)."""
    scores = np.concatenate([queries @ base[i:i + 200_000].T
                             for i in range(0, len(base), 200_000)], axis=1)
    return np.argsort(-scores, axis=1)[:, :top_k]


def recall(store, exact: np.ndarray, queries: np.ndarray, top_k: int) -> float:
    """Mean share of each query's true top-``top_k`` (``exact``'s first columns) found."""
    hits = store.search(queries, top_k)
    found = [len({int(h["id"]) for h in row} & set(ex[:top_k].tolist())) / top_k
             for row, ex in zip(hits, exact)]
    return round(float(np.mean(found)), 4)


def recalls(store, exact: np.ndarray, queries: np.ndarray) -> dict:
    return {"recall_at_100": recall(store, exact, queries, 100),
            "recall_at_10": recall(store, exact, queries, 10)}


NPROBES = (4, 16, 64, 128)  # IVF_FLAT search sweep (nlist NLIST)
EFS = (100, 200, 400, 800)  # HNSW search sweep (ef >= top_k 100)
NLIST = 1024


def ann_rows(store, base_cfg, index_type: str, queries: np.ndarray, exact: np.ndarray,
             singles: int) -> list[dict]:
    """Rebuild the collection's vector index as ``index_type`` (waiting until every row is
    indexed: Lite searches unindexed rows exactly), then one row per search parameter."""
    build = (dataclasses.replace(base_cfg, index_type=index_type, nlist=NLIST)
             if index_type == "IVF_FLAT" else
             dataclasses.replace(base_cfg, index_type=index_type, hnsw_m=16,
                                 hnsw_ef_construction=200))
    build_s = store.rebuild_vector_index(build)
    state = store.index_state()
    rows = []
    for value in (NPROBES if index_type == "IVF_FLAT" else EFS):
        store.cfg = dataclasses.replace(build, **({"nprobe": value} if index_type == "IVF_FLAT"
                                                  else {"hnsw_ef": value}))
        param = f"nprobe={value}" if index_type == "IVF_FLAT" else f"ef={value}"
        rows.append({"vectors": state["rows"], "index": index_type, "param": param,
                     "indexed_rows": state["indexed_rows"], "build_s": round(build_s, 1),
                     **search_figures(store, queries, 100, singles),
                     **recalls(store, exact, queries[:len(exact)])})
        print(rows[-1], flush=True)
    return rows


def milvus_runs(work: Path, sizes: list[int], n_queries: int, singles: int,
                only: Optional[set[int]] = None, hnsw_max: int = 100_000,
                uri: Optional[str] = None, dense_only: bool = False) -> list[dict]:
    """Per size: one collection, filled once through the store (insert rate), searched FLAT,
    then re-indexed in place as IVF_FLAT and (up to ``hnsw_max`` vectors: its build on two
    cores takes tens of minutes at 1M) HNSW, each swept over its search parameter. In a Lite
    file under ``work``, or in collection ``bench_<size>`` of the Milvus at ``uri`` (dropped
    after)."""
    from egecmp_ray.retrieval.milvus_store import VectorStore

    rows = []
    queries = unit(n_queries, 99)
    for size in sizes:
        if only is not None and size not in only:
            continue
        base = unit(size, size)
        exact = exact_top(base, queries[:100], 100)
        db = work / f"m_{size}.db"
        cfg = load_config(preset="small", overrides=[
            f"index.milvus_uri={uri or db}", "index.index_type=FLAT", "index.insert_batch=5000",
            f"index.search_batch={n_queries}"]).index
        store = VectorStore(cfg, DIM, collection=f"bench_{size}", fresh=True,
                            lexical=not dense_only)
        t0 = time.perf_counter()
        for start in range(0, size, 50_000):
            part = base[start:start + 50_000]
            ids = [str(i) for i in range(start, start + len(part))]
            store.upsert({"id": ids, "vector": part, "label": [""] * len(ids),
                          "title": [""] * len(ids), "price": [0.0] * len(ids),
                          "category": [""] * len(ids)})
        count = store.count()
        insert_s = time.perf_counter() - t0
        row = {"vectors": size, "index": "FLAT", "param": "",
               "indexed_rows": store.index_state()["indexed_rows"],
               "insert_rows_per_s": round(count / insert_s, 1),
               **search_figures(store, queries, 100, singles if size <= hnsw_max else singles // 5),
               **recalls(store, exact, queries[:100])}
        rows.append(row)
        print(row, flush=True)
        for index_type in ("IVF_FLAT", "HNSW") if size <= hnsw_max else ("IVF_FLAT",):
            rows += ann_rows(store, cfg, index_type, queries, exact, singles)
        store.client.drop_collection(store.name)
        store.close()
        shutil.rmtree(db, ignore_errors=True)
        if db.exists():
            os.remove(db)
    return rows


def main() -> None:
    parser = bench_parser(__doc__, config_help="ignored (fixed sizes compare)")
    parser.add_argument("--sizes", default=None,
                        help="search part: only these collection sizes (e.g. 1000000); the "
                             "other sizes' rows come from the existing OUT/bench_index.json")
    parser.add_argument("--parts", default="embed,search",
                        help="what to measure; rows of a part not run come from the existing "
                             "OUT/bench_index.json")
    parser.add_argument("--milvus-uri", default=None,
                        help="search part: a Milvus server (http://host:19530) instead of a Lite "
                             "file per size; its collections bench_<size> are replaced if "
                             "present and dropped after")
    parser.add_argument("--dense-only", action="store_true",
                        help="search part: collections without the BM25 field, for a Milvus "
                             "server older than 2.5 (no sparse vectors; e.g. the `milvus` "
                             "package's 2.3 standalone, which runs without Docker)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    previous = []
    only = {int(x) for x in args.sizes.split(",")} if args.sizes else None
    if (parts != {"embed", "search"} or only) and (Path(args.out) / "bench_index.json").is_file():
        previous = json.loads((Path(args.out) / "bench_index.json").read_text())["rows"]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-index-"))
    embed_rows_n, sizes, n_q, singles = ((300, [5_000, 20_000], 50, 20) if args.quick
                                         else (2_000, [100_000, 1_000_000], 1_000, 100))

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
    rows += (milvus_runs(work, sizes, n_q, singles, only, uri=args.milvus_uri,
                         dense_only=args.dense_only)
             if "search" in parts else [])
    rows += [r for r in previous if "vectors" in r and not ("search" in parts and (
        only is None or r["vectors"] in only))]
    rows.sort(key=lambda r: (r.get("vectors", 0), r.get("embed_workers", 0)))
    flat = [r for r in rows if r.get("index") == "FLAT"]
    by_size = {r["vectors"]: r for r in flat}
    small, big = sizes
    embed = {r["embed_workers"]: r["embed_rows_per_s"] for r in rows if "embed_workers" in r}
    summary = {
        "embed_rows_per_s_1w": embed.get(1),
        "embed_rows_per_s_2w": embed.get(2),
        "insert_rows_per_s": by_size[small]["insert_rows_per_s"],
        "qps_batched": by_size[small]["qps_batched"],
        "qps_single": by_size[small]["qps_single"],
        "p50_ms": by_size[small]["p50_ms"],
        "p99_ms": by_size[small]["p99_ms"],
        f"qps_batched_{big // 1000}k": by_size[big]["qps_batched"],
        f"p50_ms_{big // 1000}k": by_size[big]["p50_ms"],
        f"p99_ms_{big // 1000}k": by_size[big]["p99_ms"],
    }
    for size in (small, big):  # the fastest ANN setting that keeps recall@100 >= 0.95
        good = [r for r in rows if r.get("vectors") == size and r.get("index") != "FLAT"
                and r.get("recall_at_100", 0) >= 0.95]
        if good:
            best = max(good, key=lambda r: r["qps_batched"])
            tag = f"{size // 1000}k"
            summary.update({f"ann_{tag}": f"{best['index']} {best['param']}",
                            f"ann_recall_at_100_{tag}": best["recall_at_100"],
                            f"ann_vs_flat_qps_{tag}": round(best["qps_batched"]
                                                            / by_size[size]["qps_batched"], 2)})
            if best.get("qps_batched_top10") and by_size[size].get("qps_batched_top10"):
                summary[f"ann_vs_flat_qps_top10_{tag}"] = round(
                    best["qps_batched_top10"] / by_size[size]["qps_batched_top10"], 2)
    path = write_results(
        args.out, "index", rows, summary,
        ["embed_workers", "embed_rows", "embed_rows_per_s", "vectors", "index", "param",
         "indexed_rows", "build_s", "insert_rows_per_s", "qps_batched", "qps_batched_top10",
         "qps_single", "p50_ms", "p99_ms", "recall_at_100", "recall_at_10"],
        notes=(f"Embedding: the small preset (untrained weights; cost does not depend on them), "
               f"{embed_rows_n} synthetic items with images, 1 CPU a replica. Search: "
               f"{'the Milvus at ' + args.milvus_uri if args.milvus_uri else 'Milvus Lite'}"
               f"{' (collections without the BM25 field)' if args.dense_only else ''}, "
               f"{DIM}-d unit vectors around 2,000 random centres, inner product; "
               f"batched = {n_q} queries in one call, top-100 (`qps_batched`) and top-10 "
               f"(`qps_batched_top10`); single = one top-100 query a call ({singles} "
               f"calls; a fifth of that at sizes without HNSW). One collection per size, filled "
               "once through `VectorStore.upsert` (the insert rate), searched FLAT, then its "
               f"vector index rebuilt in place as IVF_FLAT (nlist {NLIST}) and HNSW (M 16, "
               "efConstruction 200; only up to 100k vectors: its build takes tens of minutes on "
               "two cores at 1M), timed only once `describe_index` reports every row indexed "
               "(Lite searches unindexed rows exactly). recall@100 and @10 of 100 queries against "
               "exact numpy search. `ann_*`: the fastest setting with recall@100 >= 0.95, its "
               "batched QPS over FLAT's at the same size (`_top10`: at top-10). Milvus Lite 3.x "
               "is Python: every search call first loops over every stored row (the cross-segment "
               "dedup of upserted keys and the delete mask: ~1 s a call at 1M rows on this host, "
               "whatever the index), then builds each hit's whole row (~50 us a hit, the 512-d "
               "vector included). Both costs are the same for FLAT and ANN, so they cap the "
               "ANN/FLAT ratio; large batches and small top-k are where the index shows. A "
               "Milvus server (`--milvus-uri`) does both in C++."
               + ("" if "embed" in parts else " Embedding rows: from the previous run's JSON.")))
    print(f"bench index: {summary} -> {path}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
