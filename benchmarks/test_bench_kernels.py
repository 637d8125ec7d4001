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

import numpy as np
import pytest

import eophis_hpc as eh
from eophis_hpc import kernels

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


def flat_index(runs: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Flat indices into a C-ordered ``shape`` array of the cells of ``runs`` (``j, i, nj, ni``
    and an optional fold flag), in wire order: run after run, level-major, folded runs reversed."""
    nz, ny, nx = shape
    parts = []
    for j0, i0, nj, ni, *fold in runs.tolist():
        j, i = np.arange(nj)[:, None], np.arange(ni)
        if fold and fold[0]:
            j, i = nj - 1 - j, ni - 1 - i
        plane = (j0 + j) * nx + i0 + i
        parts.append((np.arange(nz)[:, None, None] * (ny * nx) + plane).ravel())
    return np.concatenate(parts)


class CopyJob:
    """The arrays of one pack or unpack case and, for each method, the call to time.

    ``messages`` are ``(runs, buffer view)`` pairs over one contiguous wire buffer; ``array`` is
    the packed box or the unpacked tile; ``index`` the flat index of the same cells in wire order.
    """

    def __init__(self, direction: str, array: np.ndarray, wire: np.ndarray, messages, index):
        self.direction, self.array, self.wire = direction, array, wire
        self.messages, self.index = messages, index
        self.nbytes = wire.nbytes
        self.contiguous_out = wire.copy()  # copyto's target, its pages already touched

    def call(self, method: str):
        """The function to time: a kernel backend's name, "copyto" or "fancy"."""
        if method == "copyto":
            return lambda: np.copyto(self.contiguous_out, self.wire)
        flat, wire, index = self.array.reshape(-1), self.wire, self.index
        if method == "fancy":
            if self.direction == "pack":
                return lambda: np.take(flat, index, out=wire)

            def scatter():
                flat[index] = wire
            return scatter
        kern = kernels.get(method)
        if self.direction == "pack":
            def pack_all():
                for runs, buf in self.messages:
                    kern.pack(self.array, runs, buf)
            return pack_all

        def unpack_all():
            for runs, buf in self.messages:
                kern.unpack(buf, self.array, runs, 1.0)
        return unpack_all

    def output(self) -> np.ndarray:
        """The array the pack or unpack writes."""
        return self.wire if self.direction == "pack" else self.array


def _messages(runs_list, wire: np.ndarray, nz: int):
    """``(runs, view)`` pairs cutting ``wire`` into consecutive messages."""
    out, pos = [], 0
    for runs in runs_list:
        n = nz * int(np.sum(runs[:, 2] * runs[:, 3]))
        out.append((runs, wire[pos:pos + n]))
        pos += n
    return out


def make_unpack_job(case: Case) -> CopyJob:
    """All messages of the north-fold tile with the most blocks, unpacked into that tile."""
    plan = eorca025_plan(case.halo)
    senders = {d: [s for (s, dd) in plan.pairs if dd == d] for d in range(plan.n_dst)}
    folded = [d for d in senders if any(plan.unpack_runs(s, d)[:, 4].any() for s in senders[d])]
    tile = max(folded, key=lambda d: sum(len(plan.unpack_runs(s, d)) for s in senders[d]))
    runs_list = [plan.unpack_runs(s, tile) for s in senders[tile]]
    shape = (case.nz,) + plan.tile_shape_of(tile)
    wire = np.random.default_rng(0).random(
        case.nz * sum(plan.message_cells(s, tile) for s in senders[tile])).astype(case.dtype)
    index = np.concatenate([flat_index(r, shape) for r in runs_list])
    return CopyJob("unpack", np.zeros(shape, case.dtype), wire,
                   _messages(runs_list, wire, case.nz), index)


def make_pack_job(case: Case) -> CopyJob:
    """All messages of the model box with the most runs, packed into one send buffer."""
    plan = eorca025_plan(case.halo)
    receivers = {s: [d for (ss, d) in plan.pairs if ss == s] for s in range(plan.n_src)}
    box = max(receivers, key=lambda s: sum(len(plan.pack_runs(s, d)) for d in receivers[s]))
    runs_list = [plan.pack_runs(box, d) for d in receivers[box]]
    shape = (case.nz,) + plan.src.boxes[box].shape
    piece = np.random.default_rng(0).random(shape).astype(case.dtype)
    wire = np.empty(case.nz * sum(plan.message_cells(box, d) for d in receivers[box]), case.dtype)
    index = np.concatenate([flat_index(r, shape) for r in runs_list])
    return CopyJob("pack", piece, wire, _messages(runs_list, wire, case.nz), index)


@pytest.fixture(scope="module", params=CASES, ids=str)
def unpack_job(request):
    return request.param, make_unpack_job(request.param)


@pytest.fixture(scope="module", params=CASES, ids=str)
def pack_job(request):
    return request.param, make_pack_job(request.param)


def expected_output(job: CopyJob) -> np.ndarray:
    """What the NumPy reference kernels (the oracle) produce from the job's inputs."""
    job.output()[...] = 0
    job.call("numpy")()
    return job.output().copy()


def run_benchmark(benchmark, bench_results, job: CopyJob, case: Case, method: str):
    """Check the method moves the right cells (this first call also JIT-compiles and touches the
    pages), then time it and register the result."""
    timed = job.call(method)
    if method != "copyto":
        expected = expected_output(job)
        job.output()[...] = 0
        timed()
        np.testing.assert_array_equal(job.output(), expected)
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
