"""The ``pipelined`` strategy: each route's message split into chunks of about ``chunk`` bytes,
so packing chunk k + 1 overlaps the transfer of chunk k and the receiver unpacks each chunk as
it arrives; a chunk that is one contiguous piece of the caller's array on this side is sent from
(received into) that memory with no copy at all.

The chunks are cut the same way on both sides, from the route's blocks alone (sizes, levels,
dtype), so both sides must use this strategy with the same chunk size (agreed at the
handshake): a block of at least ``chunk`` bytes is cut along its levels and rows into chunks of
its own; smaller blocks are grouped, in message order, up to ``chunk`` bytes. Whether a chunk is
contiguous in memory is each side's own business (the model's box, the worker's batch with its
halo).
"""
from __future__ import annotations

import time

import numpy as np

from .strategies import FieldMove, Strategy, register, route_buffers
from .waits import mpi, mpi_float, wait_some

DEFAULT_CHUNK = 1 << 20  # bytes per message; eophis_hpc.toml's pipeline_chunk, the tuner's


def blocks_of(route) -> list[tuple]:
    """``(k, j, i, nj, ni, fold)`` of every block of a route, in message order."""
    out = []
    for k, runs in route.parts:
        for row in runs.tolist():
            out.append((k, row[0], row[1], row[2], row[3], row[4] if len(row) > 4 else 0))
    return out


def _pieces(block: tuple, nz: int, f0: int, f1: int) -> list[tuple]:
    """Rows ``[f0, f1)`` of a block flattened over (level, row), as pieces ``(k, k0, k1, j, i,
    nj, ni, fold)`` of whole rows of one level range (folded rows are reversed)."""
    k, j, i, nj, ni, fold = block
    out = []
    f = f0
    while f < f1:
        lev, r0 = divmod(f, nj)
        if r0 == 0 and f1 - f >= nj:  # whole levels
            n_lev = (f1 - f) // nj
            out.append((k, lev, lev + n_lev, j, i, nj, ni, fold))
            f += n_lev * nj
            continue
        r1 = min(nj, r0 + f1 - f)
        jj = j + nj - r1 if fold else j + r0
        out.append((k, lev, lev + 1, jj, i, r1 - r0, ni, fold))
        f += r1 - r0
    return out


def chunk_messages(blocks: list[tuple], nz: int, itemsize: int, chunk: int) -> list[list]:
    """The messages of one route: lists of pieces, cut the same way on both sides."""
    messages, group, group_bytes = [], [], 0
    for blk in blocks:
        nj, ni = blk[3], blk[4]
        nbytes = nz * nj * ni * itemsize
        if nbytes == 0:
            continue
        if nbytes >= chunk:
            if group:
                messages.append(group)
                group, group_bytes = [], 0
            rows = nz * nj
            step = max(1, chunk // (ni * itemsize))
            for f0 in range(0, rows, step):
                messages.append(_pieces(blk, nz, f0, min(rows, f0 + step)))
            continue
        if group and group_bytes + nbytes > chunk:
            messages.append(group)
            group, group_bytes = [], 0
        group.append(_pieces(blk, nz, 0, nz * nj)[0])
        group_bytes += nbytes
    if group:
        messages.append(group)
    return messages


def _cells(piece) -> int:
    _, k0, k1, _, _, nj, ni, _ = piece
    return (k1 - k0) * nj * ni


@register
class Pipelined(Strategy):
    """Chunked messages: pack of chunk k + 1 overlaps the transfer of chunk k, unpack as chunks
    arrive, contiguous chunks in place. Any target (land tiles, casts, chunked outputs) works;
    only a plain host array of the wire dtype is used in place."""

    name = "pipelined"
    doc = "chunked messages"
    in_place = False
    reads_late = True
    paired = True
    foreign_hint = ("it would need to cut each message of its table into the same chunks "
                    "(a block of at least pipeline_chunk bytes on its own, along levels and "
                    "rows; smaller blocks grouped) and post one request per chunk")

    def __init__(self, move: FieldMove, send: bool):
        super().__init__(move, send)
        self.chunk = int(move.chunk or DEFAULT_CHUNK)
        itemsize = move.dtype.itemsize
        self.buf, slices = route_buffers(move)
        self.messages = []  # (route index, peer, pieces, buffer slice), round-robin over routes
        per_route = [chunk_messages(blocks_of(r), move.nz, itemsize, self.chunk)
                     for r in move.routes]
        for n in range(max((len(m) for m in per_route), default=0)):
            for ridx, (r, msgs) in enumerate(zip(move.routes, per_route)):
                if n < len(msgs):
                    self.messages.append([ridx, r.peer, msgs[n], None])
        pos = [0] * len(move.routes)
        for m in self.messages:  # each message's part of its route's buffer, in route order
            ridx = m[0]
            size = sum(_cells(p) for p in m[2])
            m[3] = slices[ridx][pos[ridx]:pos[ridx] + size]
            pos[ridx] += size
        self.runs = [[np.array([[p[3], p[4], p[5], p[6], p[7]]], dtype=np.int64) for p in m[2]]
                     for m in self.messages]
        self.pending = []   # requests of the last start_send / post_recv
        self.landed = None  # per message of a receive: the target view written in place
        self.kept = None

    # ------------------------------------------------------------------ helpers
    def _in_place(self, target, offset, n: int):
        """The target memory of message ``n`` when it is one contiguous piece of a host array
        of the wire dtype (then MPI reads or writes it directly), else None."""
        pieces = self.messages[n][2]
        if len(pieces) != 1:
            return None
        k, k0, k1, j, i, nj, ni, fold = pieces[0]
        if fold:
            return None
        tile = target[k]
        if not isinstance(tile, np.ndarray) or tile.dtype != self.move.dtype:
            return None
        oj, oi = offset
        view = tile[k0:k1, oj + j:oj + j + nj, oi + i:oi + i + ni]
        return view if view.flags.c_contiguous else None

    def _views(self, target, offset, n: int):
        """``[(3-D array or None, runs, cells)]`` of message ``n``'s pieces, the runs shifted by
        ``offset`` (None: a tile left out of the batch)."""
        out = []
        oj, oi = offset
        for p, runs in zip(self.messages[n][2], self.runs[n]):
            tile = target[p[0]]
            if offset != (0, 0):
                runs = runs.copy()
                runs[:, 0] += oj
                runs[:, 1] += oi
            out.append((None if tile is None else tile[p[1]:p[2]], runs, _cells(p)))
        return out

    def _mpi(self, arr):
        wrap = self.move.mpi_buf or (lambda b: b)
        return [wrap(arr.reshape(-1)) if isinstance(arr, np.ndarray) else wrap(arr),
                mpi_float(self.move.dtype)]

    # ------------------------------------------------------------------ sending
    def start_send(self, target, offset):
        MPI = mpi()
        comm, tag, kern = self.move.comm, self.move.tag, self.move.kern
        reqs = []
        for n, (_, peer, _, part) in enumerate(self.messages):
            view = self._in_place(target, offset, n)
            if view is None:
                pos = 0
                for src, runs, size in self._views(target, offset, n):
                    kern.pack(src, runs[:, :4], part[pos:pos + size])
                    pos += size
                view = part
                if self.move.sync is not None:
                    self.move.sync()
            reqs.append(comm.Isend(self._mpi(view), peer, tag))
            MPI.Request.Testall(reqs)  # progress the chunks in flight while packing the next
        self.pending = reqs
        return reqs

    def sent(self):
        self.pending = []

    # ------------------------------------------------------------------ receiving
    def post_recv(self, target, offset):
        self.move.fill(target, offset)
        comm, tag = self.move.comm, self.move.tag
        reqs, self.landed = [], []
        for n, (_, peer, _, part) in enumerate(self.messages):
            view = self._in_place(target, offset, n) if target is not None else None
            self.landed.append(view is not None)
            reqs.append(comm.Irecv(self._mpi(part if view is None else view), peer, tag))
        self.pending = reqs
        return reqs

    def complete_recv(self, requests, wait, target, offset, sign):
        """Unpack each chunk as it arrives; every wait bounded, naming the late peers."""
        move = self.move
        left = set(range(len(requests)))
        t_end = None if move.timeout is None else time.monotonic() + move.timeout
        while left:
            done = wait_some(requests, t_end, move.what, move.peer_label,
                             lambda: sorted({self.messages[n][1] - move.peer_base for n in left}),
                             move.timeout)
            for n in done:
                left.discard(n)
                if not self.landed[n]:
                    self._unpack(target, offset, sign, n)
        self.pending = []

    def _unpack(self, target, offset, sign, n: int) -> None:
        part, pos = self.messages[n][3], 0
        for dst, runs, size in self._views(target, offset, n):
            if dst is not None:
                self.move.kern.unpack(part[pos:pos + size], dst, runs, sign)
            pos += size

    def finish_recv(self, target, offset, sign):
        for n in range(len(self.messages)):
            if not self.landed[n]:
                self._unpack(target, offset, sign, n)

    def close(self):
        self.pending = []
