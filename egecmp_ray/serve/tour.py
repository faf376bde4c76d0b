"""A handful of real requests against a running service, as the demo shows them: search by text
and by image, price comparison, a bundle recommendation and one bad request."""

from __future__ import annotations

import base64
import time
from typing import Any

from egecmp_ray.data import storage
from egecmp_ray.data.validate import Limits, row_problem
from egecmp_ray.serve.client import call


def sample_rows(directory: str, n: int = 50) -> list[dict[str, Any]]:
    """Up to ``n`` valid rows from the first Parquet file of a synth split directory."""
    import pyarrow.parquet as pq

    fs, path = storage.resolve(directory)
    files = storage.list_files(fs, path)
    if not files:
        return []
    with fs.open_input_file(files[0]) as f:
        rows = pq.read_table(f).slice(0, 4 * n).to_pylist()
    return [r for r in rows if row_problem(r, Limits()) is None][:n]


def requests_for(queries: list[dict[str, Any]], gallery: list[dict[str, Any]]
                 ) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, path, body) from sample rows: the first multi-label query, a gallery item with an
    image."""
    bundle = next((q for q in queries if len(set(q["labels"])) > 1), queries[0])
    item = next((g for g in gallery if g.get("image")), gallery[0])
    image = {"image": base64.b64encode(item["image"]).decode()} if item.get("image") else {}
    return [
        ("search by text", "/search", {"text": bundle["title"], "top_k": 5}),
        ("search by image", "/search", {**(image or {"text": item["title"]}), "top_k": 5}),
        ("compare (price)", "/compare", {"id": item["item_id"], "top_k": 5, "min_score": 0.0}),
        ("recommend (bundle)", "/recommend", {"text": bundle["title"], "top_k": 2}),
        ("bad request", "/search", {"text": bundle["title"], "top_k": 0}),
    ]


def _first(answer: Any) -> str:
    if not isinstance(answer, dict):
        return str(answer)[:60]
    if "detail" in answer and "error" in answer:
        d = answer["detail"][0]
        return f"{answer['error']}: {d['field']}: {d['message']}"[:70]
    hits = answer.get("hits") or answer.get("offers") or \
        [h for inst in answer.get("instances", []) for h in inst["hits"][:1]]
    if not hits:
        return "no hits"
    h = hits[0]
    extra = f" ({len(answer['instances'])} instances)" if "instances" in answer else ""
    price = f" ¥{h['price']:.2f}" if h.get("price") is not None else ""
    return f"{h['id']} {h.get('label') or h['title'][:16]} {h['score']:.3f}{price}{extra}"


def run_tour(url: str, requests: list[tuple[str, str, dict[str, Any]]]) -> tuple[str, list[int]]:
    """Send each request; returns the printed table and the status codes."""
    lines = [f"{'request':<20} {'status':>6} {'ms':>7}  first answer", "-" * 78]
    statuses = []
    for name, path, body in requests:
        t0 = time.perf_counter()
        status, answer = call(url, path, body)
        statuses.append(status)
        lines.append(f"{name:<20} {status:>6} {(time.perf_counter() - t0) * 1000:>7.1f}  "
                     f"{_first(answer)}")
    return "\n".join(lines), statuses
