"""Pack and unpack bandwidth of each kernel backend on eORCA025-size tiles, against two baselines
moving exactly the same bytes in the same run: ``numpy.copyto`` of contiguous arrays (the memory
roofline) and NumPy fancy indexing with a precomputed flat index (what one would write without
the plan's runs).

Setup: eORCA025 (1440x1206, cyclic, T-pivot fold) split into 8x8 model boxes, sent to 16 worker
tiles with halo 3 or 10. Unpack: the north-fold tile with the most blocks receives all its
messages (sign +1, a scalar field). Pack: the model box with the most runs packs all its
messages into one send buffer. Ratios and tables: see conftest.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

import eophis_hpc as eh
from eophis_hpc.measure.copyjobs import CopyJob, make_pack_job, make_unpack_job

BACKENDS = ("cython", "numba", "numpy")
METHODS = ("copyto", "fancy") + BACKENDS


@dataclass(frozen=True)
class Case:
    halo: int
    nz: int
    dtype: str

    def __str__(self) -> str:
        return f"H{self.halo}-nz{self.nz}-{self.dtype}"


CASES = [Case(3, 1, "float64"), Case(3, 75, "float64"), Case(10, 1, "float64"),
         Case(10, 75, "float64"), Case(10, 75, "float32")]


def eorca025_plan(halo: int) -> eh.Plan:
    grid = eh.Grid.preset("eORCA025")
    return eh.Plan(grid, eh.Decomposition.blocks(grid, 8, 8), eh.Decomposition.auto(grid, 16),
                   halo=halo)


@pytest.fixture(scope="module", params=CASES, ids=str)
def unpack_job(request):
    case = request.param
    return case, make_unpack_job(eorca025_plan(case.halo), case.nz, case.dtype)


@pytest.fixture(scope="module", params=CASES, ids=str)
def pack_job(request):
    case = request.param
    return case, make_pack_job(eorca025_plan(case.halo), case.nz, case.dtype)


def run_benchmark(benchmark, bench_results, job: CopyJob, case: Case, method: str):
    """Check the method moves the right cells (this first call also JIT-compiles and touches the
    pages), then time it and register the result."""
    timed = job.call(method)
    job.check(method)
    benchmark.group = f"{job.direction} {case}"
    benchmark.extra_info["bytes"] = job.nbytes
    benchmark(timed)
    bench_results.add_copy(job.direction, str(case), method, job.nbytes, benchmark)


@pytest.mark.benchmark(max_time=0.5, min_rounds=5)
@pytest.mark.parametrize("method", METHODS)
def test_unpack(benchmark, bench_results, unpack_job, method):
    case, job = unpack_job
    run_benchmark(benchmark, bench_results, job, case, method)


@pytest.mark.benchmark(max_time=0.5, min_rounds=5)
@pytest.mark.parametrize("method", METHODS)
def test_pack(benchmark, bench_results, pack_job, method):
    case, job = pack_job
    run_benchmark(benchmark, bench_results, job, case, method)
