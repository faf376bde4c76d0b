"""Connecting to Ray and logging, shared by every job.

``RAY_ADDRESS`` (set by ``ray job submit`` or by the user) selects an existing cluster;
otherwise a local one is started with this machine's CPUs (or ``EGECMP_NUM_CPUS``). Tests start Ray once per session
and every job reuses it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Optional

log = logging.getLogger("egecmp")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def init_ray(num_cpus: Optional[int] = None) -> None:
    """Connect to ``RAY_ADDRESS`` when set, else start a local cluster; no-op if connected.

    ``EGECMP_NUM_CPUS`` caps a local cluster's CPUs (benchmarks compare 1 and 2 workers).
    """
    import ray

    if ray.is_initialized():
        return
    if num_cpus is None and os.environ.get("EGECMP_NUM_CPUS"):
        num_cpus = int(os.environ["EGECMP_NUM_CPUS"])
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # Local workers import the package from the same place the driver does, whether it is
        # pip-installed or run from a checkout (python jobs/x.py).
        env = {"PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
        kwargs = dict(num_cpus=num_cpus, logging_level=logging.WARNING, runtime_env={"env_vars": env})
        # Ray Train's state-API checks need the dashboard; without one it only logs warnings,
        # so a dashboard that fails to start (e.g. its port still held) is not fatal.
        want_dashboard = os.environ.get("EGECMP_RAY_DASHBOARD", "1") == "1"
        try:
            ray.init(include_dashboard=want_dashboard, **kwargs)
        except Exception as exc:  # noqa: BLE001 - ray raises plain Exception here
            if not want_dashboard or "dashboard" not in str(exc).lower():
                raise
            log.warning("the Ray dashboard did not start (%s); continuing without it", exc)
            ray.shutdown()
            ray.init(include_dashboard=False, **kwargs)
        log.info("started a local Ray cluster with %s CPUs", ray.cluster_resources().get("CPU"))


@contextlib.contextmanager
def own_progress():
    """Silence Ray Data's per-operator bars while a job reports its own (rows, rows/s)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ctx.enable_progress_bars = before
