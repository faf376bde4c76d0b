"""The two back-end deployments: encoder replicas and the searcher that owns the Milvus client.

Both batch dynamically with ``@serve.batch``: concurrent requests become one forward pass and
one Milvus ``search`` call (a single query costs almost as much as 200 in Milvus Lite). Batch
sizes and waits come from ``serve.*`` as each deployment's ``user_config``: changing them
reconfigures the running replicas instead of replacing them (a Milvus Lite file could not be
handed from an old searcher replica to a new one while both run).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import numpy as np
from ray import serve

from egecmp_ray.data import storage
from egecmp_ray.retrieval.milvus_store import SCALAR_FIELDS

BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
CATEGORY_RECHECK_S = 5.0  # how often a replica looks again for a category it lacks


def _batch_histogram(name: str):
    from ray.serve.metrics import Histogram

    return Histogram(f"egecmp_{name}_batch_size", description=f"Requests per {name} batch.",
                     boundaries=BATCH_BUCKETS)


Query = tuple[Optional[str], Optional[bytes]]  # (text, image bytes); at least one is set


@serve.deployment(name="Encoder")
class Encoder:
    """Loads the model directory once; raw text/image queries -> item-space vectors."""

    def __init__(self, model_dir: str, threads: int = 0):
        # Every torch call of the replica runs on this one thread. Each thread that runs torch
        # opens its own OpenMP pool, and once the pools' threads outnumber the CPUs libgomp
        # cuts its spin-wait: with 2 threads on 2 cores, a batch of 64 titles took 0.65-0.67 s
        # through asyncio.to_thread after a load on another thread, 0.59-0.63 s on one.
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder-torch")
        self._torch.submit(self._load, model_dir, threads).result()
        self.batch_sizes = _batch_histogram("encode")

    def _load(self, model_dir: str, threads: int) -> None:
        import torch

        from egecmp_ray.entities.extract import load_extractor
        from egecmp_ray.model.encoder import ItemEncoder
        from egecmp_ray.model.model_dir import VOCAB_DIR, load_model_dir

        if threads:
            torch.set_num_threads(threads)
        model, cfg = load_model_dir(model_dir)
        if torch.cuda.is_available():
            model = model.cuda()
        self.encoder = ItemEncoder(model, cfg.entities, str(storage.local_input(model_dir) / VOCAB_DIR),
                                   batch_size=256)
        self.extract = load_extractor(cfg.entities.extractor, cfg.entities.max_entities)
        self.dim = 2 * cfg.model.embed_dim
        self._encode([("warm-up", None)])  # first-call costs (jieba, kernels) before traffic

    def reconfigure(self, batching: dict[str, Any]) -> None:
        self.encode.set_max_batch_size(batching["max_batch_size"])
        self.encode.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])

    @serve.batch
    async def encode(self, queries: list[Query]) -> list[np.ndarray]:
        self.batch_sizes.observe(len(queries))
        return list(await self.encode_many(queries))

    async def encode_many(self, queries: list[Query]) -> np.ndarray:
        """A batch the caller already formed (upserted items, a query's entity spans)."""
        return await asyncio.get_running_loop().run_in_executor(self._torch, self._encode,
                                                                queries)

    def _encode(self, queries: list[Query]) -> np.ndarray:
        texts, images = zip(*queries) if queries else ((), ())
        return self.encoder.query_vectors(list(texts), list(images))

    def entities(self, text: str) -> list[str]:
        from egecmp_ray.data.clean import clean_title

        return self.extract(clean_title(text))

    def ready(self) -> dict[str, Any]:
        return {"dim": self.dim}


@serve.deployment(name="Searcher")
class Searcher:
    """Holds one Milvus client. With a Milvus Lite file it is the file's single owner (one
    replica); with a server URI it scales out like the encoder."""

    def __init__(self, index_cfg: dict[str, Any], dim: int, collection: Optional[str]):
        from egecmp_ray.config import IndexConfig
        from egecmp_ray.retrieval.milvus_store import VectorStore

        self.store = VectorStore(IndexConfig(**index_cfg), dim, collection, create=False)
        self.lock = asyncio.Lock()  # one client call at a time: the client is not thread-safe
        self.known_categories = self.store.categories()
        self._absent: dict[str, float] = {}  # category -> when the collection last lacked it
        self.batch_sizes = _batch_histogram("search")

    def __del__(self) -> None:
        """Serve calls this when the replica shuts down: a Lite file's pending writes (items
        upserted through /items) finish before the process goes."""
        store, self.store = getattr(self, "store", None), None
        if store is not None:
            store.close()

    def reconfigure(self, batching: dict[str, Any]) -> None:
        self.search.set_max_batch_size(batching["max_batch_size"])
        self.search.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])

    async def _call(self, fn, *args, **kwargs):
        async with self.lock:
            return await asyncio.to_thread(fn, *args, **kwargs)

    @serve.batch
    async def search(self, requests: list[tuple[np.ndarray, int, str, Optional[str]]]
                     ) -> list[list[dict[str, Any]]]:
        """(vector, top_k, filter expression, title for hybrid or None) each; one Milvus call
        per distinct (filter, dense or hybrid)."""
        self.batch_sizes.observe(len(requests))
        groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
        for i, (_, _, expr, title) in enumerate(requests):
            groups[(expr, title is not None)].append(i)
        out: list[list[dict[str, Any]]] = [[] for _ in requests]
        for (expr, hybrid), idx in groups.items():
            vectors = np.stack([requests[i][0] for i in idx])
            limit = max(requests[i][1] for i in idx)
            if hybrid:
                hits = await self._call(self.store.hybrid_search, vectors,
                                        [requests[i][3] for i in idx], limit, expr, SCALAR_FIELDS)
            else:
                hits = await self._call(self.store.search, vectors, limit, expr, SCALAR_FIELDS)
            for i, row in zip(idx, hits):
                out[i] = row[:requests[i][1]]
        return out

    def has_lexical(self) -> bool:
        """Whether the collection holds the BM25 field hybrid search needs."""
        return self.store.lexical

    async def get(self, ids: list[str], with_vector: bool = False) -> list[dict[str, Any]]:
        return await self._call(self.store.get, ids, with_vector)

    async def upsert(self, batch: dict[str, Any]) -> int:
        n = await self._call(self.store.upsert, batch)
        self.known_categories.update(c for c in batch["category"] if c)
        return n

    async def delete(self, ids: list[str]) -> None:
        await self._call(self.store.delete, ids)

    async def count(self) -> int:
        return await self._call(self.store.count)

    async def categories(self, wanted: Optional[str] = None) -> set[str]:
        """The categories known to this replica. One not among them is looked up in the
        collection (at most every ``CATEGORY_RECHECK_S``): another replica, or an ``egecmp
        index`` run against the same Milvus server, may have added it since this one started."""
        if wanted and wanted not in self.known_categories:  # '' is no category
            checked = self._absent.get(wanted)
            if checked is None or time.monotonic() - checked > CATEGORY_RECHECK_S:
                if await self._call(self.store.has_category, wanted):
                    self.known_categories.add(wanted)
                    self._absent.pop(wanted, None)
                else:
                    if len(self._absent) >= 1024:  # bounded: requests choose these strings
                        self._absent.clear()
                    self._absent[wanted] = time.monotonic()
        return set(self.known_categories)
