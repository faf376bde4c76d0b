"""The HTTP API: a FastAPI ingress deployment over the encoder and searcher handles.

Every request is validated (``schemas`` then ``validation``) before it reaches the model or the
index; a refused one gets a 4xx whose JSON names the field and why
(``{"error", "detail": [{"field", "message"}]}``). A call whose back-end replica dies is
retried while Serve replaces the replica; what still fails is a 503, never a 500.
(No ``from __future__ import annotations`` here: FastAPI reads the route annotations.)
"""


import asyncio
import logging
import time
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from egecmp_ray.data.validate import Limits
from egecmp_ray.serve.recommend import group_instances
from egecmp_ray.serve.schemas import (CompareRequest, CompareResponse, ErrorResponse, Hit,
                                      RecommendRequest, RecommendResponse, SearchRequest,
                                      SearchResponse, UpsertRequest, UpsertResponse, decode_base64)
from egecmp_ray.serve.validation import (RequestError, check_image, check_items, check_text,
                                         filter_expression, item_row)

log = logging.getLogger(__name__)

ERRORS = {422: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
          413: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
RETRY_S = 20.0  # how long a request waits for a replacement replica before its 503
LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]

app = FastAPI(
    title="egecmp retrieval",
    description="Instance-level product retrieval: search, price comparison, bundle "
                "recommendation and incremental index updates over a Milvus index of EGE-CMP "
                "item vectors.",
    version="1",
)


def _error(status: int, detail: list[dict[str, str]], error: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail})


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [{"field": "body", "message": f"not valid JSON: {e.get('ctx', {}).get('error', e['msg'])}"}
              if e["type"] == "json_invalid" else
              {"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body", "message": e["msg"]}
              for e in exc.errors()]
    return _error(422, detail, "invalid request")


@app.exception_handler(RequestError)
async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    error = {404: "not found", 413: "too large", 503: "unavailable"}.get(exc.status,
                                                                         "invalid request")
    return _error(exc.status, [{"field": exc.field, "message": exc.message}], error)


@app.middleware("http")
async def _limit_and_measure(request: Request, call_next):
    """413 for a body over ``serve.max_body_bytes`` (before it is read), and the app's own
    metrics: requests by endpoint and status, latency."""
    t0 = time.perf_counter()
    limit = getattr(request.app.state, "max_body_bytes", None)
    declared = request.headers.get("content-length")
    if limit and declared and declared.isdigit() and int(declared) > limit:
        response = _error(413, [{"field": "body",
                                 "message": f"{declared} bytes > the limit of {limit}"}],
                          "too large")
    elif limit and declared is None and request.method in ("POST", "PUT"):
        response = _error(411, [{"field": "body", "message": "a Content-Length header is required"}],
                          "length required")
    else:
        response = await call_next(request)
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        tags = {"endpoint": endpoint, "status": str(response.status_code)}
        metrics["requests"].inc(tags=tags)
        metrics["latency"].observe((time.perf_counter() - t0) * 1000, tags={"endpoint": endpoint})
    return response


def _hit(h: dict[str, Any]) -> Hit:
    price = h.get("price")
    return Hit(id=h["id"], score=float(h["score"]), title=h.get("title", ""),
               price=price if price is not None and price >= 0 else None,
               category=h.get("category", ""), label=h.get("label") or None)


def _took(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, encoder, searcher, settings: dict[str, Any]):
        from ray.serve.metrics import Counter, Histogram

        self.encoder, self.searcher = encoder, searcher
        self.s = settings
        self.limits = Limits(**settings["limits"])
        self._lexical: Optional[bool] = None  # the collection has the BM25 field (asked once)
        app.state.max_body_bytes = settings["max_body_bytes"]
        app.state.metrics = {
            "requests": Counter("egecmp_requests", description="HTTP requests by endpoint and status.",
                                tag_keys=("endpoint", "status")),
            "latency": Histogram("egecmp_request_latency_ms", description="Request latency (ms).",
                                 boundaries=LATENCY_MS, tag_keys=("endpoint",)),
        }

    async def _remote(self, method, *args):
        """A back-end call. If its replica died (Serve is starting a new one) it is retried
        for up to ``RETRY_S``; only then does the client get a 503."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                return await method.remote(*args)
            except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
                if time.monotonic() > deadline:
                    raise RequestError("service", f"a back-end replica failed "
                                       f"({type(exc).__name__}); retry later", 503) from None
                log.warning("retrying after a replica failure: %s", type(exc).__name__)
                await asyncio.sleep(0.2)

    def _checked(self, text: Optional[str], image_b64: Optional[str]) -> Optional[bytes]:
        """The query's image bytes, once text and image passed the deployed limits."""
        image = decode_base64(image_b64)
        check_text(text, self.limits)
        check_image(image, self.limits)
        return image

    async def _query_vector(self, text: Optional[str], image_b64: Optional[str]) -> np.ndarray:
        image = self._checked(text, image_b64)
        return await self._remote(self.encoder.encode, (text, image))

    async def _has_lexical(self) -> bool:
        """Whether the collection has the BM25 field: asked once (a collection's schema does
        not change under a running app), not on every hybrid request."""
        if self._lexical is None:
            self._lexical = await self._remote(self.searcher.has_lexical)
        return self._lexical

    async def _search(self, vector: np.ndarray, top_k: int, expr: str = "",
                      title: Optional[str] = None) -> list[dict[str, Any]]:
        """Dense search, or hybrid (dense + BM25 over ``title``) when a title is given."""
        return await self._remote(self.searcher.search, (vector, top_k, expr, title))

    @app.post("/search", response_model=SearchResponse, responses=ERRORS,
              summary="Ranked items for a text and/or image query")
    async def search(self, req: SearchRequest) -> SearchResponse:
        t0 = time.perf_counter()
        if req.mode == "hybrid" and not await self._has_lexical():
            raise RequestError("mode", "'hybrid' needs an index that holds the lexical (BM25) "
                               "field, which this one (built before it) does not; re-index it "
                               "or use 'dense'")
        expr = ""
        if req.filter is not None:
            known = set() if req.filter.category is None else \
                await self._remote(self.searcher.categories, req.filter.category)
            expr = filter_expression(req.filter, known)
        vector = await self._query_vector(req.text, req.image)
        title = (req.text or "") if req.mode == "hybrid" else None  # image only: dense alone
        hits = await self._search(vector, req.top_k, expr, title)
        return SearchResponse(hits=[_hit(h) for h in hits], mode=req.mode, took_ms=_took(t0))

    @app.post("/compare", response_model=CompareResponse, responses=ERRORS,
              summary="The same product from other sellers, cheapest first")
    async def compare(self, req: CompareRequest) -> CompareResponse:
        t0 = time.perf_counter()
        min_score = self.s["compare_min_score"] if req.min_score is None else req.min_score
        if req.id is not None:
            rows = await self._remote(self.searcher.get, [req.id], True)
            if not rows:
                raise RequestError("id", f"no item {req.id!r} in the index", 404)
            vector = np.asarray(rows[0]["vector"], dtype=np.float32)
        else:
            vector = await self._query_vector(req.text, req.image)
        hits = await self._search(vector, self.s["compare_candidates"] + 1)
        same = [h for h in hits if h["id"] != req.id and h["score"] >= min_score]
        same.sort(key=lambda h: (h.get("price") is None or h["price"] < 0, h.get("price") or 0.0))
        return CompareResponse(query_id=req.id, min_score=min_score,
                               offers=[_hit(h) for h in same[:req.top_k]], took_ms=_took(t0))

    @app.post("/recommend", response_model=RecommendResponse, responses=ERRORS,
              summary="A multi-product query's single products, grouped per detected instance")
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        t0 = time.perf_counter()
        image = self._checked(req.text, req.image)
        spans: list[str] = []
        if req.text is not None:
            spans = await self._remote(self.encoder.entities, req.text) or [req.text]
        queries = [(s, None) for s in spans] + ([(None, image)] if image is not None else [])
        vectors = await self._remote(self.encoder.encode_many, queries)
        hits = await asyncio.gather(*(self._search(v, req.top_k * 4) for v in vectors))
        names = spans + (["[image]"] if image is not None else [])
        groups = group_instances(names, list(hits), self.s["recommend_min_score"], req.top_k)
        return RecommendResponse(instances=[{"span": g["span"], "hits": [_hit(h) for h in g["hits"]]}
                                            for g in groups], took_ms=_took(t0))

    @app.post("/items", response_model=UpsertResponse, responses=ERRORS,
              summary="Upsert items (visible to the next search)")
    async def upsert_items(self, req: UpsertRequest) -> UpsertResponse:
        if len(req.items) > self.s["max_upsert_items"]:
            raise RequestError("items", f"{len(req.items)} items > the limit of "
                               f"{self.s['max_upsert_items']} a request", 413)
        images = [decode_base64(it.image) for it in req.items]
        check_items(req.items, images, self.limits)
        vectors = await self._remote(self.encoder.encode_many,
                                     [(it.title, img) for it, img in zip(req.items, images)])
        rows = [item_row(it, img) for it, img in zip(req.items, images)]
        n = await self._remote(self.searcher.upsert, {
            "id": [r["item_id"] for r in rows], "vector": vectors,
            "label": [r["labels"][0] if r["labels"] else "" for r in rows],
            "title": [r["title"] for r in rows], "price": [r["price"] for r in rows],
            "category": [r["category"] for r in rows]})
        return UpsertResponse(upserted=n, total=await self._remote(self.searcher.count))

    @app.delete("/items/{item_id}", responses=ERRORS, summary="Delete an item from the index")
    async def delete_item(self, item_id: str) -> dict[str, Any]:
        if not await self._remote(self.searcher.get, [item_id]):
            raise RequestError("item_id", f"no item {item_id[:80]!r} in the index", 404)
        await self._remote(self.searcher.delete, [item_id])
        return {"deleted": item_id}

    @app.get("/healthz", summary="The process is up")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses=ERRORS, summary="Model loaded, collection reachable and non-empty")
    async def readyz(self) -> JSONResponse:
        try:
            info, count = await asyncio.gather(self.encoder.ready.remote(), self.searcher.count.remote())
        except Exception as exc:  # noqa: BLE001 - any back-end failure means not ready
            return _error(503, [{"field": "service", "message": f"{type(exc).__name__}: {exc}"[:300]}],
                          "not ready")
        if count == 0:
            return _error(503, [{"field": "index", "message": "the collection is empty"}],
                          "not ready")
        return JSONResponse({"status": "ready", "items": count, "dim": info["dim"]})
