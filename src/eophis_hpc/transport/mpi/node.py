"""The ranks of both sides that share a node, and one MPI-3 shared-memory window per field.

Built collectively by every rank of the job (model ranks and workers, in the same order on both
sides: the schedule's field order) when the agreed strategy needs it
(``Strategy.needs_node``). Each rank contributes one segment per field: a worker the batch of an
input field (the tiles with their halo) or the own boxes of an output field's tiles, or nothing
when that field does not use the shared strategy; a model rank its box (``Coupler.buffer``).
Every rank sees the segments of the other side's ranks on its node as NumPy arrays, with the
runs of the plan that rank exchanges with it (:class:`SharedField`), so a transfer is one copy
between the two arrays. Ranks on other nodes do not appear: their data moves over MPI.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ...protocol.wire import ROLES, Route
from .waits import arrive, mpi

# Spread the ranks of each node over this many virtual nodes (world rank modulo), so one machine
# runs the mixed path (peers on the node through windows, the others over MPI): for tests and
# benchmarks only.
NODES_ENV = "EOPHIS_HPC_SHM_NODES"


@dataclass
class SharedPeer:
    """The segment of one rank of the other side on this node and its runs of the messages it
    exchanges with this rank (the same blocks, in the same order, as this rank's route). A
    segment may hold several buffers (slots) of ``rows`` tiles each: a worker's two sets of
    input batches (``Tunnel(pipeline=True)``)."""

    peer: int
    array: np.ndarray
    route: Route
    rows: int

    def slot(self, k: int) -> np.ndarray:
        return self.array[k * self.rows:(k + 1) * self.rows]


@dataclass
class SharedField:
    """One field on this rank: its window, its own segment (4-D, or None) and its peers'."""

    win: object
    mine: np.ndarray | None
    peers: dict = field(default_factory=dict)
    slots: int = 1

    def slot_of(self, target, offset) -> int | None:
        """Which buffer of this rank's segment ``target`` is (so a peer may write into it), or
        None when it is not one of them."""
        seg = self.mine
        if seg is None or not isinstance(target, np.ndarray) or offset != (0, 0):
            return None
        rows = seg.shape[0] // self.slots
        for k in range(self.slots):
            part = seg[k * rows:(k + 1) * rows]
            if (target.shape == part.shape and target.dtype == part.dtype
                    and target.ctypes.data == part.ctypes.data):
                return k
        return None

    def sync(self) -> None:
        """Make this rank's stores visible to the node and the others' visible to it (called
        between a copy and the small message that announces it, on both sides)."""
        self.win.Sync()


class Node:
    """The shared-memory communicator of this node (both sides) and the windows made on it."""

    def __init__(self, link):
        MPI = mpi()
        self.link = link
        self.timeout = link.timeout
        self.who = f"{link.role} rank {link.rank}"
        arrive(link.world, self.timeout, f"{self.who}: splitting the job by node")
        node = link.world.Split_type(MPI.COMM_TYPE_SHARED, key=link.world.rank)
        virtual = int(os.environ.get(NODES_ENV) or 1)
        if virtual > 1:
            self.comm = node.Split(link.world.rank % virtual, link.world.rank)
            node.Free()
        else:
            self.comm = node
        me = np.array([ROLES.index(link.role), link.rank], dtype=np.int64)
        table = np.empty((self.comm.size, 2), dtype=np.int64)
        self.comm.Allgather(me, table)
        other = 1 - ROLES.index(link.role)
        # rank on the other side -> rank in the node communicator
        self.node_rank = {int(r): n for n, (c, r) in enumerate(table.tolist()) if c == other}
        self.windows: list = []

    def on_node(self, peer: int) -> bool:
        return peer in self.node_rank

    def describe(self, peer_label: str) -> str:
        return (f"{len(self.node_rank)} {peer_label}(s) on this node "
                f"{sorted(self.node_rank)} share memory with it")

    def window(self, nbytes: int, itemsize: int):
        """A new window (collective over the node) with this rank's segment of ``nbytes``."""
        MPI = mpi()
        arrive(self.comm, self.timeout, f"{self.who}: making a shared-memory window")
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")  # each segment page-aligned, NUMA-local
        win = MPI.Win.Allocate_shared(nbytes, itemsize, info, comm=self.comm)
        info.Free()
        win.Lock_all(MPI.MODE_NOCHECK)  # passive epoch for Sync; no lock is ever contended
        self.windows.append(win)
        return win

    def segment(self, win, peer: int | None, shape: tuple, dtype) -> np.ndarray | None:
        """The segment of ``peer`` (the other side's rank; None: this rank) as an array of
        ``shape`` (its first size -1: as many as the segment holds), or None when empty."""
        n = self.comm.rank if peer is None else self.node_rank[peer]
        buf, _ = win.Shared_query(n)
        if len(buf) == 0:
            return None
        return np.frombuffer(buf, dtype=dtype).reshape((-1,) + tuple(shape[1:]))

    def close(self) -> None:
        """Free the windows and the communicator (collective over the node: both sides)."""
        if self.comm is not None:
            arrive(self.comm, self.timeout, f"{self.who}: freeing the shared-memory windows")
        for win in self.windows:
            win.Unlock_all()
            win.Free()
        self.windows = []
        if self.comm is not None:
            self.comm.Free()
            self.comm = None


def _rows_of(layout, link) -> int:
    """Tiles per buffer of this rank's segments."""
    return 1 if link.role == ROLES[0] else len(layout.tiles_of[link.rank])


def _route_to(routes: list, peer: int) -> Route | None:
    return next((r for r in routes if r.peer == peer), None)


def share_fields(node: Node, layout, schedule, mine: dict) -> dict:
    """Make one window per field of ``schedule`` (collective, schedule order) with this rank's
    segment of shape ``mine[name]`` (missing or None: empty; a worker's input may hold two sets
    of batches, ``(2 * tiles, ...)``) and return ``{name: SharedField}``. The peers of a field
    are the other side's ranks on this node with a non-empty segment and runs to exchange with
    this rank."""
    link = node.link
    is_model = link.role == ROLES[0]
    me = link.rank
    out = {}
    for spec in schedule.fields.values():
        dtype = np.dtype(spec.dtype)
        shape = mine.get(spec.name)
        nbytes = int(np.prod(shape)) * dtype.itemsize if shape is not None else 0
        win = node.window(nbytes, dtype.itemsize)
        slots = shape[0] // _rows_of(layout, link) if nbytes else 1
        shared = SharedField(win, node.segment(win, None, shape, dtype) if nbytes else None,
                             slots=slots)
        for peer in sorted(node.node_rank) if nbytes else ():  # no segment: MPI for this field
            if is_model:
                w, s = peer, me
                rows = len(layout.tiles_of[w])
                shape_p = (rows, spec.levels) + (
                    layout.batch_shape if spec.direction == "in" else tuple(layout.tile_shape))
            else:
                w, s = me, peer
                rows = 1
                shape_p = (1, spec.levels) + layout.src.boxes[s].shape
            if spec.direction == "in":
                model_routes = layout.model_send_routes(spec.point, s)
                worker_routes = layout.worker_recv_routes(spec.point, w)
            else:
                model_routes = layout.model_recv_routes(spec.point, s)
                worker_routes = layout.worker_send_routes(spec.point, w)
            route = _route_to(worker_routes if is_model else model_routes, s if is_model else w)
            arr = node.segment(win, peer, shape_p, dtype)
            if route is not None and arr is not None:
                shared.peers[peer] = SharedPeer(peer, arr, route, rows)
        out[spec.name] = shared
    return out
