"""A closed-loop HTTP load generator (asyncio + aiohttp): N users, each sending its next
request as soon as the last one answered. The reliability tests and ``bench_serve`` share it,
so a figure in the benchmark and a pass in CI come from the same client."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Any, Optional, Sequence

import numpy as np


def percentiles(latencies_ms: Sequence[float]) -> dict[str, Optional[float]]:
    if not latencies_ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p = np.percentile(np.asarray(latencies_ms), [50, 95, 99])
    return {"p50_ms": round(float(p[0]), 2), "p95_ms": round(float(p[1]), 2),
            "p99_ms": round(float(p[2]), 2)}


async def _load(url: str, bodies: Sequence[dict[str, Any]], users: int, duration_s: float,
                path: str) -> dict[str, Any]:
    import aiohttp

    statuses: Counter = Counter()
    latencies: list[float] = []
    errors: Counter = Counter()
    next_body = itertools.cycle(range(len(bodies))).__next__
    t0 = time.perf_counter()
    deadline = t0 + duration_s

    async def user(session) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                async with session.post(url + path, json=bodies[next_body()]) as r:
                    await r.read()
                    statuses[r.status] += 1
                    if r.status == 200:
                        latencies.append((time.perf_counter() - start) * 1000)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors[type(exc).__name__] += 1

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=users)) as session:
        await asyncio.gather(*(user(session) for _ in range(users)))
    elapsed = time.perf_counter() - t0
    ok = statuses.get(200, 0)
    return {"clients": users, "seconds": round(elapsed, 2), "requests": sum(statuses.values()),
            "ok": ok, "qps": round(ok / elapsed, 1),
            "status": {str(k): v for k, v in sorted(statuses.items())},
            "errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
            "client_errors": dict(errors), **percentiles(latencies)}


def run_load(url: str, bodies: Sequence[dict[str, Any]], users: int, duration_s: float,
             path: str = "/search") -> dict[str, Any]:
    """Closed-loop load for ``duration_s``: QPS, p50/p95/p99 of successful requests, status
    counts and connection errors."""
    return asyncio.run(_load(url.rstrip("/"), list(bodies), users, duration_s, path))
