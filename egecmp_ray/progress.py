"""Progress on long work: a tqdm bar on a terminal, a periodic log line otherwise.

Job logs (``ray job logs``, CI) are not terminals; there a bar's carriage returns turn into
noise, so the same counter logs ``done/total, rate`` every few seconds instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional

from tqdm import tqdm

log = logging.getLogger("egecmp.progress")


class Progress:
    def __init__(self, total: Optional[int], desc: str, unit: str = "rows",
                 every_s: float = 10.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done = 0
        self._t0 = self._last = time.perf_counter()
        self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                         dynamic_ncols=True) if sys.stderr.isatty() else None

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            log.info("%s: %s", self.desc, self._status(now))

    def _status(self, now: float) -> str:
        rate = self.done / max(now - self._t0, 1e-9)
        of = f"/{self.total:,}" if self.total else ""
        return f"{self.done:,}{of} {self.unit} ({rate:,.0f} {self.unit}/s)"

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            log.info("%s: done, %s", self.desc, self._status(time.perf_counter()))
