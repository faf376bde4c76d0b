"""What every benchmark shares: machine facts, peak-RSS sampling, JSON + markdown output.

Benchmarks report figures; they never pass or fail on time. Output follows INTERFACE.md:
``{"name", "machine": {"cpus", "gpu", "versions"}, "rows": [...], "summary": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import psutil

_PACKAGES = ("ray", "torch", "deepspeed", "transformers", "torch-geometric", "pymilvus",
             "milvus-lite", "pyarrow", "pillow", "jieba")


def machine_info() -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "gpu": gpu, "platform": platform.platform(), "versions": versions}


class _Periodic:
    """A daemon thread at nice 19 calling ``_tick`` every ``every_s`` while in use (a ``with``
    block), until ``_tick`` returns False. Nice 19 (Linux: a thread's own nice value), as the
    benchmarks' helpers must not take CPU from the run they measure."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tick(self) -> bool:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass
        while not self._stop.is_set():
            if not self._tick():
                return
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class RssSampler(_Periodic):
    """Peak RSS of a process and of its whole tree (Ray's raylet and workers included).
    Once a second, at nice 19: each reading scans every process on the machine; at 4 a second
    it took 0.015 of a core beside a training run on 2 cores, which the plain baselines (no
    tree to scan) did not pay."""

    def __init__(self, pid: int, every_s: float = 1.0):
        super().__init__(every_s)
        self.pid = pid
        self.peak_self = self.peak_tree = 0

    def _tick(self) -> bool:
        try:
            root = psutil.Process(self.pid)
            own = root.memory_info().rss
            tree = own
            for child in root.children(recursive=True):
                try:
                    tree += child.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:  # the process has ended
            return False
        self.peak_self = max(self.peak_self, own)
        self.peak_tree = max(self.peak_tree, tree)
        return True


class ThreadPinner(_Periodic):
    """While in use, pins every thread of the processes below this one whose command line
    contains ``marker`` (a Ray worker's title, say) to ``cores``, re-checked every ``every_s``
    so threads they start later are caught too. A measuring device: it gives one Ray worker a
    core of its own while the rest of its cluster runs on the others (``run_measured``'s
    ``cores``). ``pinned``: the (pid, thread id) pairs it moved."""

    def __init__(self, marker: str, cores: set[int], every_s: float = 0.5):
        super().__init__(every_s)
        self.marker, self.cores = marker, set(cores)
        self.pinned: set[tuple[int, int]] = set()

    def _tick(self) -> bool:
        for proc in psutil.Process().children(recursive=True):
            try:
                if not any(self.marker in part for part in proc.cmdline()):
                    continue
                for thread in proc.threads():
                    if os.sched_getaffinity(thread.id) != self.cores:
                        os.sched_setaffinity(thread.id, self.cores)
                        self.pinned.add((proc.pid, thread.id))
            except (psutil.Error, OSError):  # gone, or a thread ended meanwhile
                continue
        return True


def bench_parser(doc: str | None, config_help: str = "YAML config (egecmp bench passes one)"
                 ) -> argparse.ArgumentParser:
    """The options every benchmark takes (``egecmp bench`` passes --out, --config, --quick);
    a script adds its own to the parser this returns."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results", help="directory for JSON + markdown")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: check the benchmark runs, not figures")
    parser.add_argument("--work", default=None, help="scratch dir [default: a temp dir]")
    parser.add_argument("--config", default=None, help=config_help)
    return parser


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None,
                 cores: set[int] | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall time, exit code, peak RSS (MB) of it and of its process tree.
    ``cores`` pins it, and every process it starts (a local Ray cluster's included), to those
    CPUs (Linux affinity, inherited by children)."""
    t0 = time.perf_counter()
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    proc = subprocess.Popen(list(cmd), env={**os.environ, **(env or {})}, preexec_fn=pin,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with RssSampler(proc.pid) as rss:
        output, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_driver_mb": round(rss.peak_self / 2**20, 1),
            "peak_rss_tree_mb": round(rss.peak_tree / 2**20, 1), "output": output}


def write_results(out_dir: str | Path, name: str, rows: list[dict[str, Any]],
                  summary: dict[str, Any], columns: Sequence[str], notes: str = "") -> Path:
    """``results/bench_<name>.json`` and ``.md`` (a table of ``rows`` by ``columns``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    payload = {"name": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine,
               "rows": rows, "summary": summary}
    path = out / f"bench_{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    lines = [f"# bench_{name}", "",
             f"Machine: {machine['cpus']} CPUs, {machine['memory_gb']} GiB, GPU: {machine['gpu']}; "
             f"ray {machine['versions'].get('ray')}, torch {machine['versions'].get('torch')}; "
             f"{payload['date']}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    lines += ["", "Summary: " + ", ".join(f"`{k}` = {v}" for k, v in summary.items())]
    if notes:
        lines += ["", notes]
    (out / f"bench_{name}.md").write_text("\n".join(lines) + "\n")
    return path
