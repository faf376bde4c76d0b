"""The entity vocabulary and entity graph, built by distributed aggregation (DESIGN.md section 2).

Counts and co-occurrence pairs are aggregated with Ray Data ``groupby`` over per-batch partial
counts (no process holds all rows); what reaches the driver is one row per entity or entity
pair. Edges: co-occurrence PMI; kNN edges between character n-gram vectors of the entity
strings, so aliases whose items never co-occur (``sk2``/``skii``) can still meet; and kNN
"context" edges between entities that co-occur with the same others (``希摩``/``ximo``): the
candidates for graph positives. Saved as Parquet edge lists and a tensor file that loads into
``torch_geometric.data.Data`` with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NGRAM_DIM = 1024
GRAPH_FILE = "graph.pt"


# ---- per-batch functions (Ray Data map_batches) -------------------------------------------

def entity_counts(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """This batch's item count per entity (an item counts an entity once). Partial counts,
    summed across batches by a ``groupby``: the shuffle moves one row per (batch, entity),
    not one per (item, entity)."""
    counts = Counter(e for ents in batch["entities"] for e in set(ents))
    return {"entity": np.array(list(counts), dtype=object),
            "count": np.fromiter(counts.values(), dtype=np.int64, count=len(counts))}


PAIR_SEP = "\x1f"  # joins a pair's two entity names (cleaned entities hold no control chars)


def pair_counts(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """This batch's item count per unordered pair of entities, keyed ``"a<PAIR_SEP>b"`` with
    ``a < b`` (partial counts, as :func:`entity_counts`). Over all entities, not just the
    vocabulary's: the counts run beside the entity counts, before the vocabulary exists, and
    :func:`pair_ids` drops the pairs with an entity outside it (same counts for the rest)."""
    counts: Counter[str] = Counter()
    for ents in batch["entities"]:
        names = sorted(set(ents))
        counts.update(f"{a}{PAIR_SEP}{b}" for i, a in enumerate(names) for b in names[i + 1:])
    return {"pair": np.array(list(counts), dtype=object),
            "count": np.fromiter(counts.values(), dtype=np.int64, count=len(counts))}


# ---- driver-side, one row per entity or pair ------------------------------------------------

def make_vocab(counts: Sequence[tuple[str, int]], min_count: int) -> list[tuple[str, int]]:
    """Entities with at least ``min_count`` items, most frequent first (ties by string):
    deterministic, so a re-run gives the same node ids."""
    kept = [(e, int(c)) for e, c in counts if int(c) >= min_count and e]
    return sorted(kept, key=lambda ec: (-ec[1], ec[0]))


MIN_PAIR_COUNT = 2  # a pair seen once is noise, not an edge


def pair_ids(pairs: Sequence[str], counts: np.ndarray, vocab: dict[str, int]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, count) node ids of the :func:`pair_counts` keys whose two entities are both
    in ``vocab``, src < dst."""
    src, dst, keep = [], [], []
    for i, key in enumerate(pairs):
        a, _, b = key.partition(PAIR_SEP)
        ia, ib = vocab.get(a), vocab.get(b)
        if ia is not None and ib is not None:
            src.append(min(ia, ib))
            dst.append(max(ia, ib))
            keep.append(i)
    return (np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64),
            np.asarray(counts, dtype=np.int64)[np.array(keep, dtype=np.int64)])


def pmi_edges(src: np.ndarray, dst: np.ndarray, pair_count: np.ndarray, node_count: np.ndarray,
              n_items: int, pmi_min: float, min_pair_count: int = MIN_PAIR_COUNT) -> dict[str, np.ndarray]:
    """PMI = log(c_ab * N / (c_a * c_b)) for pairs seen at least ``min_pair_count`` times."""
    keep = pair_count >= min_pair_count
    src, dst, c = src[keep], dst[keep], pair_count[keep].astype(np.float64)
    pmi = np.log(c * n_items / (node_count[src] * node_count[dst]))
    keep = pmi > pmi_min
    order = np.lexsort((dst[keep], src[keep]))  # groupby output order varies run to run
    return {"src": src[keep][order], "dst": dst[keep][order],
            "weight": pmi[keep][order].astype(np.float32)}


def char_ngram_vectors(entities: Sequence[str], dim: int = NGRAM_DIM, ns: Sequence[int] = (1, 2, 3)
                       ) -> np.ndarray:
    """L2-normalised hashed character n-gram counts ``[len(entities), dim]`` (crc32: stable)."""
    vecs = np.zeros((len(entities), dim), dtype=np.float32)
    for i, ent in enumerate(entities):
        padded = f"<{ent}>"
        for n in ns:
            for j in range(len(padded) - n + 1):
                vecs[i, zlib.crc32(padded[j:j + n].encode()) % dim] += 1.0
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.maximum(norms, 1e-12)


def _topk_blocks(n: int, k: int, scores, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns of each row of an ``n x n`` score matrix produced ``block`` rows at a
    time by ``scores(start, stop) -> [stop - start, n]`` (the diagonal is never a neighbour)."""
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        s = scores(start, stop)
        s[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not yourself
        part = np.argpartition(s, s.shape[1] - k, axis=1)[:, -k:]
        part_sim = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-part_sim, axis=1, kind="stable")
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        sim[start:stop] = np.take_along_axis(part_sim, order, axis=1)
    return idx, sim


def topk_similar(vectors: np.ndarray, k: int, block: int | None = None,
                 budget: int = 32_000_000) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the ``k`` most cosine-similar other rows: (indices, sims), ``[N, k]``.
    Computed in row blocks of about ``budget`` scores: memory is ``block x N``, never ``N x N``
    (this is exact search, O(N^2 d) time: fine for entity vocabularies of ~10^5)."""
    n = len(vectors)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    block = block or max(1, min(4096, budget // max(n, 1)))
    return _topk_blocks(n, k, lambda a, b: vectors[a:b] @ vectors.T, block)


def _edges_from_topk(idx: np.ndarray, sim: np.ndarray, min_sim: float) -> dict[str, np.ndarray]:
    """Undirected edges (src < dst, de-duplicated) from kNN lists, cosine above ``min_sim``."""
    n = len(idx)
    src = np.repeat(np.arange(n), idx.shape[1])
    dst, w = idx.reshape(-1), sim.reshape(-1)
    keep = w > min_sim
    a, b, w = np.minimum(src, dst)[keep], np.maximum(src, dst)[keep], w[keep]
    if len(a) == 0:
        return {"src": a, "dst": b, "weight": w.astype(np.float32)}
    key = a * n + b
    _, first = np.unique(key, return_index=True)
    return {"src": a[first], "dst": b[first], "weight": w[first].astype(np.float32)}


def knn_edges(vectors: np.ndarray, k: int, min_sim: float) -> dict[str, np.ndarray]:
    """Undirected kNN edges (src < dst, de-duplicated) with cosine above ``min_sim``."""
    return _edges_from_topk(*topk_similar(vectors, k), min_sim)


def context_edges(cooc: dict[str, np.ndarray], num_nodes: int, k: int, min_sim: float,
                  budget: int = 32_000_000) -> dict[str, np.ndarray]:
    """kNN edges between entities used in the same contexts: the cosine of their rows of the
    (positive) PMI co-occurrence matrix. Aliases are written one at a time, so they rarely
    co-occur and share no characters (``希摩``/``ximo``), but they co-occur with the same series
    and categories; brand and series co-occur, so first-order edges join parts of one product,
    these join interchangeable spellings. Exact, with sparse rows: ``block x N`` memory."""
    import torch

    n = num_nodes
    k = min(k, n - 1)
    empty = {"src": np.zeros(0, np.int64), "dst": np.zeros(0, np.int64),
             "weight": np.zeros(0, np.float32)}
    if k <= 0 or len(cooc["src"]) == 0:
        return empty
    src = np.concatenate([cooc["src"], cooc["dst"]]).astype(np.int64)
    dst = np.concatenate([cooc["dst"], cooc["src"]]).astype(np.int64)
    w = np.maximum(np.concatenate([cooc["weight"], cooc["weight"]]).astype(np.float64), 0.0)
    norms = np.sqrt(np.bincount(src, w * w, minlength=n))
    w = (w / np.maximum(norms[src], 1e-12)).astype(np.float32)
    rows = torch.sparse_coo_tensor(torch.from_numpy(np.stack([src, dst])), torch.from_numpy(w),
                                   (n, n), check_invariants=True).coalesce()
    order = np.argsort(src, kind="stable")
    src_s, dst_s, w_s = src[order], dst[order], w[order]
    bounds = np.searchsorted(src_s, np.arange(n + 1))

    def scores(start: int, stop: int) -> np.ndarray:  # rows [start, stop) against all: S S^T
        lo, hi = bounds[start], bounds[stop]
        dense = np.zeros((n, stop - start), dtype=np.float32)  # (S[start:stop])^T
        dense[dst_s[lo:hi], src_s[lo:hi] - start] = w_s[lo:hi]
        return torch.sparse.mm(rows, torch.from_numpy(dense)).numpy().T.copy()

    block = max(1, min(4096, budget // max(n, 1)))
    return _edges_from_topk(*_topk_blocks(n, k, scores, block), min_sim)


def edge_index(edges: Sequence[dict[str, np.ndarray]], num_nodes: int):
    """Symmetric ``edge_index [2, E]`` and weights from undirected edge lists (torch tensors)."""
    import torch

    src = np.concatenate([e["src"] for e in edges]) if edges else np.zeros(0, np.int64)
    dst = np.concatenate([e["dst"] for e in edges]) if edges else np.zeros(0, np.int64)
    w = np.concatenate([e["weight"] for e in edges]) if edges else np.zeros(0, np.float32)
    key = np.minimum(src, dst) * max(num_nodes, 1) + np.maximum(src, dst)
    _, first = np.unique(key, return_index=True)  # one edge per pair, whichever list had it
    src, dst, w = src[first], dst[first], w[first]
    ei = torch.from_numpy(np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])]))
    return ei.long(), torch.from_numpy(np.concatenate([w, w])).float()


# ---- files -----------------------------------------------------------------------------------

def write_edges(path: Path, edges: dict[str, np.ndarray], kind: str) -> None:
    table = pa.table({"src": pa.array(edges["src"], pa.int64()), "dst": pa.array(edges["dst"], pa.int64()),
                      "weight": pa.array(edges["weight"], pa.float32()),
                      "kind": pa.array([kind] * len(edges["src"]), pa.string())})
    pq.write_table(table, path)


def save_graph(directory: Path, x, ei, weight, num_nodes: int, candidates=None) -> None:
    """Tensors only (no pickled classes): loads with ``torch.load(..., weights_only=True)``.
    ``candidates``: symmetric ``[2, C]`` node pairs graph positives are chosen from."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    blob = {"x": x, "edge_index": ei, "edge_weight": weight, "num_nodes": torch.tensor(num_nodes)}
    if candidates is not None:
        blob["candidates"] = candidates
    torch.save(blob, directory / GRAPH_FILE)


def load_graph(directory: str | Path):
    """The saved entity graph as ``torch_geometric.data.Data(x, edge_index, edge_weight,
    candidates)``; a graph saved before context edges has no ``candidates`` (PyG stores no
    None attribute: read it with ``getattr(data, "candidates", None)``)."""
    import torch
    from torch_geometric.data import Data

    path = Path(directory) / GRAPH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"entity graph not found: {path}")
    blob = torch.load(path, weights_only=True)
    extra = {"candidates": blob["candidates"]} if "candidates" in blob else {}
    return Data(x=blob["x"], edge_index=blob["edge_index"], edge_weight=blob["edge_weight"],
                num_nodes=int(blob["num_nodes"]), **extra)
