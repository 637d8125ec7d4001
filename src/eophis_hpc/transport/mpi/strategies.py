"""Transport strategies: how one field's runs become MPI requests and buffers, one class per
strategy, registered by name. The names of :data:`STRATEGIES` are the values the tunnel, the
model client, the settings file, the CLI and the tuner accept: adding a strategy means adding
one class here (or in a module that calls :func:`register`), nothing else.

A strategy instance serves one field in one direction (``send`` or not) between this rank and
its peers (:class:`FieldMove`). ``in_place`` strategies let MPI read or write the caller's
memory (a contiguous 4-D host array of the wire dtype): the tunnel falls back to a strategy
that copies where a batch is not such an array (a cast, stacked channels, land tiles left out,
device buffers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np

from .datatypes import TypeCache
from .waits import mpi, mpi_float

DEFAULT = "shm"           # one copy through shared memory on a node, datatypes between nodes
UNPAIRED = "datatype"     # what workers left on the default use when the model side cannot pair
FALLBACK = "packed"       # what an in_place strategy falls back to


@dataclass
class FieldMove:
    """What one field moves on this rank: its routes (one per peer), levels, wire dtype and tag;
    the kernels (``kern``) for packing; for packed buffers in device memory, ``alloc(n, dtype)``
    makes them, ``mpi_buf`` wraps them for mpi4py and ``sync`` runs between packing and sending;
    the receive side's fill rects (per target index) and fill value; ``sign`` of folded runs
    for strategies that write them on the sending side; ``timeout``, ``what`` and
    ``peer_label`` for waits inside a strategy (bounded, naming the peer); ``shared``: the
    field's shared-memory segments on this node (:class:`.node.SharedField`), or None;
    ``chunk``: the bytes per message of strategies that split messages (None: their default);
    ``peer_base``: a route's peer is rank ``peer - peer_base`` of its side (``comm`` holds both
    sides), for messages and shared segments."""

    comm: object
    routes: list
    nz: int
    dtype: np.dtype
    tag: int
    kern: object
    alloc: Callable | None = None
    mpi_buf: Callable | None = None
    sync: Callable | None = None
    fills: dict = field(default_factory=dict)
    fill_value: float = 0.0
    sign: float = 1.0
    timeout: float | None = None
    what: str = ""
    peer_label: str = "rank"
    shared: object = None
    chunk: int | None = None
    peer_base: int = 0

    def __post_init__(self):
        self.dtype = np.dtype(self.dtype)
        self.fills = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in self.fills.items()
                      if len(v)}
        self._fills_at: dict = {}

    @property
    def cells(self) -> int:
        return sum(r.cells for r in self.routes)

    def fill(self, target, offset: tuple[int, int]) -> None:
        """Set the fill rects of every target tile (shifted by ``offset``) to the fill value."""
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
            if target[k] is not None:
                self.kern.fill(target[k], rects, self.fill_value)


class Strategy:
    """Base class: one field, one direction. Subclasses set ``name`` and ``in_place`` and
    implement the four hooks. ``reads_late``: a send may still read the caller's memory after
    :meth:`start_send` returned (until the mover's ``wait``). ``paired``: both sides must use
    this strategy (agreed at the handshake; ``foreign_hint`` says what a Fortran or C client
    would need for it). ``needs_node``: both sides build the shared-memory windows of their
    node before the movers (:mod:`.node`)."""

    name: ClassVar[str] = ""
    in_place: ClassVar[bool] = False
    reads_late: ClassVar[bool] = False
    paired: ClassVar[bool] = False
    needs_node: ClassVar[bool] = False
    foreign_hint: ClassVar[str] = ""
    doc: ClassVar[str] = ""

    def __init__(self, move: FieldMove, send: bool):
        self.move, self.send = move, send

    def start_send(self, target, offset: tuple[int, int]) -> list:
        """Start sending ``target[k]`` tiles' runs (shifted by ``offset``); the requests."""
        raise NotImplementedError

    def sent(self) -> None:
        """The requests of the last :meth:`start_send` completed."""

    def reusable(self) -> None:
        """Return once the caller may write the memory of the last :meth:`start_send` again
        (after the mover completed its requests): peers that read it late have read it."""

    def post_recv(self, target, offset: tuple[int, int]) -> list:
        """Post the receives (``target`` may be needed now); the requests."""
        raise NotImplementedError

    def finish_recv(self, target, offset: tuple[int, int], sign: float) -> None:
        """The receives completed: leave the field in ``target`` (sign of folded runs)."""
        raise NotImplementedError

    def complete_recv(self, requests: list, wait, target, offset: tuple[int, int],
                      sign: float) -> None:
        """Complete ``requests`` (``wait(requests)`` is bounded and names the late peers) and
        leave the field in ``target``; strategies that unpack as data arrives override it."""
        wait(requests)
        self.finish_recv(target, offset, sign)

    def bind_recv(self, target, offset: tuple[int, int] = (0, 0)) -> None:
        """Receive into ``target`` again and again (a buffer the caller keeps alive)."""

    def close(self) -> None:
        """Free MPI objects (after every request completed or was cancelled)."""


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator adding a strategy to the registry under ``cls.name``."""
    if not cls.name or cls.name in STRATEGIES:
        raise ValueError(f"strategy name {cls.name!r} is empty or already registered")
    STRATEGIES[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    """The registered strategy names (the allowed option values)."""
    return tuple(STRATEGIES)


def check_name(name, where: str) -> str:
    """``name`` if it is a registered strategy, else a ValueError naming ``where``."""
    if name not in STRATEGIES:
        raise ValueError(f"{where}: strategy={name!r} is not one of {names()}")
    return name


def agreement(model: str | None, workers: str, client: str) -> str | None:
    """Why the model side's strategy (None: the workers' choice) cannot work with the workers'
    one, or None. Strategies that need a node work only when both sides use them."""
    theirs = STRATEGIES[workers]
    if client != "python" and theirs.paired:
        return (f"the workers use strategy={workers!r} ({theirs.doc}), which the {client} "
                f"client does not support: {theirs.foreign_hint}; give the workers' Tunnel "
                "strategy='datatype' (or 'packed')")
    if model is None or model == workers:
        return None
    if model not in STRATEGIES:
        return f"connect: strategy={model!r} is not one of {names()}"
    if STRATEGIES[model].paired or theirs.paired:
        return (f"the model asks for strategy={model!r}, the workers use {workers!r}: "
                f"{model if STRATEGIES[model].paired else workers!r} works only when both "
                "sides use it (leave connect's strategy unset to follow the workers)")
    return None


def negotiate(model: str | None, workers: str, explicit: bool, client: str):
    """``(strategy the workers use, error or None)`` for a model side that asks for ``model``
    (None: the workers' choice). Workers whose strategy was not chosen explicitly (argument or
    settings file) follow the model side: its own paired strategy, else :data:`UNPAIRED` when
    theirs is paired and the model side cannot pair with it (a Fortran or C client, or a model
    asking for an unpaired strategy)."""
    if not explicit and STRATEGIES[workers].paired:
        if client != "python":
            workers = UNPAIRED
        elif model in STRATEGIES:
            workers = model if STRATEGIES[model].paired else UNPAIRED
    return workers, agreement(model, workers, client)


def for_field(name: str, why_not_plain: str | None) -> tuple[str, str | None]:
    """The strategy a field uses: ``name``, or the copying fallback (with a note saying why)
    when ``name`` works in place and the field's batch is not a plain host array."""
    if STRATEGIES[name].in_place and why_not_plain:
        return FALLBACK, f"{FALLBACK} strategy ({why_not_plain})"
    return name, None


def route_buffers(move: FieldMove):
    """One persistent buffer for all routes (pages touched now, not at the first step) and its
    slice per route."""
    n = move.cells * move.nz
    if move.alloc is not None:
        buf = move.alloc(n, move.dtype)
    else:
        buf = np.empty(n, move.dtype)
        buf.fill(0)
    slices, pos = [], 0
    for r in move.routes:
        slices.append(buf[pos:pos + r.cells * move.nz])
        pos += r.cells * move.nz
    return buf, slices


@register
class Packed(Strategy):
    """Compiled kernels pack into (unpack from) one persistent buffer; persistent requests move
    it. Works for any target indexable by tile (a batch with land tiles left out, chunked
    outputs, device buffers), and casts in the unpack."""

    name = "packed"
    in_place = False

    def __init__(self, move: FieldMove, send: bool):
        super().__init__(move, send)
        self.buf, self.slices = route_buffers(move)
        wrap = move.mpi_buf or (lambda b: b)
        init = move.comm.Send_init if send else move.comm.Recv_init
        self.persistent = [init([wrap(sl), mpi_float(move.dtype)], r.peer, move.tag)
                           for sl, r in zip(self.slices, move.routes)]
        self.copy_plans: dict = {}

    def _copy_plan(self, offset: tuple[int, int]) -> list:
        """``[(index, runs, buffer part)]`` for runs shifted by ``offset``, built once per
        offset. Consecutive parts of the buffer for the same target index are merged into one
        kernel call (with one tile per worker a whole receive is one call)."""
        plan = self.copy_plans.get(offset)
        if plan is None:
            spans, pos = [], 0  # [index, [runs...], lo, hi] over the one route buffer
            for r in self.move.routes:
                for k, runs in r.shifted(*offset).parts:
                    n = int(np.sum(runs[:, 2] * runs[:, 3])) * self.move.nz
                    if spans and spans[-1][0] == k and spans[-1][3] == pos:
                        spans[-1][1].append(runs)
                        spans[-1][3] = pos + n
                    else:
                        spans.append([k, [runs], pos, pos + n])
                    pos += n
            plan = [(k, np.ascontiguousarray(np.concatenate(runs)), self.buf[lo:hi])
                    for k, runs, lo, hi in spans]
            self.copy_plans[offset] = plan
        return plan

    def start_send(self, target, offset):
        for k, runs, part in self._copy_plan(offset):
            self.move.kern.pack(target[k], runs, part)
        if self.move.sync is not None:
            self.move.sync()  # device kernels must finish before MPI reads the buffer
        mpi().Prequest.Startall(self.persistent)
        return self.persistent

    def post_recv(self, target, offset):
        mpi().Prequest.Startall(self.persistent)
        return self.persistent

    def finish_recv(self, target, offset, sign):
        self.move.fill(target, offset)
        for k, runs, part in self._copy_plan(offset):
            dst = target[k]
            if dst is not None:  # None: a tile left out of the batch (land)
                self.move.kern.unpack(part, dst, runs, sign)

    def close(self):
        for req in self.persistent:
            req.Free()
        self.persistent = []


@register
class Datatype(Strategy):
    """MPI derived datatypes describe the runs over the caller's memory (a contiguous 4-D host
    array of the wire dtype): nothing is packed; folded runs are written reversed by MPI, their
    sign applied after. Receives into a bound buffer are persistent."""

    name = "datatype"
    in_place = True
    reads_late = True

    def __init__(self, move: FieldMove, send: bool):
        super().__init__(move, send)
        self.types = TypeCache(move.routes, folded_ok=not send)
        self.folded = [(k, runs[runs[:, 4] != 0]) for r in move.routes for k, runs in r.parts
                       if not send and np.any(runs[:, 4] != 0)]
        self.bound = {}  # (shape, offset, address) -> persistent receives
        self.pending = None
        self.kept = None

    def start_send(self, target, offset):
        types = self.types.get(target, offset)
        self.pending = target  # keep the memory alive until the send completes
        return [self.move.comm.Isend([target, 1, dt], r.peer, self.move.tag)
                for r, dt in zip(self.move.routes, types)]

    def sent(self):
        self.pending = None

    def post_recv(self, target, offset):
        if target.dtype != self.move.dtype:
            raise TypeError(f"datatype strategy: target dtype {target.dtype} differs from the wire "
                            f"dtype {self.move.dtype}; use the packed strategy to cast")
        self.move.fill(target, offset)
        bound = self.bound.get((target.shape, offset, target.ctypes.data))
        if bound is not None:
            mpi().Prequest.Startall(bound)
            return bound
        return [self.move.comm.Irecv([target, 1, dt], r.peer, self.move.tag)
                for r, dt in zip(self.move.routes, self.types.get(target, offset))]

    def bind_recv(self, target, offset=(0, 0)):
        types = self.types.get(target, offset)
        self.bound[(target.shape, offset, target.ctypes.data)] = [
            self.move.comm.Recv_init([target, 1, dt], r.peer, self.move.tag)
            for r, dt in zip(self.move.routes, types)]
        self.kept = target

    def finish_recv(self, target, offset, sign):
        if sign == 1.0:
            return
        oj, oi = offset
        for k, runs in self.folded:
            for dj, di, nj, ni, _ in runs.tolist():
                target[k, :, oj + dj:oj + dj + nj, oi + di:oi + di + ni] *= target.dtype.type(sign)

    def close(self):
        for reqs in self.bound.values():
            for req in reqs:
                req.Free()
        self.bound = {}
        self.types.free()
