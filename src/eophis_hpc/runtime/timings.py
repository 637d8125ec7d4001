"""Per-phase timings of a coupled run with bounded memory (totals plus the last N samples)."""
from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager

import numpy as np


class Timings:
    """Wall-clock seconds per phase (``wait``, ``recv``, ``model``, ``send``, ...) and bytes per
    field. Memory stays flat however long the run: only the last ``keep`` samples are stored."""

    def __init__(self, keep: int = 1000):
        self.keep = keep
        self.total: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.recent: dict[str, deque] = {}
        self.bytes: dict[str, int] = {}
        self.spans: deque | None = None  # (phase, start, end): a timeline, when asked for

    def record_spans(self, last: int) -> None:
        """Keep the ``last`` phases as ``(phase, start, end)`` in ``time.perf_counter``
        seconds (the machine's monotonic clock: comparable between the processes of one
        node), for a timeline; ``summary`` returns them."""
        self.spans = deque(maxlen=last)

    def span(self, phase: str, start: float, end: float) -> None:
        if self.spans is not None:
            self.spans.append((phase, start, end))

    def reset(self) -> None:
        """Forget everything measured so far (e.g. after warm-up steps)."""
        self.total, self.count, self.recent, self.bytes = {}, {}, {}, {}

    def add(self, phase: str, seconds: float) -> None:
        self.total[phase] = self.total.get(phase, 0.0) + seconds
        self.count[phase] = self.count.get(phase, 0) + 1
        self.recent.setdefault(phase, deque(maxlen=self.keep)).append(seconds)

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add_bytes(self, field: str, nbytes: int) -> None:
        self.bytes[field] = self.bytes.get(field, 0) + int(nbytes)

    def median(self, phase: str) -> float:
        samples = self.recent.get(phase)
        return float(np.median(samples)) if samples else 0.0

    def summary(self) -> dict:
        """``{phase: {total, count, median, mean}}`` plus ``bytes`` per field."""
        out = {p: {"total": self.total[p], "count": self.count[p], "median": self.median(p),
                   "mean": self.total[p] / self.count[p]} for p in self.total}
        summary = {"phases": out, "bytes": dict(self.bytes)}
        if self.spans is not None:
            summary["spans"] = [list(s) for s in self.spans]
        return summary

    def table(self, title: str) -> str:
        lines = [title, f"  {'phase':<10} {'calls':>7} {'total s':>10} {'median ms':>10} {'mean ms':>10}"]
        for p in self.total:
            lines.append(f"  {p:<10} {self.count[p]:>7} {self.total[p]:>10.3f} "
                         f"{1e3 * self.median(p):>10.3f} {1e3 * self.total[p] / self.count[p]:>10.3f}")
        for f, b in self.bytes.items():
            lines.append(f"  bytes {f:<14} {b / 1e6:>10.2f} MB")
        return "\n".join(lines)
