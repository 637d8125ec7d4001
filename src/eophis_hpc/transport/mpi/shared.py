"""The ``shm`` strategy: one copy per direction between ranks of one node, through the MPI-3
shared-memory windows of :mod:`.node`; peers on other nodes keep an MPI strategy
(``Shared.remote``) within the same exchange.

Each side of a field has a segment: the worker's batch (input) or its tiles' own boxes
(output), the model rank's box (``Coupler.buffer``). Per transfer and on-node peer:

1. the receiver says READY (a one-integer message) once its target may be written, and whether
   that target *is* its segment (then the sender may write straight into it);
2. the sender copies: into the receiver's segment (push) when it may, else into its own segment
   unless its data already is there; then it says DONE, and whether the data is in place; a
   segment filled by the sender says DONE after every megabyte of rows;
3. the receiver copies the sender's segment into its target when the data is not in place,
   rows as they are announced (so both copies run at once).

So a model rank's ``put`` packs straight into the workers' batches (halo, folds and signs
included, all model ranks in parallel), a ``put`` of a ``Coupler.buffer`` array costs the model
nothing (the worker copies), and a ``get`` into a buffer is written by the worker. Every wait is
bounded by the timeout and names the peer; ``SharedField.sync`` orders the copies and messages.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from ...kernels import numpy_ref
from .strategies import STRATEGIES, FieldMove, Strategy, register
from .waits import mpi, wait_all, wait_some

# Tokens use the field's tag: a rank exchanges either tokens or data with a peer, never both.
READ_FROM_YOU = 0  # the receiver's READY; WRITE_INTO_ME + k: write into buffer k of my segment
WRITE_INTO_ME = 1
IN_PLACE = -1                         # the sender's DONE: written into the receiver's segment;
# else DONE counts the rows of the sender's segment (flattened over tiles and levels) that are
# ready: the sender stages STAGE_BYTES of rows at a time and says so after each step, so the
# receiver copies rows out while the sender stages the next ones (two copies in parallel).
STAGE_BYTES = int(os.environ.get("EOPHIS_HPC_SHM_STAGE") or 1 << 20)  # bytes of rows per step
# Copies into or out of a segment of at least this many bytes write around the caches
# (streaming stores): the data would not stay in them, and skipping the read of every
# destination line first saves a third of the memory traffic.
STREAM_BYTES = int(os.environ.get("EOPHIS_HPC_SHM_STREAM") or 16 << 20)


def stage_rows(shape, itemsize: int) -> int:
    """Rows of a segment of ``shape`` staged per step (both sides compute it)."""
    return max(1, STAGE_BYTES // max(1, shape[-1] * itemsize))


def block_table(route) -> np.ndarray:
    """``(n, 6)`` blocks ``k, j, i, nj, ni, fold`` of a route, in message order."""
    rows = []
    for k, runs in route.parts:
        blk = np.zeros((len(runs), 6), dtype=np.int64)
        blk[:, 0] = k
        blk[:, 1:5] = runs[:, :4]
        if runs.shape[1] > 4:
            blk[:, 5] = runs[:, 4]
        rows.append(blk)
    return np.concatenate(rows) if rows else np.zeros((0, 6), dtype=np.int64)


def pair_blocks(src_blocks, src_off, dst_blocks, dst_off) -> list[tuple]:
    """The copies from one side's blocks to the matching blocks of the other, shifted by the
    offsets: ``[(ks, kd, blocks)]`` with ``blocks`` the ``(sj, si, dj, di, nj, ni, fold)`` rows
    of the copy kernel, one entry per pair of tiles (a folded block is written reversed)."""
    sj0, si0 = src_off
    dj0, di0 = dst_off
    pairs: dict = {}
    for (ks, sj, si, nj, ni, f1), (kd, dj, di, _, _, f2) in zip(src_blocks.tolist(),
                                                                 dst_blocks.tolist()):
        pairs.setdefault((ks, kd), []).append(
            (sj0 + sj, si0 + si, dj0 + dj, di0 + di, nj, ni, 1 if f1 or f2 else 0))
    return [(ks, kd, np.array(rows, dtype=np.int64)) for (ks, kd), rows in pairs.items()]


def copy_pairs(copy, src, dst, pairs, sign: float, stream: bool) -> None:
    """Run ``pair_blocks``' copies from ``src`` to ``dst`` (indexable by tile) with the copy
    kernel; the dtype cast happens in the copy."""
    for ks, kd, blocks in pairs:
        if dst[kd] is not None:  # None: a tile left out of the batch
            copy(src[ks], dst[kd], blocks, sign, stream)


def read_pieces(src_blocks, src_shape, dst_blocks, itemsize: int) -> list[tuple]:
    """The copies out of a sender's segment of ``src_shape`` in the order its rows become ready:
    ``(rows needed, ks, level, row, nrows, si, ni, kd, dj, di, fold)`` per block, level and slab
    of staged rows (a folded block is one piece per level: it is written reversed)."""
    _, nz, NJ, _ = src_shape
    step = stage_rows(src_shape, itemsize)
    out = []
    for (ks, sj, si, nj, ni, f1), (kd, dj, di, _, _, f2) in zip(src_blocks.tolist(),
                                                                 dst_blocks.tolist()):
        fold = f1 or f2
        for lev in range(nz):
            base = (ks * nz + lev) * NJ
            if fold:
                out.append((base + sj + nj, ks, lev, sj, nj, si, ni, kd, dj, di, 1))
                continue
            a = sj
            while a < sj + nj:
                b = min(sj + nj, ((base + a) // step + 1) * step - base)
                out.append((base + b, ks, lev, a, b - a, si, ni, kd, dj + a - sj, di, 0))
                a = b
    out.sort(key=lambda p: p[0])
    return out


@register
class Shared(Strategy):
    """MPI-3 shared-memory windows between ranks of one node: one copy per direction, done by
    the rank that has the data or the one that needs it; small messages synchronise. Routes to
    peers on other nodes (or without a segment) use ``remote``."""

    name = "shm"
    doc = "shared-memory windows on each node"
    in_place = True
    reads_late = True   # through the remote strategy
    paired = True
    needs_node = True
    remote = "datatype"
    foreign_hint = ("it would need MPI_Comm_split_type over the joined communicator, one "
                    "MPI_Win_allocate_shared per field in the schedule's order, and the block "
                    "copies of its table (with the tokens) in place of its datatypes")

    def __init__(self, move: FieldMove, send: bool):
        super().__init__(move, send)
        shared = move.shared
        peers = shared.peers if shared is not None else {}
        self.shared = shared
        base = move.peer_base
        self.local = [r for r in move.routes if r.peer - base in peers]
        self.order = [(r.peer - base in peers) for r in move.routes]
        far = [r for r in move.routes if r.peer - base not in peers]
        self.far = None
        if far:
            self.far = STRATEGIES[self.remote](dataclasses.replace(move, routes=far, fills={}),
                                               send)
        self.copy = move.kern.copy or numpy_ref.copy
        self.pairs: dict = {}  # (peer, offset) -> copies into the peer's segment
        self.piece_blocks: dict = {}  # (local peer, offset) -> read pieces as kernel blocks
        self.stage_plans: dict = {}  # offset -> staging steps as kernel blocks
        self.mine_blocks = {r.peer: block_table(r) for r in self.local}
        self.peer_blocks = {r.peer: block_table(peers[r.peer - base].route) for r in self.local}
        item = move.dtype.itemsize
        # receiving: the copies out of each peer's segment, in the order its rows get ready
        self.pieces = [read_pieces(self.peer_blocks[r.peer], peers[r.peer - base].array.shape,
                                   self.mine_blocks[r.peer], item) for r in self.local]
        self.totals = [int(np.prod(peers[r.peer - base].array.shape[:3])) for r in self.local]
        # sending: the rows of this rank's segment staged per step
        mine = shared.mine if shared is not None else None
        # write around the caches when one buffer of a segment (what a transfer fills) is too
        # large to stay in them anyway
        self.stream_out = mine is not None and mine.nbytes // shared.slots >= STREAM_BYTES
        self.stream_in = {r.peer: peers[r.peer - base].slot(0).nbytes >= STREAM_BYTES
                          for r in self.local}
        self.step = stage_rows(mine.shape, item) if mine is not None else 1
        self.rows = int(np.prod(mine.shape[:3])) if mine is not None else 0
        n = len(self.local)
        steps = -(-self.rows // self.step) if self.rows else 0
        self.token_in = np.zeros((max(n, 1), 1), dtype=np.int64)
        self.token_out = np.zeros((max(n, 1), steps + 2), dtype=np.int64)
        self.ready = []          # the sender's pending READY receives
        self.token_sends = []    # this side's token sends not known to be complete
        if send:
            self._post_ready()

    # ------------------------------------------------------------------ helpers
    def _names(self, routes) -> list:
        return [r.peer - self.move.peer_base for r in routes]

    def _wait(self, reqs, what: str) -> None:
        wait_all(reqs, self.move.timeout, f"{self.move.what}: {what}", self._names(self.local),
                 self.move.peer_label)

    def _flush(self) -> None:
        """The last tokens have left (their buffers are reused)."""
        if self.token_sends:
            wait_all(self.token_sends, self.move.timeout, f"{self.move.what}: sending a token",
                     None, self.move.peer_label)
        self.token_sends = []

    def _token(self, n: int, slot: int, value: int):
        """Send ``value`` to local peer ``n`` (buffer ``slot``: one per token of a transfer)."""
        self.token_out[n, slot] = value
        req = self.move.comm.Isend(self.token_out[n, slot:slot + 1], self.local[n].peer,
                                   self.move.tag)
        self.token_sends.append(req)
        return req

    def _recv_token(self, n: int):
        return self.move.comm.Irecv(self.token_in[n], self.local[n].peer, self.move.tag)

    def _post_ready(self) -> None:
        self.ready = [self._recv_token(n) for n in range(len(self.local))]

    def _merge(self, local: list, far: list) -> list:
        """One request per route, in route order (so a late one is named by its peer)."""
        local, far = iter(local), iter(far)
        return [next(local) if here else next(far) for here in self.order]

    # ------------------------------------------------------------------ sending
    def start_send(self, target, offset):
        far = self.far.start_send(target, offset) if self.far is not None else []
        if not self.local:
            return far
        self._wait(self.ready, f"waiting until the {self.move.peer_label} can take the data")
        self.shared.sync()
        self._flush()
        modes = self.token_in[:len(self.local), 0].tolist()
        mine = self.shared.mine
        in_segment = self.shared.slot_of(target, offset) is not None
        last = [None] * len(self.local)
        readers = []
        for n, (r, mode) in enumerate(zip(self.local, modes)):
            if mode >= WRITE_INTO_ME and not in_segment:
                peer = self.shared.peers[r.peer - self.move.peer_base]
                pairs = self.pairs.get((r.peer, offset))
                if pairs is None:
                    pairs = pair_blocks(self.mine_blocks[r.peer], offset,
                                        self.peer_blocks[r.peer], (0, 0))
                    self.pairs[(r.peer, offset)] = pairs
                copy_pairs(self.copy, target, peer.slot(mode - WRITE_INTO_ME), pairs,
                           self.move.sign, self.stream_in[r.peer])
                self.shared.sync()
                last[n] = self._token(n, 0, IN_PLACE)
            else:
                readers.append(n)
        if readers and in_segment:  # the data already is in this rank's segment
            for n in readers:
                last[n] = self._token(n, 0, self.rows)
        elif readers:  # stage it, telling the readers after every step
            for slot, done in enumerate(self._stage(target, offset, mine), 1):
                self.shared.sync()
                for n in readers:
                    last[n] = self._token(n, slot, done)
        self._post_ready()
        return self._merge(last, far)

    def _stage(self, target, offset, mine):
        """Copy ``target``'s tiles (shifted by ``offset``) into this rank's segment, a step of
        rows at a time; yields the rows ready after each step."""
        for done, slabs in self._stage_plan(offset, mine.shape):
            for k, lev, blocks in slabs:
                self.copy(target[k][lev:lev + 1], mine[k, lev:lev + 1], blocks, 1.0,
                          self.stream_out)
            yield done

    def _stage_plan(self, offset, shape) -> list[tuple]:
        """The staging steps for ``offset``: ``(rows ready after it, [(tile, level, kernel
        blocks)])`` per step, each slab of rows within one level (built once per offset)."""
        plan = self.stage_plans.get(offset)
        if plan is None:
            oj, oi = offset
            _, nz, NJ, NI = shape
            plan, done = [], 0
            while done < self.rows:
                end = min(self.rows, done + self.step)
                slabs, u = [], done
                while u < end:
                    kl, row = divmod(u, NJ)
                    k, lev = divmod(kl, nz)
                    take = min(end - u, NJ - row)
                    slabs.append((k, lev, np.array([[oj + row, oi, row, 0, take, NI, 0]],
                                                   dtype=np.int64)))
                    u += take
                plan.append((end, slabs))
                done = end
            self.stage_plans[offset] = plan
        return plan

    def sent(self):
        if self.far is not None:
            self.far.sent()

    def reusable(self):
        """The peers that read this rank's segment (a put of a ``Coupler.buffer``) have read it:
        they say READY for the next transfer only after that."""
        if self.local:
            self._wait(self.ready, f"waiting until the {self.move.peer_label} has read the "
                       "last data")

    # ------------------------------------------------------------------ receiving
    def post_recv(self, target, offset):
        self.move.fill(target, offset)
        far = self.far.post_recv(target, offset) if self.far is not None else []
        if not self.local:
            return far
        slot = self.shared.slot_of(target, offset)
        mode = READ_FROM_YOU if slot is None else WRITE_INTO_ME + slot
        self.shared.sync()  # this rank is done with the segment: peers may write it
        self._flush()
        for n in range(len(self.local)):
            self._token(n, 0, mode)
        return self._merge([self._recv_token(n) for n in range(len(self.local))], far)

    def complete_recv(self, requests, wait, target, offset, sign):
        """Copy each peer's rows as they are announced; every wait bounded, naming the peers
        that did not answer."""
        if not self.local:
            wait(requests)
            self.finish_recv(target, offset, sign)
            return
        move = self.move
        reqs = list(requests)
        local_at = [i for i, here in enumerate(self.order) if here]
        names = [r.peer - move.peer_base for r in move.routes]
        todo = [0] * len(self.local)  # next piece per local peer
        open_ = set(range(len(reqs)))
        t_end = None if move.timeout is None else time.monotonic() + move.timeout
        while open_:
            done = wait_some(reqs, t_end, move.what, move.peer_label,
                             lambda: sorted(names[i] for i in open_), move.timeout)
            for i in done:
                if i not in local_at:
                    open_.discard(i)
                    continue
                n = local_at.index(i)
                value = int(self.token_in[n, 0])
                if value != IN_PLACE:
                    self.shared.sync()
                    todo[n] = self._read(n, value, todo[n], target, offset, sign)
                if value == IN_PLACE or value >= self.totals[n]:
                    open_.discard(i)
                else:
                    reqs[i] = self._recv_token(n)
        if self.far is not None:
            self.far.finish_recv(target, offset, sign)

    def _read(self, n: int, ready: int, first: int, target, offset, sign) -> int:
        """Copy peer ``n``'s pieces whose rows are ready; the next piece."""
        src = self.shared.peers[self.local[n].peer - self.move.peer_base].array
        pieces = self._piece_blocks(n, offset)
        stream = self.stream_in[self.local[n].peer]
        k = first
        while k < len(pieces) and pieces[k][0] <= ready:
            _, ks, lev, kd, blocks = pieces[k]
            k += 1
            dst = target[kd]
            if dst is not None:  # None: a tile left out of the batch
                self.copy(src[ks][lev:lev + 1], dst[lev:lev + 1], blocks, sign, stream)
        return k

    def _piece_blocks(self, n: int, offset) -> list[tuple]:
        """Peer ``n``'s read pieces as ``(rows needed, ks, level, kd, kernel blocks)`` with the
        target shifted by ``offset`` (built once per offset)."""
        got = self.piece_blocks.get((n, offset))
        if got is None:
            oj, oi = offset
            got = [(need, ks, lev, kd,
                    np.array([[row, si, oj + dj, oi + di, nrows, ni, fold]], dtype=np.int64))
                   for need, ks, lev, row, nrows, si, ni, kd, dj, di, fold in self.pieces[n]]
            self.piece_blocks[(n, offset)] = got
        return got

    def finish_recv(self, target, offset, sign):
        if self.far is not None:
            self.far.finish_recv(target, offset, sign)

    def bind_recv(self, target, offset=(0, 0)):
        if self.far is not None:
            self.far.bind_recv(target, offset)

    def close(self):
        for req in self.ready:  # READY of an occurrence that never came
            if req:
                req.Cancel()
        if self.ready:
            mpi().Request.Waitall(self.ready)
        self.ready = []
        for req in self.token_sends:  # tiny sends: let them finish on their own
            if req:
                req.Free()
        self.token_sends = []
        if self.far is not None:
            self.far.close()
