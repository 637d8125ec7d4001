"""Overlap of the model's step and the workers' inference (lagged exchanges): the model's time
per step, timed by pytest-benchmark in this process (the model rank; the worker is spawned),
for a synthetic model of X ms and inference of Y ms, Y/X in 0.25, 0.5, 0.9, 1.5, with three
placements of the exchange: ``lag0`` (put, get, compute), ``within`` (put, compute, get) and
``lag1`` (put, get, compute with ``Exchange(lag=1)``), plus the put + get cost alone
(``transfer``: X = Y = 0). See :mod:`eophis_hpc.bench.overlap`.

The table at the end gives each placement's median step and the lag-1 limit of the issue
(X, or Y when Y > X, + put/get + 5% of X); ``extra_info`` of each benchmark holds the median
time in put + get. Figures are medians; the machine's load is printed with them.

Run: ``python -m pytest benchmarks/test_bench_overlap.py --benchmark-enable -p no:cacheprovider -s``
(``EOPHIS_HPC_OVERLAP_X_MS``, default 20; ``EOPHIS_HPC_OVERLAP_STEPS``, default 40).
"""
from __future__ import annotations

import os
import statistics

import pytest

from eophis_hpc.bench import overlap

X_MS = float(os.environ.get("EOPHIS_HPC_OVERLAP_X_MS", "20"))
STEPS = int(os.environ.get("EOPHIS_HPC_OVERLAP_STEPS", "40"))
WARMUP = 3
ROWS: list = []  # what each test measured, for the table at the end


def cases():
    return [(c["label"], c) for c in overlap.configurations(X_MS, 256, 256, 1, STEPS, WARMUP)]


@pytest.mark.parametrize("label,cfg", cases(), ids=[label for label, _ in cases()])
def test_overlap(benchmark, label, cfg):
    with overlap.spawned(cfg) as model:
        for _ in range(WARMUP):
            model.step()
        coupling = []
        benchmark.pedantic(lambda: coupling.append(model.step()), rounds=STEPS, iterations=1)
    benchmark.group = "overlap: model time per step"
    benchmark.extra_info.update(X_ms=cfg["X_ms"], Y_ms=cfg["Y_ms"], mode=cfg["mode"],
                                coupling_median_s=statistics.median(coupling))
    if benchmark.stats is not None:  # --benchmark-disable runs the steps without statistics
        ROWS.append(dict(cfg, step_s=benchmark.stats.stats.median,
                         coupling_s=statistics.median(coupling),
                         samples=list(benchmark.stats.stats.data)))


def test_overlap_table():
    """The sweep's table (after every case ran), with the machine's load."""
    if not ROWS:
        pytest.skip("no timings (run with --benchmark-enable)")
    load = os.getloadavg()
    print("\n" + "\n".join(overlap.markdown(ROWS)))
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    for target, measured, verdict in overlap.targets(ROWS):
        print(f"  {target}: {measured}: {verdict}")
