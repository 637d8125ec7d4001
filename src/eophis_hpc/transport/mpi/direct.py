"""The rows a rank reads straight out of a peer's private memory (``shm`` with cross-memory
reads, :mod:`.cma`): the address of each row on both ends, from the block tables of the two
routes, the peer's array layout (sent with its DONE) and this rank's target.

Only plain blocks qualify (a folded block is written reversed, which a byte copy cannot do),
and both arrays must hold the wire dtype with contiguous rows.
"""
from __future__ import annotations

import numpy as np

from . import cma

# The sender's DONE for a direct read: AT_ADDRESS, then its target's address, rows per level,
# points per row and the offset of the tiles' own boxes in it (j, i).
AT_ADDRESS = -2
PAYLOAD = 6


def can_read_into(target, dtype) -> bool:
    """Whether ``target`` (indexable by tile) can take byte copies of ``dtype`` rows."""
    return (isinstance(target, np.ndarray) and target.ndim == 4 and target.dtype == dtype
            and target.strides[-1] == dtype.itemsize)


def can_be_read(target, dtype) -> bool:
    """Whether a peer can read ``target`` by its address and shape alone."""
    return (isinstance(target, np.ndarray) and target.ndim == 4 and target.dtype == dtype
            and target.flags.c_contiguous)


def payload(target, offset) -> list[int]:
    """The DONE token announcing ``target`` (its tiles' own boxes at ``offset``)."""
    return [AT_ADDRESS, target.ctypes.data, target.shape[2], target.shape[3], offset[0],
            offset[1]]


class DirectRows:
    """The rows of one route read from one peer: ``src_blocks`` in the peer's tile frame
    (``(k, j, i, nj, ni, fold)``), ``dst_blocks`` the matching blocks of this rank's target,
    ``nz`` levels of ``itemsize`` bytes."""

    def __init__(self, src_blocks: np.ndarray, dst_blocks: np.ndarray, nz: int, itemsize: int):
        self.ok = not (src_blocks[:, 5].any() or dst_blocks[:, 5].any())
        self.item = itemsize
        rows = []  # ks, lev, src row, si, kd, dst row, di, ni: one entry per row and level
        for (ks, sj, si, nj, ni, _), (kd, dj, di, _, _, _) in zip(src_blocks.tolist(),
                                                                  dst_blocks.tolist()):
            if nj == 0 or ni == 0:
                continue
            lev, j = np.divmod(np.arange(nz * nj, dtype=np.int64), nj)
            block = np.empty((nz * nj, 8), dtype=np.int64)
            block[:] = (ks, 0, sj, si, kd, dj, di, ni)
            block[:, 1] = lev
            block[:, 2] += j
            block[:, 5] += j
            rows.append(block)
        self.rows = np.concatenate(rows) if rows else np.zeros((0, 8), dtype=np.int64)
        self.nbytes = (self.rows[:, 7] * itemsize).astype(np.uint64)
        self.nz = nz
        self._remote: dict = {}
        self._local: dict = {}

    def remote(self, address: int, nj: int, ni: int, oj: int, oi: int) -> np.ndarray:
        """Addresses of the rows in the peer's contiguous ``(k, nz, nj, ni)`` target whose
        tiles' own boxes start at ``(oj, oi)``."""
        key = (nj, ni, oj, oi)
        rel = self._remote.get(key)
        if rel is None:
            r = self.rows
            rel = ((((r[:, 0] * self.nz + r[:, 1]) * nj + oj + r[:, 2]) * ni + oi + r[:, 3])
                   * self.item).astype(np.uint64)
            self._remote[key] = rel
        return rel + np.uint64(address)

    def local(self, target: np.ndarray, offset) -> np.ndarray:
        """Addresses of the rows in this rank's ``target`` (box at ``offset``)."""
        key = (target.strides, offset)
        rel = self._local.get(key)
        if rel is None:
            r, st = self.rows, target.strides
            rel = (r[:, 4] * st[0] + r[:, 1] * st[1] + (offset[0] + r[:, 5]) * st[2]
                   + (offset[1] + r[:, 6]) * st[3]).astype(np.uint64)
            self._local[key] = rel
        return rel + np.uint64(target.ctypes.data)

    def read(self, pid: int, token: np.ndarray, target: np.ndarray, offset, what: str) -> None:
        """Copy every row from the peer announced by ``token`` (:func:`payload`) into
        ``target``."""
        _, address, nj, ni, oj, oi = (int(v) for v in token[:PAYLOAD])
        cma.read(pid, self.remote(address, nj, ni, oj, oi), self.local(target, offset),
                 self.nbytes, what)
