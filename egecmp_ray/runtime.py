"""Connecting to Ray and logging, shared by every job.

``RAY_ADDRESS`` (set by ``ray job submit`` or by the user) selects an existing cluster;
otherwise a local one is started with this machine's CPUs (or ``EGECMP_NUM_CPUS``). Tests start Ray once per session
and every job reuses it. An address where nothing answers fails within
``EGECMP_RAY_CONNECT_TIMEOUT_S`` (15 s) with one line naming it, instead of Ray's minutes of retries.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from egecmp_ray.config import InputError

log = logging.getLogger("egecmp")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
CONNECT_TIMEOUT_S = 15.0  # how long a cluster that does not answer yet is waited for
# How long a local cluster's raylet keeps an idle worker process past its soft limit (one per
# CPU) when the job asks (``keep_idle_workers``). With Ray's 1 s each preprocess stage started
# its own workers (~3 s of CPU each, to import Ray and pyarrow; 10 starts beside the work at
# 100k rows on 2 CPUs): those one stage's shuffle started were gone by the next one's. An idle
# worker costs ~1% of a core (it wakes ~160 times a second), so jobs that run one long stage
# (training: 7 idle read workers) keep Ray's default.
IDLE_WORKER_KEEP_MS = "600000"
# A batch job's local cluster lives for one job, and nothing scrapes it: recording Ray's
# Prometheus metrics for every task in every worker and exporting them (124 families) is work
# for nobody. Off, `egecmp preprocess` at 40k rows on 2 CPUs ran 5-6% more rows/s (two
# alternating pairs: 1,204 / 1,242 against 1,293 / 1,294); the training step did not change
# (it runs few tasks).
METRICS_OFF = ("RAY_enable_metrics_collection", "0")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def use_scratch_tmpdir() -> str:
    """Send this process's temporary files, and those of the local Ray workers it starts, to a
    directory of this run, removed when the process exits.

    Ray workers are killed, not exited, so their ``multiprocessing`` dirs (``pymp-*``) and the
    modules torch_geometric generates for ``GCNConv`` are never cleaned by their owners; with
    ``TMPDIR`` pointing here they go when the run does. Ray's own session dir stays where Ray
    would have put it (``RAY_TMPDIR``), so its logs outlive the run. Returns the directory; a
    second call in the same process (``egecmp bench`` runs a benchmark whose entry calls it
    too) returns the first one's.
    """
    current = os.environ.get("TMPDIR", "")
    if os.path.basename(current).startswith(f"egecmp-{os.getpid()}-") and os.path.isdir(current):
        return current
    before = tempfile.gettempdir()
    os.environ.setdefault("RAY_TMPDIR", os.environ.get("TMPDIR") or "/tmp")
    scratch = tempfile.mkdtemp(prefix=f"egecmp-{os.getpid()}-", dir=before)
    os.environ["TMPDIR"] = scratch
    tempfile.tempdir = scratch
    # Registered before ray.init registers its own shutdown, so it runs after it (atexit is LIFO).
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch


def default_tmpdir() -> str:
    """Where temporary outputs meant to outlive the run go (the demo's work dir)."""
    scratch = os.environ.get("TMPDIR", "")
    parent = os.path.dirname(scratch)
    return parent if os.path.basename(scratch).startswith("egecmp-") else tempfile.gettempdir()


def interpreter_tools_first() -> None:
    """Put this interpreter's ``bin/`` first on ``PATH`` when it holds a ``ninja``: DeepSpeed
    JIT-builds its CPU op with the first ninja on ``PATH``, and switching between the venv's and
    a system one of another version rebuilt the op each time (~20 s of 2 cores)."""
    bin_dir = os.path.dirname(sys.executable)
    if not os.path.isfile(os.path.join(bin_dir, "ninja")):
        return
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    if not parts or parts[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *(p for p in parts if p != bin_dir)])


def init_ray(num_cpus: Optional[int] = None, keep_idle_workers: bool = False,
             metrics: bool = False) -> None:
    """Connect to ``RAY_ADDRESS`` when set, else start a local cluster; no-op if connected.

    ``EGECMP_NUM_CPUS`` caps a local cluster's CPUs (benchmarks compare 1 and 2 workers).
    ``keep_idle_workers``: a local cluster keeps idle workers for :data:`IDLE_WORKER_KEEP_MS`
    (jobs of several stages); ``RAY_idle_worker_killing_time_threshold_ms``, if set, wins.
    ``metrics``: a local cluster collects Ray's Prometheus metrics (a long-lived service's
    cluster, which something may scrape); a batch job's does not (see
    :data:`METRICS_OFF`); ``RAY_enable_metrics_collection``, if set, wins. A cluster one
    connects to keeps its own settings.
    """
    import ray

    if ray.is_initialized():
        return
    if num_cpus is None and os.environ.get("EGECMP_NUM_CPUS"):
        num_cpus = int(os.environ["EGECMP_NUM_CPUS"])
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray cluster at %s", address)
        check_reachable(address, float(os.environ.get("EGECMP_RAY_CONNECT_TIMEOUT_S",
                                                      CONNECT_TIMEOUT_S)))
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as exc:  # e.g. "auto" with no cluster on this machine
            raise InputError(f"RAY_ADDRESS={address}: {exc}") from None
    else:
        # Local workers import the package from the same place the driver does, whether it is
        # pip-installed or run from a checkout (python jobs/x.py).
        env = {"PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
        # Both read by the GCS, raylet and workers ray.init starts.
        if keep_idle_workers:
            os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", IDLE_WORKER_KEEP_MS)
        if not metrics:
            os.environ.setdefault(*METRICS_OFF)
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


def ray_endpoint(address: str) -> Optional[tuple[str, int]]:
    """(host, port) a ``RAY_ADDRESS`` names: a GCS ``host:port`` or a ``ray://host:port``
    client server; None for the forms Ray resolves itself (``auto``, ``local``, other schemes)."""
    if address in ("auto", "local"):
        return None
    if address.startswith(("http://", "https://")):
        raise InputError(f"RAY_ADDRESS={address} is an HTTP (dashboard / job submission) "
                         "address; jobs connect to the GCS address <head>:6379 or to "
                         "ray://<head>:10001; unset RAY_ADDRESS to run on a local Ray")
    if "://" in address and not address.startswith("ray://"):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"RAY_ADDRESS={address}: expected host:port (the head's GCS address, "
                         "e.g. 10.0.0.1:6379), ray://host:port or auto")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, naming the address, when nothing listens at ``RAY_ADDRESS``: ``ray.init``
    would retry for minutes. A cluster still starting gets ``timeout_s`` to open its port."""
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(endpoint, timeout=max(0.5, deadline - time.monotonic())):
                return
        except OSError as exc:
            if time.monotonic() + 1.0 >= deadline:
                raise InputError(
                    f"RAY_ADDRESS={address}: no Ray cluster answers at {endpoint[0]}:"
                    f"{endpoint[1]} within {timeout_s:.0f} s ({exc.strerror or exc}); start one "
                    "(ray start --head) or unset RAY_ADDRESS to run on a local Ray") from None
            time.sleep(1.0)


@contextlib.contextmanager
def _data_context(**values: Any):
    """Ray Data's current ``DataContext`` with ``values`` set, restored afterwards (datasets
    made inside take them)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = {key: getattr(ctx, key) for key in values}
    for key, value in values.items():
        setattr(ctx, key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            setattr(ctx, key, value)


def unreserved_operators():
    """Ray Data without its per-operator resource reservation, for the preprocess passes.
    With it on (Ray 2.60's default), a map fed by ``from_items`` (``_work/rows`` read one file
    a task) ran one task at a time on a 2-CPU cluster: counting 200k rows took 9.8 s with 2
    CPUs as with 1, 5.8 s without it. The passes are linear chains (read -> map -> write,
    fused), so there is no operator to starve; object-store backpressure stays."""
    return _data_context(op_resource_reservation_enabled=False)


def own_progress():
    """Silence Ray Data's per-operator bars while a job reports its own (rows, rows/s)."""
    return _data_context(enable_progress_bars=False)
