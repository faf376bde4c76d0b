"""How long this process's threads waited for a CPU, from Linux's per-thread schedstat (time on
a CPU, time runnable on a run queue). A train worker whose cores the control plane, data
readers or other jobs share loses about this share of its step, more where its OpenMP threads
wait on a preempted one; the train loop logs it per window as ``cpu_wait_frac``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

TASKS = Path("/proc/self/task")


def thread_schedstats(tasks: Path = TASKS) -> Optional[dict[int, tuple[int, int]]]:
    """Each live thread's (ns on a CPU, ns runnable but waiting for one); None where the
    kernel does not say (not Linux, or no schedstat)."""
    try:
        tids = os.listdir(tasks)
    except OSError:
        return None
    out = {}
    for tid in tids:
        try:
            run, wait = (tasks / tid / "schedstat").read_text().split()[:2]
        except (OSError, ValueError):
            continue  # the thread ended since the listing
        out[int(tid)] = (int(run), int(wait))
    return out or None


def waited_share(start: Optional[dict[int, tuple[int, int]]],
                 end: Optional[dict[int, tuple[int, int]]]) -> Optional[float]:
    """Of the time the threads were runnable between two readings, the share they waited for a
    CPU (0: never; threads started in between count from zero, ended ones drop out)."""
    if start is None or end is None:
        return None
    run = wait = 0
    for tid, (r, w) in end.items():
        r0, w0 = start.get(tid, (0, 0))
        if r < r0:  # the id was reused by a new thread
            r0 = w0 = 0
        run, wait = run + r - r0, wait + w - w0
    return round(wait / (run + wait), 4) if run + wait > 0 else None
