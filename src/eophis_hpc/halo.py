"""Halo exchange among the ranks of one decomposition, for models written in Python.

The same plan that feeds the workers, with the model boxes as both sources and tiles: each rank
fills the halo of its own array (closed, cyclic, north fold) from its neighbours, in place. The
identity copies of a rank's own interior are dropped from the plan's self-messages.
"""
from __future__ import annotations

import numpy as np

from .decomposition import Decomposition
from .grid import Grid
from .plan import DI, DJ, FOLD, SI, SJ, Plan
from .protocol.wire import TAG_DATA, Route
from .transport.mpi import Receiver, Sender

TAG_HALO = TAG_DATA - 500


class HaloExchange:
    """Fill the ``halo`` of ``(nz, bj + 2h, bi + 2h)`` arrays owned by each rank of ``comm``
    (rank r owns ``dec.boxes[r]``). Collective; buffers and requests are made once."""

    def __init__(self, comm, grid: Grid, dec: Decomposition, halo: int, nz: int = 1,
                 dtype=np.float64, sign: float = 1.0, strategy: str = "packed", tag: int = 0,
                 backend: str | None = None):
        if comm.size != len(dec.boxes):
            raise ValueError(f"HaloExchange: {comm.size} ranks for {len(dec.boxes)} boxes")
        self.rank = comm.rank
        self.box = dec.boxes[self.rank]
        self.halo = halo
        self.sign = sign
        plan = Plan(grid, dec, dec, halo)
        self.shape = (nz,) + plan.tile_shape_of(self.rank)
        r, h = self.rank, halo
        sends, recvs = [], []
        for (s, d), (lo, hi) in plan.pairs.items():
            if r not in (s, d):
                continue
            rows = plan.blocks[lo:hi]
            keep = np.ones(len(rows), dtype=bool)
            if s == d:  # a rank's own interior is already in place
                keep = ~((rows[:, FOLD] == 0) & (rows[:, DJ] == rows[:, SJ] + h)
                         & (rows[:, DI] == rows[:, SI] + h))
            if not keep.any():
                continue
            if s == r:
                runs = plan.pack_runs(s, d)[keep]
                runs[:, :2] += h  # the array carries the halo around the box
                sends.append(Route(d, [(0, runs)]))
            if d == r:
                recvs.append(Route(s, [(0, plan.unpack_runs(s, d)[keep])]))
        tag = TAG_HALO - tag
        self._send = Sender(comm, sends, nz, dtype, tag, strategy, backend=backend)
        self._recv = Receiver(comm, recvs, nz, dtype, tag, strategy,
                              fills={0: plan.fill_rects(r)}, backend=backend)

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        """Fill the halo of ``arr`` in place and return it."""
        if arr.shape != self.shape or not arr.flags.c_contiguous:
            raise ValueError(f"HaloExchange: expected a C-contiguous array of shape {self.shape}, "
                             f"got {arr.shape}")
        view = arr[None]
        self._recv.post(view)
        self._send.start(view)
        self._recv.wait(view, sign=self.sign)
        self._send.wait()
        return arr

    def close(self) -> None:
        self._send.close()
        self._recv.close()
