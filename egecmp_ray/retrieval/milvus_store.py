"""The Milvus collection of item vectors: schema, index parameters from the config, idempotent
upserts by item id, and batched search.

Milvus Lite (a local ``.db`` file, the default) allows one process per file, so jobs wrap this
class in a single Ray actor (:func:`store_actor`) that owns the file while many embedders feed
it; a Milvus server URI (``http://host:19530`` + token) works the same way.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from egecmp_ray.config import IndexConfig, InputError

log = logging.getLogger(__name__)

MAX_ID, MAX_TEXT = 256, 4096  # VARCHAR bytes: ids; titles/labels (512 CJK chars fit)
SCALAR_FIELDS = ("label", "title", "price", "category")
LITE_OPEN_WAIT_S = 10.0


def is_lite(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "tcp://", "unix:"))


def index_params(cfg: IndexConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(build params, search params) of the configured index type."""
    if cfg.index_type == "IVF_FLAT":
        return {"nlist": cfg.nlist}, {"nprobe": cfg.nprobe}
    if cfg.index_type == "HNSW":
        return {"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction}, {"ef": cfg.hnsw_ef}
    return {}, {}


class VectorStore:
    """One collection in one Milvus (Lite file or server)."""

    def __init__(self, cfg: IndexConfig, dim: int, collection: Optional[str] = None,
                 fresh: bool = False):
        from pymilvus import MilvusClient

        self.cfg, self.dim = cfg, dim
        self.name = collection or cfg.collection
        if is_lite(cfg.milvus_uri):
            Path(cfg.milvus_uri).resolve().parent.mkdir(parents=True, exist_ok=True)
        # A Lite file's previous owner (an actor just killed) may take a moment to let go.
        deadline = time.monotonic() + (LITE_OPEN_WAIT_S if is_lite(cfg.milvus_uri) else 0)
        while True:
            try:
                self.client = MilvusClient(uri=cfg.milvus_uri, token=cfg.token or "")
                break
            except Exception as exc:  # Lite: another process holds the file; server: unreachable
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise InputError(f"index.milvus_uri {cfg.milvus_uri!r}: cannot open Milvus "
                                 f"({exc}); a Milvus Lite file has one owner process at a time: "
                                 "stop the other one (a running `egecmp serve`?) or use a "
                                 "Milvus server URI") from None
        if fresh and self.client.has_collection(self.name):
            self.client.drop_collection(self.name)
        self._ensure()

    def _ensure(self) -> None:
        from pymilvus import DataType

        if self.client.has_collection(self.name):
            fields = self.client.describe_collection(self.name)["fields"]
            vec = next(f for f in fields if f["name"] == "vector")
            got = int(vec["params"]["dim"])
            if got != self.dim:
                raise InputError(f"collection {self.name!r} holds {got}-d vectors, this model "
                                 f"makes {self.dim}-d ones: use another --collection")
            self.client.load_collection(self.name)
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("label", DataType.VARCHAR, max_length=MAX_TEXT)
        schema.add_field("title", DataType.VARCHAR, max_length=MAX_TEXT)
        schema.add_field("price", DataType.DOUBLE)
        schema.add_field("category", DataType.VARCHAR, max_length=MAX_TEXT)
        params = self.client.prepare_index_params()
        build, _ = index_params(self.cfg)
        params.add_index("vector", index_type=self.cfg.index_type, metric_type=self.cfg.metric,
                         params=build)
        self.client.create_collection(self.name, schema=schema, index_params=params)
        log.info("created collection %s (%d-d, %s, %s) in %s", self.name, self.dim,
                 self.cfg.index_type, self.cfg.metric, self.cfg.milvus_uri)

    def upsert(self, batch: dict[str, Any]) -> int:
        """Insert or replace rows by ``id`` (re-indexing the same items adds no duplicates)."""
        vectors = np.asarray(batch["vector"], dtype=np.float32)
        rows = [{"id": str(i)[:MAX_ID], "vector": v.tolist(), "label": _text(lab),
                 "title": _text(t), "price": float(p) if p is not None and p == p else -1.0,
                 "category": _text(c)}
                for i, v, lab, t, p, c in zip(batch["id"], vectors, batch["label"], batch["title"],
                                              batch["price"], batch["category"])]
        for start in range(0, len(rows), self.cfg.insert_batch):
            self.client.upsert(self.name, rows[start:start + self.cfg.insert_batch])
        return len(rows)

    def get(self, ids: Sequence[str], with_vector: bool = False) -> list[dict[str, Any]]:
        """Stored rows by id (pymilvus quotes the ids: no expression is built from them)."""
        fields = ["id", *SCALAR_FIELDS, *(["vector"] if with_vector else [])]
        return list(self.client.get(self.name, ids=list(ids), output_fields=fields))

    def delete(self, ids: Sequence[str]) -> None:
        self.client.delete(self.name, ids=list(ids))

    def categories(self) -> set[str]:
        """Distinct non-empty categories (read in pages: the collection may be large)."""
        found: set[str] = set()
        it = self.client.query_iterator(self.name, batch_size=10_000, filter="",
                                        output_fields=["category"])
        try:
            while page := it.next():
                found.update(r["category"] for r in page if r["category"])
        finally:
            it.close()
        return found

    def count(self) -> int:
        self.client.flush(self.name)
        res = self.client.query(self.name, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def search(self, vectors: np.ndarray, top_k: int, filter: str = "",
               output_fields: Sequence[str] = ()) -> list[list[dict[str, Any]]]:
        """Top-``top_k`` hits per query vector, searched ``search_batch`` queries at a time
        (one Milvus call per batch: single queries are several times slower)."""
        _, search = index_params(self.cfg)
        out: list[list[dict[str, Any]]] = []
        vectors = np.asarray(vectors, dtype=np.float32)
        for start in range(0, len(vectors), self.cfg.search_batch):
            part = vectors[start:start + self.cfg.search_batch]
            res = self.client.search(self.name, data=part.tolist(), limit=top_k, filter=filter,
                                     output_fields=list(output_fields),
                                     search_params={"metric_type": self.cfg.metric,
                                                    "params": search})
            out += [[{"id": h["id"], "score": h["distance"], **h.get("entity", {})} for h in hits]
                    for hits in res]
        return out

    def close(self) -> None:
        self.client.close()


def _text(value: Any) -> str:
    return "" if value is None else str(value)[:MAX_TEXT // 4]


def store_actor(cfg: IndexConfig, dim: int, collection: Optional[str] = None, fresh: bool = False):
    """The single owner of the Milvus (Lite) file, as a Ray actor (methods of VectorStore)."""
    import ray

    actor = ray.remote(num_cpus=0)(VectorStore).remote(cfg, dim, collection, fresh)
    ray.get(actor.count.remote())  # surface a failed open here, not at the first upsert
    return actor

