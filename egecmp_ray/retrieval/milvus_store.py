"""The Milvus collection of item vectors: schema, index parameters from the config, idempotent
upserts by item id, and batched dense, lexical (BM25) and hybrid search.

Each item holds its dense ``vector`` and, for hybrid retrieval, ``lexical`` (its title's
n-grams, :mod:`egecmp_ray.retrieval.lexical`) from which Milvus' own BM25 function derives the
``sparse`` vector, so IDF statistics follow upserts and deletes with no refit.

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
from egecmp_ray.retrieval.fusion import NORMALISERS, fuse
from egecmp_ray.retrieval.lexical import lexical_text

log = logging.getLogger(__name__)

MAX_ID, MAX_TEXT = 256, 4096  # VARCHAR bytes: ids; titles/labels (512 CJK chars fit)
MAX_LEXICAL = 32_768  # n-grams of a 1,024-character title fit
SCALAR_FIELDS = ("label", "title", "price", "category")
LITE_OPEN_WAIT_S = 10.0


def is_lite(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "tcp://", "unix:"))


def escape(value: str) -> str:
    """A string literal body for a Milvus expression (the escapes Milvus Lite accepts)."""
    for raw, esc in (("\\", "\\\\"), ('"', '\\"'), ("'", "\\'"), ("\n", "\\n"),
                     ("\r", "\\r"), ("\t", "\\t")):
        value = value.replace(raw, esc)
    return value


def ids_expression(ids: Sequence[str]) -> str:
    """``id in [...]`` with each id escaped. pymilvus' own ``ids=`` wraps each in quotes
    unescaped, so an id holding a quote broke the expression (a 500) or widened it: deleting
    ``x','other`` deleted ``other``."""
    return "id in [" + ", ".join(f'"{escape(str(i))}"' for i in ids) + "]"


def index_params(cfg: IndexConfig, limit: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(build params, search params) of the configured index type for searches of ``limit``
    hits: ``ef`` is at least the limit (knowhere's HNSW checks ``ef >= k`` on a server, and a
    search with fewer candidates than hits cannot fill them)."""
    if cfg.index_type == "IVF_FLAT":
        return {"nlist": cfg.nlist}, {"nprobe": cfg.nprobe}
    if cfg.index_type == "HNSW":
        return ({"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction},
                {"ef": max(cfg.hnsw_ef, limit)})
    return {}, {}


class VectorStore:
    """One collection in one Milvus (Lite file or server)."""

    def __init__(self, cfg: IndexConfig, dim: int, collection: Optional[str] = None,
                 fresh: bool = False, lexical: bool = True, create: bool = True,
                 consistency: Optional[str] = None):
        """``lexical=False`` creates the collection (when new) without the BM25 field: dense
        search only, for Milvus servers before 2.5, which have no sparse vectors.
        ``create=False`` (serving) opens an existing collection only. ``consistency``: the
        searches' level (None: the collection's default, bounded on a server; ``"Strong"``
        for a job that searches what it just upserted, as ``evaluate`` does)."""
        self._read = {"consistency_level": consistency} if consistency else {}
        self.cfg, self.dim = cfg, dim
        self.name = collection or cfg.collection
        if is_lite(cfg.milvus_uri):
            Path(cfg.milvus_uri).resolve().parent.mkdir(parents=True, exist_ok=True)
        self.client = _open(cfg)
        missing = None if create else _missing(self.client, self.name, cfg)
        if missing is not None:
            _close(self.client, cfg)
            raise missing
        if fresh and self.client.has_collection(self.name):
            self.client.drop_collection(self.name)
        self._ensure(lexical)

    def _ensure(self, lexical: bool) -> None:
        from pymilvus import DataType, Function, FunctionType

        if self.client.has_collection(self.name):
            fields = self.client.describe_collection(self.name)["fields"]
            vec = next(f for f in fields if f["name"] == "vector")
            got = int(vec["params"]["dim"])
            if got != self.dim:
                raise InputError(f"collection {self.name!r} holds {got}-d vectors, this model "
                                 f"makes {self.dim}-d ones: use another --collection")
            self.lexical = any(f["name"] == "sparse" for f in fields)
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
        if lexical:
            schema.add_field("lexical", DataType.VARCHAR, max_length=MAX_LEXICAL,
                             enable_analyzer=True,
                             analyzer_params={"tokenizer": self.cfg.lexical_tokenizer})
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(Function(name="title_bm25", function_type=FunctionType.BM25,
                                         input_field_names=["lexical"],
                                         output_field_names=["sparse"]))
            params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                             params={"bm25_k1": self.cfg.bm25_k1, "bm25_b": self.cfg.bm25_b})
        self.client.create_collection(self.name, schema=schema, index_params=params)
        self.lexical = lexical
        log.info("created collection %s (%d-d, %s, %s; %s) in %s", self.name, self.dim,
                 self.cfg.index_type, self.cfg.metric,
                 f"BM25 over title {self.cfg.lexical_max_ngram}-grams" if lexical
                 else "no BM25 field", self.cfg.milvus_uri)

    def upsert(self, batch: dict[str, Any]) -> int:
        """Insert or replace rows by ``id`` (re-indexing the same items adds no duplicates)."""
        vectors = np.asarray(batch["vector"], dtype=np.float32)
        # Vectors go in as numpy rows (a per-float Python list measured 20% slower).
        rows = [{"id": str(i)[:MAX_ID], "vector": v, "label": _text(lab),
                 "title": _text(t), "price": float(p) if p is not None and p == p else -1.0,
                 "category": _text(c)}
                for i, v, lab, t, p, c in zip(batch["id"], vectors, batch["label"], batch["title"],
                                              batch["price"], batch["category"])]
        if self.lexical:
            for row in rows:
                row["lexical"] = self.lexical_of(row["title"])
        for start in range(0, len(rows), self.cfg.insert_batch):
            self.client.upsert(self.name, rows[start:start + self.cfg.insert_batch])
        return len(rows)

    def get(self, ids: Sequence[str], with_vector: bool = False) -> list[dict[str, Any]]:
        """Stored rows by id: exactly these ids, whatever characters they hold, as of now (a
        strong read: on a server a row just deleted or upserted is not read stale)."""
        if not ids:
            return []
        fields = ["id", *SCALAR_FIELDS, *(["vector"] if with_vector else [])]
        return list(self.client.query(self.name, filter=ids_expression(ids),
                                      output_fields=fields, consistency_level="Strong"))

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(self.name, filter=ids_expression(ids))

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

    def has_category(self, category: str) -> bool:
        return bool(self.client.query(self.name, filter=f'category == "{escape(category)}"',
                                      output_fields=["id"], limit=1, consistency_level="Strong"))

    def count(self, flush: bool = False) -> int:
        """Rows in the collection, those not yet flushed included (a strong read). ``flush``
        first seals them into segments, as a job does once at its end; a Milvus server
        rate-limits flushes (0.1/s a collection by default), so /readyz and /items never do."""
        if flush:
            self.client.flush(self.name)
        res = self.client.query(self.name, filter="", output_fields=["count(*)"],
                                consistency_level="Strong")
        return int(res[0]["count(*)"])

    def index_state(self) -> dict[str, Any]:
        """The vector index after a flush: its type, ``rows``, ``indexed_rows`` and
        ``pending_index_rows``. Rows not yet indexed are searched exactly (Lite), so an ANN
        index is timed only once ``indexed_rows`` reaches ``rows``."""
        self.client.flush(self.name)
        d = self.client.describe_index(self.name, "vector")
        return {"index_type": d.get("index_type"), "rows": int(d.get("total_rows", 0)),
                "indexed_rows": int(d.get("indexed_rows", 0)),
                "pending_index_rows": int(d.get("pending_index_rows", 0))}

    def rebuild_vector_index(self, cfg: IndexConfig, timeout_s: float = 3600.0) -> float:
        """Replace the vector index by ``cfg``'s type and build parameters (the rows stay), and
        wait until every row is indexed; later searches use ``cfg``'s search parameters.
        Returns the seconds the build took."""
        t0 = time.perf_counter()
        self.client.release_collection(self.name)
        self.client.drop_index(self.name, "vector")
        params = self.client.prepare_index_params()
        build, _ = index_params(cfg)
        params.add_index("vector", index_type=cfg.index_type, metric_type=cfg.metric,
                         params=build)
        self.client.create_index(self.name, params)
        self.client.load_collection(self.name)
        self.cfg = cfg
        while True:
            state = self.index_state()
            if state["index_type"] == cfg.index_type and not state["pending_index_rows"] \
                    and state["indexed_rows"] >= state["rows"]:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"{cfg.index_type} index of {self.name!r} not built after "
                                   f"{timeout_s:.0f} s: {state}")
            time.sleep(1.0)

    def search(self, vectors: np.ndarray, top_k: int, filter: str = "",
               output_fields: Sequence[str] = ()) -> list[list[dict[str, Any]]]:
        """Top-``top_k`` hits per query vector, searched ``search_batch`` queries at a time
        (one Milvus call per batch: single queries are several times slower)."""
        _, search = index_params(self.cfg, top_k)
        out: list[list[dict[str, Any]]] = []
        vectors = np.asarray(vectors, dtype=np.float32)
        for start in range(0, len(vectors), self.cfg.search_batch):
            part = vectors[start:start + self.cfg.search_batch]
            res = self.client.search(self.name, data=part.tolist(), limit=top_k, filter=filter,
                                     output_fields=_fields(output_fields),
                                     search_params={"metric_type": self.cfg.metric,
                                                    "params": search}, **self._read)
            out += [_hits(hits) for hits in res]
        return out

    def lexical_of(self, title: Optional[str]) -> str:
        """The indexed text of a title (also what a query's title is searched with)."""
        return _clip(lexical_text(title, self.cfg.lexical_max_ngram), MAX_LEXICAL)

    def _require_lexical(self) -> None:
        if not self.lexical:
            raise InputError(f"collection {self.name!r} has no lexical (BM25) field: it was "
                             "built before hybrid retrieval; re-index it into a new --collection")

    def lexical_search(self, titles: Sequence[str], top_k: int, filter: str = "",
                       output_fields: Sequence[str] = ()) -> list[list[dict[str, Any]]]:
        """BM25 over the title n-grams alone, best first (a server reports BM25 scores as they
        are, Milvus Lite negated: fusion reads their magnitude)."""
        self._require_lexical()
        texts = [self.lexical_of(t) for t in titles]
        out: list[list[dict[str, Any]]] = []
        for start in range(0, len(texts), self.cfg.search_batch):
            part = texts[start:start + self.cfg.search_batch]
            live = [i for i, t in enumerate(part) if t]  # a title of punctuation only: no hits
            res = self.client.search(self.name, data=[part[i] for i in live], anns_field="sparse",
                                     limit=top_k, filter=filter, output_fields=_fields(output_fields),
                                     search_params={"metric_type": "BM25"}, **self._read
                                     ) if live else []
            rows: list[list[dict[str, Any]]] = [[] for _ in part]
            for i, hits in zip(live, res):
                rows[i] = _hits(hits)
            out += rows
        return out

    def hybrid_search(self, vectors: np.ndarray, titles: Sequence[Optional[str]], top_k: int,
                      filter: str = "", output_fields: Sequence[str] = ()
                      ) -> list[list[dict[str, Any]]]:
        """Dense and BM25 hits fused by ``index.hybrid_ranker``: Milvus' ``hybrid_search`` (one
        call per ``search_batch`` queries) for rrf/weighted, both sides' candidates fused here
        for zscore/minmax; a query without title text gets the dense side alone."""
        from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

        self._require_lexical()
        limit = max(top_k, self.cfg.hybrid_candidates)
        if self.cfg.hybrid_ranker in NORMALISERS:
            return fuse(self.search(vectors, limit, filter, output_fields),
                        self.lexical_search(titles, limit, filter, output_fields),
                        self.cfg.hybrid_weights, top_k, self.cfg.hybrid_ranker,
                        dense_higher_better=self.cfg.metric != "L2")
        _, search = index_params(self.cfg, limit)
        ranker = (RRFRanker(self.cfg.rrf_k) if self.cfg.hybrid_ranker == "rrf"
                  else WeightedRanker(*self.cfg.hybrid_weights))
        vectors = np.asarray(vectors, dtype=np.float32)
        texts = [self.lexical_of(t) for t in titles]
        dense_only = [i for i, t in enumerate(texts) if not t]
        out: list[list[dict[str, Any]]] = [[] for _ in texts]
        if dense_only:
            for i, hits in zip(dense_only, self.search(vectors[dense_only], top_k, filter,
                                                       output_fields)):
                out[i] = hits
        live = [i for i, t in enumerate(texts) if t]
        for start in range(0, len(live), self.cfg.search_batch):
            part = live[start:start + self.cfg.search_batch]
            requests = [
                AnnSearchRequest(data=vectors[part].tolist(), anns_field="vector", limit=limit,
                                 param={"metric_type": self.cfg.metric, "params": search},
                                 expr=filter or None),
                AnnSearchRequest(data=[texts[i] for i in part], anns_field="sparse", limit=limit,
                                 param={"metric_type": "BM25"}, expr=filter or None),
            ]
            res = self.client.hybrid_search(self.name, requests, ranker, limit=top_k,
                                            output_fields=_fields(output_fields), **self._read)
            for i, hits in zip(part, res):
                out[i] = _hits(hits)
        return out

    def close(self) -> None:
        """Close the client; with a Lite file also stop its in-process server, which waits
        for Lite's background index writes (a process killed mid-write leaves an index file
        the next owner cannot load). The server is per file and per process: one store each."""
        _close(self.client, self.cfg)


def _open(cfg: IndexConfig):
    """A client of ``cfg.milvus_uri``; a Lite file's previous owner (an actor just killed)
    may take a moment to let go."""
    from pymilvus import MilvusClient

    deadline = time.monotonic() + (LITE_OPEN_WAIT_S if is_lite(cfg.milvus_uri) else 0)
    while True:
        try:
            return MilvusClient(uri=cfg.milvus_uri, token=cfg.token or "")
        except Exception as exc:  # Lite: another process holds the file; server: unreachable
            if time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise InputError(f"index.milvus_uri {cfg.milvus_uri!r}: cannot open Milvus "
                             f"({exc}); a Milvus Lite file has one owner process at a time: "
                             "stop the other one (a running `egecmp serve`?) or use a "
                             "Milvus server URI") from None


def _close(client, cfg: IndexConfig) -> None:
    try:
        client.close()
    finally:
        if is_lite(cfg.milvus_uri):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(cfg.milvus_uri)


def require_collection(cfg: IndexConfig, collection: Optional[str] = None) -> None:
    """An InputError unless the collection exists: serving opens one, never creates it (a
    mistyped ``--collection`` made an empty one and waited for it to fill)."""
    client = _open(cfg)
    try:
        missing = _missing(client, collection or cfg.collection, cfg)
    finally:
        _close(client, cfg)
    if missing is not None:
        raise missing


def _missing(client, name: str, cfg: IndexConfig) -> Optional[InputError]:
    if client.has_collection(name):
        return None
    held = ", ".join(map(repr, sorted(client.list_collections()))) or "none"
    return InputError(f"no collection {name!r} in {cfg.milvus_uri} (it holds {held}): index a "
                      f"gallery into it first (`egecmp index --collection {name} ...`), or name "
                      "one of those with --collection")


def _fields(output_fields: Sequence[str]) -> list[str]:
    """What a search returns besides ids and scores. Never an empty list: Milvus Lite answers
    ``[]`` with every field, the vectors included (100x the bytes; a 2,673-query evaluation
    grew the store actor and the driver to 9 GB each)."""
    return list(output_fields) or ["id"]


def _hits(hits) -> list[dict[str, Any]]:
    return [{"id": h["id"], "score": h["distance"], **h.get("entity", {})} for h in hits]


def _clip(text: str, max_bytes: int) -> str:
    """At most ``max_bytes`` of UTF-8, cut at a token boundary."""
    if len(text.encode("utf-8")) <= max_bytes:
        return text
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore").rsplit(" ", 1)[0]


def _text(value: Any) -> str:
    return "" if value is None else str(value)[:MAX_TEXT // 4]


def close_store_actor(actor, timeout_s: float = 300.0) -> None:
    """Close the store inside ``actor`` (its Lite writes finish), then end the actor. Runs in
    ``finally`` blocks: a store that cannot close is logged, never raised over the first error."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        ray.get(actor.close.remote(), timeout=timeout_s)
    except (GetTimeoutError, RayActorError) as exc:
        log.warning("the Milvus store did not close cleanly (%s); a Lite file may need "
                    "re-indexing", exc)
    finally:
        ray.kill(actor)


def store_actor(cfg: IndexConfig, dim: int, collection: Optional[str] = None, fresh: bool = False,
                consistency: Optional[str] = None):
    """The single owner of the Milvus (Lite) file, as a Ray actor (methods of VectorStore)."""
    import ray

    actor = ray.remote(num_cpus=0)(VectorStore).remote(cfg, dim, collection, fresh,
                                                       consistency=consistency)
    ray.get(actor.count.remote())  # surface a failed open here, not at the first upsert
    return actor

