"""Plan build time on model-size decompositions, and the messages and bytes each rank exchanges.

The build must stay well under a model's start-up cost (issue 2: < 1 s for eORCA025 with ~1000
model boxes, < 10 s for a 4320x3057 grid with ~8000), and the traffic per rank must depend on the
geometry, not on the total number of ranks: with the same 128 tiles, 200, 1000 and 4000 model
boxes must send at most a few messages each, and a tile receives from about as many boxes as
it covers (4000 boxes to 512 tiles as for 1000 to 128). Traffic is for a 75-level float32 field.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import eophis_hpc as eh

HALO = 10


@dataclass(frozen=True)
class PlanCase:
    grid: str
    px: int
    py: int
    tiles: int
    target_s: float | None = None

    def make_grid(self) -> eh.Grid:
        if self.grid == "eORCA025":
            return eh.Grid.preset("eORCA025")
        return eh.Grid(nx=4320, ny=3057, east_west="cyclic", north="fold", pivot="T")

    def __str__(self) -> str:
        return f"{self.grid}-{self.px}x{self.py}-to-{self.tiles}"


PLAN_CASES = [
    PlanCase("eORCA025", 20, 10, 128),
    PlanCase("eORCA025", 40, 25, 128, target_s=1.0),
    PlanCase("eORCA025", 80, 50, 128),
    PlanCase("eORCA025", 80, 50, 512),
    PlanCase("4320x3057", 100, 80, 512, target_s=10.0),
]


def traffic_summary(plan: eh.Plan) -> dict:
    """Max and median messages (and max bytes) per source and per destination rank, one box or
    tile per rank, for a scatter and a gather of a 75-level float32 field."""
    traffic = plan.traffic(nz=75, itemsize=4)
    out = {}
    for direction, src_key, dst_key in (("scatter", "send", "recv"), ("gather", "recv", "send")):
        for side, key in (("src", src_key), ("dst", dst_key)):
            msgs = np.array(list(traffic[direction][f"{key}_messages"].values()))
            nbytes = np.array(list(traffic[direction][f"{key}_bytes"].values()))
            out[f"{direction}_msgs_per_{side}_max"] = int(msgs.max())
            out[f"{direction}_msgs_per_{side}_median"] = float(np.median(msgs))
            out[f"{direction}_bytes_per_{side}_max"] = int(nbytes.max())
    return out


@pytest.mark.parametrize("case", PLAN_CASES, ids=str)
def test_plan_build(benchmark, bench_results, case):
    grid = case.make_grid()
    src = eh.Decomposition.blocks(grid, case.px, case.py)
    dst = eh.Decomposition.auto(grid, case.tiles)
    benchmark.group = "plan build"
    plan = benchmark.pedantic(eh.Plan, args=(grid, src, dst), kwargs={"halo": HALO},
                              rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(n_src=plan.n_src, n_dst=plan.n_dst, halo=HALO,
                                messages=len(plan.pairs), **traffic_summary(plan))
    bench_results.add_plan(f"{case.grid} {plan.n_src}->{plan.n_dst}", case.target_s, benchmark)
