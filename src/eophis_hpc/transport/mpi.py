"""MPI transport: the MPMD split of ``MPI.COMM_WORLD``, the intercommunicator, and the two ways
to move one field's runs to or from several peers (persistent packed buffers, or derived
datatypes over the user's memory)."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from .. import kernels
from ..errors import CouplingError, install_abort_hook

TAG_HANDSHAKE = 7001
TAG_CONTROL = 7002
TAG_DATA = 8000  # + field index

ROLES = ("model", "worker")


def wait_all(requests: list, timeout: float | None, what: str, peers=None, peer_label="rank"):
    """Complete ``requests`` like Waitall, but give up after ``timeout`` seconds with a
    CouplingError naming ``what`` and the peers that did not answer (no hang)."""
    MPI = mpi()
    if not requests:
        return
    if timeout is None:
        MPI.Request.Waitall(requests)
        return
    if MPI.Request.Testall(requests):
        return
    t_end = time.monotonic() + timeout
    polls = 0
    while not MPI.Request.Testall(requests):
        polls += 1
        if polls % 512 == 0:
            if time.monotonic() > t_end:
                late = [p for p, r in zip(peers or range(len(requests)), requests) if not r.Test()]
                raise CouplingError(f"{what}: no answer from {peer_label} {late} after {timeout:g} s "
                                    "(a rank stopped or died?); set EOPHIS_HPC_TIMEOUT or "
                                    "timeout= to wait longer")
            os.sched_yield()  # give the core to a co-located rank while waiting


def mpi():
    """The ``mpi4py.MPI`` module, imported (and MPI initialised) on first use only."""
    from mpi4py import MPI
    return MPI


class Link:
    """This rank's side of the MPMD job: its own communicator and the intercommunicator to the
    other side (built by splitting COMM_WORLD by role, so any launch order works)."""

    def __init__(self, role: str, world=None):
        if role not in ROLES:
            raise ValueError(f"Link: role must be one of {ROLES}, got {role!r}")
        MPI = mpi()
        self.role = role
        self.world = MPI.COMM_WORLD if world is None else world
        install_abort_hook()
        # role codes as plain integers (not pickled objects), so a Fortran or C client, which
        # makes the same calls, can take part in the split
        codes = np.empty(self.world.size, dtype=np.int32)
        self.world.Allgather(np.array([ROLES.index(role)], dtype=np.int32), codes)
        roles = [ROLES[c] if 0 <= c < len(ROLES) else "?" for c in codes.tolist()]
        other = ROLES[1 - ROLES.index(role)]
        if other not in roles:
            # every rank sees the same list, so every rank raises: no hang
            raise CouplingError(
                f"no {other} rank in this MPI job ({len(roles)} ranks, all '{role}'): launch both "
                "sides in one job, e.g. mpiexec -n P python ocean.py : -n Q python closure.py "
                "(or eophis-hpc run)", collective=True)
        self.comm = self.world.Split(ROLES.index(role), self.world.rank)
        remote_leader = roles.index(other)
        self.inter = self.comm.Create_intercomm(0, self.world, remote_leader, TAG_HANDSHAKE)
        self.rank, self.size = self.comm.rank, self.comm.size
        self.remote_size = self.inter.remote_size

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Free the communicators (collective over both sides)."""
        if self.inter is not None:
            self.inter.Free()
            self.comm.Free()
            self.inter = self.comm = None


def mpi_float(dtype: np.dtype):
    MPI = mpi()
    return {np.dtype(np.float64): MPI.DOUBLE, np.dtype(np.float32): MPI.FLOAT}[np.dtype(dtype)]


class Route:
    """What moves between this rank and one peer for one field: ``parts`` is a list of
    ``(index, runs)``, ``index`` selecting the 3-D array ``target[index]`` the runs refer to
    (a tile of a batch, or 0 for a model box). The message is the parts' runs in order."""

    def __init__(self, peer: int, parts: list):
        self.peer = peer
        self.parts = [(int(k), np.ascontiguousarray(runs, dtype=np.int64)) for k, runs in parts]
        self.cells = int(sum(np.sum(r[:, 2] * r[:, 3]) for _, r in self.parts))

    def shifted(self, oj: int, oi: int) -> "Route":
        """The same route for an array where the runs' origin sits at ``(oj, oi)``."""
        if oj == 0 and oi == 0:
            return self
        parts = []
        for k, runs in self.parts:
            runs = runs.copy()
            runs[:, 0] += oj
            runs[:, 1] += oi
            parts.append((k, runs))
        return Route(self.peer, parts)


def _datatype(base, itemsize: int, shape: tuple, parts: list, folded_ok: bool):
    """A committed struct datatype for ``parts`` inside a C-ordered 4-D array ``shape``
    (n, nz, ny, nx): plain runs are subarrays; folded runs are hvectors with negative strides,
    so MPI writes them reversed with no packing."""
    MPI = mpi()
    n, nz, ny, nx = shape
    tile_bytes = nz * ny * nx * itemsize
    types, displs, made = [], [], []
    for k, runs in parts:
        for row in runs.tolist():
            dj, di, nj, ni = row[:4]
            fold = row[4] if len(row) > 4 else 0
            if fold:
                if not folded_ok:
                    raise ValueError("folded runs cannot be sent with a datatype")
                r = base.Create_hvector(ni, 1, -itemsize)
                rect = r.Create_hvector(nj, 1, -nx * itemsize)
                t = rect.Create_hvector(nz, 1, ny * nx * itemsize)
                made += [r, rect]
                disp = k * tile_bytes + ((dj + nj - 1) * nx + di + ni - 1) * itemsize
            else:
                t = base.Create_subarray([nz, ny, nx], [nz, nj, ni], [0, dj, di])
                disp = k * tile_bytes
            types.append(t)
            displs.append(disp)
            made.append(t)
    if not types:
        return None
    dt = MPI.Datatype.Create_struct([1] * len(types), displs, types).Commit()
    for t in made:
        t.Free()
    return dt


def _touched(n: int, dtype) -> np.ndarray:
    """A persistent buffer with its pages touched at set-up, not during the first step."""
    buf = np.empty(n, dtype)
    buf.fill(0)
    return buf


def _route_buffers(routes: list, nz: int, dtype, alloc=None):
    """One persistent buffer for all routes (pages touched now) and its slice per route."""
    buf = (alloc or _touched)(sum(r.cells for r in routes) * nz, dtype)
    slices, pos = [], 0
    for r in routes:
        slices.append(buf[pos:pos + r.cells * nz])
        pos += r.cells * nz
    return buf, slices


def _copy_plan(side, offset: tuple[int, int]) -> list:
    """``[(index, runs, buffer part)]`` of a packed Sender/Receiver for runs shifted by
    ``offset``: built once per offset, so a step allocates nothing. Consecutive parts of the
    buffer for the same target index are merged into one kernel call (with one tile per worker,
    a whole receive is one call: the per-call overhead was a fifth of a 1 MB unpack)."""
    cache = side.copy_plans
    plan = cache.get(offset)
    if plan is None:
        spans, pos = [], 0  # [index, [runs...], lo, hi] over the one route buffer
        for r in side.routes:
            for k, runs in r.shifted(*offset).parts:
                n = int(np.sum(runs[:, 2] * runs[:, 3])) * side.nz
                if spans and spans[-1][0] == k and spans[-1][3] == pos:
                    spans[-1][1].append(runs)
                    spans[-1][3] = pos + n
                else:
                    spans.append([k, [runs], pos, pos + n])
                pos += n
        plan = [(k, np.ascontiguousarray(np.concatenate(runs)), side.buf[lo:hi])
                for k, runs, lo, hi in spans]
        cache[offset] = plan
    return plan


class _TypeCache:
    """Committed datatypes per (array shape, dtype, offset): one per route, built on first use."""

    def __init__(self, routes: list[Route], folded_ok: bool):
        self.routes, self.folded_ok, self.cache = routes, folded_ok, {}

    def get(self, target: np.ndarray, offset: tuple[int, int]) -> list:
        key = (target.shape, target.dtype.str, offset)
        if key not in self.cache:
            base = mpi_float(target.dtype)
            self.cache[key] = [_datatype(base, target.itemsize, target.shape,
                                         r.shifted(*offset).parts, self.folded_ok)
                               for r in self.routes]
        return self.cache[key]

    def free(self) -> None:
        for types in self.cache.values():
            for dt in types:
                if dt is not None:
                    dt.Free()
        self.cache = {}


class Sender:
    """Sends one field's runs of a 4-D target to several peers.

    ``packed``: the kernels pack into one persistent buffer, persistent requests send it; the
    target can be anything indexable by tile (``target[k]`` a 3-D array), e.g. a batch whose
    land tiles were left out. ``datatype``: one struct datatype per peer describes the runs over
    the user's memory (a contiguous 4-D array), so nothing is packed; the datatype is cached per
    array shape. ``alloc(n, dtype)`` makes the packed buffer (device memory with CUDA-aware MPI,
    then ``mpi_buf`` wraps its slices for mpi4py and ``sync`` runs between packing and sending).
    """

    def __init__(self, comm, routes: list[Route], nz: int, dtype, tag: int, strategy: str,
                 backend=None, timeout: float | None = None, name: str = "send",
                 peer_label: str = "rank", alloc=None, mpi_buf=None, sync=None):
        self.comm, self.routes, self.nz, self.tag = comm, routes, nz, tag
        self.timeout, self.name, self.peer_label = timeout, name, peer_label
        self.dtype = np.dtype(dtype)
        self.strategy = strategy
        self.kern = kernels.get(backend)
        self.requests = []
        self._pending = None
        self._sync = sync
        self.bytes = sum(r.cells for r in routes) * nz * self.dtype.itemsize
        if strategy == "packed":
            self.buf, self.slices = _route_buffers(routes, nz, self.dtype, alloc)
            wrap = mpi_buf or (lambda b: b)
            self.persistent = [comm.Send_init([wrap(sl), mpi_float(self.dtype)], r.peer, tag)
                               for sl, r in zip(self.slices, routes)]
        self._types = _TypeCache(routes, folded_ok=False)
        self.copy_plans: dict = {}  # offset -> [(index, runs, buffer part)], packed strategy

    def start(self, target: np.ndarray, offset: tuple[int, int] = (0, 0)) -> None:
        """Start sending from ``target`` (n, nz, ny, nx); ``offset`` shifts every run."""
        MPI = mpi()
        self.wait()
        if self.strategy == "packed":
            for k, runs, part in _copy_plan(self, offset):
                self.kern.pack(target[k], runs, part)
            if self._sync is not None:
                self._sync()  # device kernels must finish before MPI reads the buffer
            MPI.Prequest.Startall(self.persistent)
            self.requests = self.persistent
        else:
            types = self._types.get(target, offset)
            self.requests = [self.comm.Isend([target, 1, dt], r.peer, self.tag)
                             for r, dt in zip(self.routes, types)]
            self._pending = target  # keep the memory alive until the send completes

    def wait(self) -> None:
        if self.requests:
            wait_all(self.requests, self.timeout, self.name, [r.peer for r in self.routes],
                     self.peer_label)
            self.requests = []
            self._pending = None

    def close(self) -> None:
        self.wait()
        for req in getattr(self, "persistent", []):
            req.Free()
        self.persistent = []
        self._types.free()


class Receiver:
    """Receives one field's runs from several peers into a 4-D target, then applies the sign of
    folded runs. ``fills`` (per target index, rects) take the fill value before the data lands.

    ``packed``: persistent receives into one buffer, then the kernels unpack (and cast when the
    target's dtype differs from the wire dtype); the target can be anything indexable by tile,
    and a tile that is None is skipped (a land tile left out of the batch). ``datatype``: MPI
    writes straight into the target (a contiguous 4-D array) through struct datatypes
    (persistent when the target is the same array each time). ``alloc``/``mpi_buf`` as for
    :class:`Sender` (the packed buffer in device memory).
    """

    def __init__(self, comm, routes: list[Route], nz: int, dtype, tag: int, strategy: str,
                 fills: dict | None = None, fill: float = 0.0, backend=None,
                 timeout: float | None = None, name: str = "receive", peer_label: str = "rank",
                 alloc=None, mpi_buf=None):
        self.comm, self.routes, self.nz, self.tag = comm, routes, nz, tag
        self.timeout, self.name, self.peer_label = timeout, name, peer_label
        self.fill_value = fill
        self._fills_at: dict = {}  # offset -> {index: fill rects shifted by the offset}
        self.dtype = np.dtype(dtype)
        self.strategy = strategy
        self.fills = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in (fills or {}).items()
                      if len(v)}
        self.kern = kernels.get(backend)
        self.requests = []
        self.bytes = sum(r.cells for r in routes) * nz * self.dtype.itemsize
        self.folded = [(k, runs[runs[:, 4] != 0]) for r in routes for k, runs in r.parts
                       if np.any(runs[:, 4] != 0)]
        self._types = _TypeCache(routes, folded_ok=True)
        self._bound = {}  # (shape, offset, address) -> persistent requests (datatype strategy)
        self.copy_plans: dict = {}  # offset -> [(index, runs, buffer part)], packed strategy
        if strategy == "packed":
            self.buf, self.slices = _route_buffers(routes, nz, self.dtype, alloc)
            wrap = mpi_buf or (lambda b: b)
            self.persistent = [comm.Recv_init([wrap(sl), mpi_float(self.dtype)], r.peer, tag)
                               for sl, r in zip(self.slices, routes)]

    def _fill(self, target, offset) -> None:
        shifted = self._fills_at.get(offset)
        if shifted is None:  # once per offset: a step allocates nothing
            shifted = {}
            for k, rects in self.fills.items():
                rects = rects.copy()
                rects[:, 0] += offset[0]
                rects[:, 1] += offset[1]
                shifted[k] = rects
            self._fills_at[offset] = shifted
        for k, rects in shifted.items():
            if target[k] is None:
                continue
            self.kern.fill(target[k], rects, self.fill_value)

    def post(self, target: np.ndarray | None = None, offset: tuple[int, int] = (0, 0)) -> None:
        """Post the receives (``target`` is needed now only by the datatype strategy)."""
        MPI = mpi()
        if self.requests:
            raise RuntimeError("Receiver.post: the previous receive was not completed")
        if self.strategy == "packed":
            MPI.Prequest.Startall(self.persistent)
            self.requests = self.persistent
            return
        if target.dtype != self.dtype:
            raise TypeError(f"datatype strategy: target dtype {target.dtype} differs from the wire "
                            f"dtype {self.dtype}; use the packed strategy to cast")
        self._fill(target, offset)
        bound = self._bound.get((target.shape, offset, target.ctypes.data))
        if bound is not None:
            MPI.Prequest.Startall(bound)
            self.requests = bound
        else:
            self.requests = [self.comm.Irecv([target, 1, dt], r.peer, self.tag)
                             for r, dt in zip(self.routes, self._types.get(target, offset))]

    def bind(self, target: np.ndarray, offset: tuple[int, int] = (0, 0)) -> None:
        """Datatype strategy: persistent receives into ``target``, a buffer the caller keeps
        alive and posts again and again (the worker's batch)."""
        if self.strategy != "datatype":
            return
        types = self._types.get(target, offset)
        self._bound[(target.shape, offset, target.ctypes.data)] = [
            self.comm.Recv_init([target, 1, dt], r.peer, self.tag)
            for r, dt in zip(self.routes, types)]
        self._keep = target

    def wait(self, target: np.ndarray, offset: tuple[int, int] = (0, 0), sign: float = 1.0) -> None:
        """Complete the receives and leave the field in ``target``."""
        if not self.requests and self.routes:
            raise RuntimeError("Receiver.wait: nothing was posted")
        wait_all(self.requests, self.timeout, self.name, [r.peer for r in self.routes],
                 self.peer_label)
        self.requests = []
        if self.strategy == "packed":
            self._fill(target, offset)
            for k, runs, part in _copy_plan(self, offset):
                dst = target[k]
                if dst is not None:  # None: a tile left out of the batch (land)
                    self.kern.unpack(part, dst, runs, sign)
        elif sign != 1.0:
            oj, oi = offset
            for k, runs in self.folded:
                for dj, di, nj, ni, _ in runs.tolist():
                    target[k, :, oj + dj:oj + dj + nj, oi + di:oi + di + ni] *= target.dtype.type(sign)

    def cancel(self) -> None:
        """Cancel posted receives (at the end of a run, when no more data will come)."""
        MPI = mpi()
        for req in self.requests:
            req.Cancel()
        if self.requests:
            MPI.Request.Waitall(self.requests)
        self.requests = []

    def close(self) -> None:
        self.cancel()
        for req in getattr(self, "persistent", []):
            req.Free()
        self.persistent = []
        for reqs in self._bound.values():
            for req in reqs:
                req.Free()
        self._bound = {}
        self._types.free()
