"""Calm progress for long stages: one log line (done / total, rate, ETA) at most every few seconds (Ray-free).

A tqdm bar redraws itself many times a second; where stdout is not a terminal (CI, `ray job submit` logs, a file)
every redraw becomes text. Every long stage — teacher scoring, corpus encoding, re-ranking — reports through one
`Progress` line instead:

    teacher scoring: 1,200/10,000 triples (12%), 35.2 triples/s, ETA 4m10s
"""
from __future__ import annotations

import logging
import time
from typing import Callable

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """45s, 4m10s, 2h05m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts rows of one long stage and logs one line at most every `every` seconds, and once at `close`.

    `done` may start above 0 (rows reused from an earlier run); the rate and ETA count only rows processed here.
    `enabled=False` counts silently. `clock` and `log` are injectable for tests.
    """

    def __init__(self, what: str, total: int, *, unit: str = "rows", done: int = 0, every: float = 20.0,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] | None = None):
        self.what, self.total, self.unit, self.every, self.enabled = what, int(total), unit, float(every), enabled
        self.done = self._start_done = int(done)
        self._clock = clock
        self._log = log or logger.info
        self._start = self._last = clock()

    def rate(self) -> float | None:
        """Rows per second processed here so far (None before any)."""
        elapsed = self._clock() - self._start
        n = self.done - self._start_done
        return n / elapsed if n > 0 and elapsed > 0 else None

    def line(self) -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        out = f"{self.what}: {self.done:,}/{self.total:,} {self.unit}{pct}"
        rate = self.rate()
        if rate is not None:
            out += f", {rate:.3g} {self.unit}/s"
            if self.done < self.total:
                out += f", ETA {format_duration((self.total - self.done) / rate)}"
        return out

    def update(self, n: int) -> None:
        self.done += int(n)
        now = self._clock()
        if self.enabled and now - self._last >= self.every and self.done < self.total:
            self._last = now
            self._log(self.line())

    def close(self) -> None:
        """The final line: how many rows, in how long."""
        if self.enabled:
            self._log(f"{self.line()} in {format_duration(self._clock() - self._start)}")
