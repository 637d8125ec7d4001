"""Copy jobs: the pack or unpack work of one rank of a plan, with two baselines of the same
bytes (``numpy.copyto`` of contiguous arrays, NumPy fancy indexing with a flat index), shared by
the pytest benchmarks, ``eophis-hpc bench`` and the tuner's kernel stage."""
from __future__ import annotations

import time

import numpy as np

import eophis_hpc as eh
from eophis_hpc import kernels


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
        # as the runtime does (transport.mpi._copy_plan): the messages lie back to back in one
        # buffer for one array, so their runs go to the kernel in a single call
        runs = np.ascontiguousarray(np.concatenate([r for r, _ in self.messages]))
        if self.direction == "pack":
            return lambda: kern.pack(self.array, runs, wire)
        return lambda: kern.unpack(wire, self.array, runs, 1.0)

    def output(self) -> np.ndarray:
        """The array the pack or unpack writes."""
        return self.wire if self.direction == "pack" else self.array

    def check(self, method: str) -> None:
        """Run ``method`` once (compiling and touching pages) and compare what it wrote with the
        NumPy reference kernels' output from the same inputs; raises AssertionError if they
        differ. ``copyto`` copies the wire buffer and is not checked."""
        if method == "copyto":
            self.call(method)()
            return
        self.output()[...] = 0
        self.call("numpy")()
        expected = self.output().copy()
        self.output()[...] = 0
        self.call(method)()
        np.testing.assert_array_equal(self.output(), expected,
                                      err_msg=f"{method} {self.direction} differs from numpy")


def _messages(runs_list, wire: np.ndarray, nz: int):
    """``(runs, view)`` pairs cutting ``wire`` into consecutive messages."""
    out, pos = [], 0
    for runs in runs_list:
        n = nz * int(np.sum(runs[:, 2] * runs[:, 3]))
        out.append((runs, wire[pos:pos + n]))
        pos += n
    return out


def make_unpack_job(plan: eh.Plan, nz: int, dtype) -> CopyJob:
    """All messages of the tile with the most blocks (a north-fold tile when there is one),
    unpacked into that tile."""
    senders = {d: [s for (s, dd) in plan.pairs if dd == d] for d in range(plan.n_dst)}
    folded = [d for d in senders if any(plan.unpack_runs(s, d)[:, 4].any() for s in senders[d])]
    tile = max(folded or senders, key=lambda d: sum(len(plan.unpack_runs(s, d)) for s in senders[d]))
    runs_list = [plan.unpack_runs(s, tile) for s in senders[tile]]
    shape = (nz,) + plan.tile_shape_of(tile)
    wire = np.random.default_rng(0).random(
        nz * sum(plan.message_cells(s, tile) for s in senders[tile])).astype(dtype)
    index = np.concatenate([flat_index(r, shape) for r in runs_list])
    return CopyJob("unpack", np.zeros(shape, dtype), wire,
                   _messages(runs_list, wire, nz), index)


def make_pack_job(plan: eh.Plan, nz: int, dtype) -> CopyJob:
    """All messages of the model box with the most runs, packed into one send buffer."""
    receivers = {s: [d for (ss, d) in plan.pairs if ss == s] for s in range(plan.n_src)}
    box = max(receivers, key=lambda s: sum(len(plan.pack_runs(s, d)) for d in receivers[s]))
    runs_list = [plan.pack_runs(box, d) for d in receivers[box]]
    shape = (nz,) + plan.src.boxes[box].shape
    piece = np.random.default_rng(0).random(shape).astype(dtype)
    wire = np.empty(nz * sum(plan.message_cells(box, d) for d in receivers[box]), dtype)
    index = np.concatenate([flat_index(r, shape) for r in runs_list])
    return CopyJob("pack", piece, wire, _messages(runs_list, wire, nz), index)


def sample_times(fn, min_rounds: int = 5, max_time: float = 0.5) -> list[float]:
    """Seconds of each call of ``fn()``, after one warm-up call, over at least ``min_rounds``
    calls and about ``max_time`` seconds (10000 calls at most)."""
    fn()  # warm-up: JIT compilation, page touching
    samples, t_end = [], time.perf_counter() + max_time
    while len(samples) < min_rounds or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 10000:
            break
    return samples


def median_time(fn, min_rounds: int = 5, max_time: float = 0.5) -> float:
    """Median seconds of ``fn()`` over at least ``min_rounds`` calls and about ``max_time``."""
    return float(np.median(sample_times(fn, min_rounds, max_time)))
