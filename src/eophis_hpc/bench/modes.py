"""How much a run of ``eophis-hpc bench`` measures: the kernel plan, the plan-build cases and the
round-trip matrix of each mode (``full``, ``quick``, ``smoke``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import records

KERNEL_PLAN = ("eORCA025", 8, 8, 16, 10)  # grid, px, py, tiles, halo
# (grid, px, py, tiles, target seconds or None); issue 2's targets
PLAN_CASES = {"quick": [("eORCA025", 40, 25, 128, 1.0)],
              "full": [("eORCA025", 40, 25, 128, 1.0), ("eORCA025", 80, 50, 512, None),
                       ("4320x3057", 100, 80, 512, 10.0)]}


@dataclass(frozen=True)
class Mode:
    """How much a run measures: ``full``, ``quick`` or ``smoke`` (the test suite's: the same
    code paths with the fewest rounds)."""

    name: str
    levels: tuple[int, ...]  # kernel message sizes, as level counts
    max_time: float  # seconds per kernel method and size (at least 5 rounds)
    plan_cases: list = field(default_factory=list)
    plan_rounds: int = 3
    quiet_wait: float = 1.0  # seconds, at most, waiting for idle cores before an MPI job
    ping_time: float = 0.2  # seconds per ping-pong size
    overlap: dict = field(default_factory=dict)  # bench.overlap.run_sweep's options

    def roundtrips(self) -> list[dict]:
        make = records.make
        if self.name == "smoke":
            return [make("eORCA05", 1, "float64", (1, 1), 10, "packed"),
                    make("eORCA05", 1, "float64", (2, 1), 10, "datatype")]
        pqs = [(1, 1), (2, 1)]
        if self.name == "quick":
            return [make("eORCA05", 1, "float64", pq, h, s) for s in ("packed", "datatype")
                    for h in (0, 10) for pq in pqs]
        cores = os.cpu_count() or 1
        pqs += [pq for pq in ((1, 2), (2, 2), (4, 2), (4, 4), (8, 4), (8, 8))
                if sum(pq) <= max(4, cores)]
        fields = (("eORCA05", 1, "float64"), ("eORCA025", 1, "float64"), ("eORCA05", 75, "float32"))
        return [make(g, nz, dt, pq, h, s) for g, nz, dt in fields for h in (0, 10)
                for s in ("packed", "datatype") for pq in pqs]

    def steps(self, c: dict) -> dict:
        if self.name == "smoke":
            return {"warmup": 1, "steps": 4}
        return records.steps_for(c, self.name == "quick")


MODES = {"full": Mode("full", (1, 4, 16, 75), 0.5, PLAN_CASES["full"], quiet_wait=5.0,
                      overlap={"x_ms": 20.0, "steps": 40}),
         "quick": Mode("quick", (1, 8, 32), 0.15, PLAN_CASES["quick"],
                       overlap={"x_ms": 10.0, "steps": 15}),
         "smoke": Mode("smoke", (1, 4), 0.01, PLAN_CASES["quick"], plan_rounds=1,
                       quiet_wait=0.0, ping_time=0.01,
                       overlap={"x_ms": 2.0, "steps": 3, "warmup": 1, "ratios": (0.5, 1.5)})}
