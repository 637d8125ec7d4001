"""The layout both sides agree on at the handshake (pure): model boxes, worker tiles and their
owners, halo, plans per grid point type, and each rank's routes (which runs go to which peer)."""
from __future__ import annotations

import numpy as np

from ..decomposition import Decomposition, split_balanced
from ..grid import Grid
from ..plan import Plan
from .wire import Route


class Layout:
    """Model boxes (one per model rank) -> ``n_tiles`` tiles spread over ``n_workers`` workers.

    Every tile reads ``tile_shape`` points plus the halo so a worker's tiles stack into one batch
    ``(tiles, levels, H + 2h, W + 2h)``; only each tile's own box goes back. ``tile_owner`` (the
    worker of each tile) replaces the default assignment, tiles in order.
    """

    def __init__(self, grid: Grid, model_boxes, n_workers: int, halo: int, n_tiles: int | None = None,
                 holes: bool = False, tiles=None, tile_owner=None):
        self.grid = grid
        self.src = Decomposition.from_boxes(grid, model_boxes, holes=holes)
        if tiles is not None:
            self.dst = Decomposition.from_boxes(grid, tiles)
        else:
            n_tiles = n_workers if n_tiles is None else n_tiles
            if n_tiles < n_workers:
                raise ValueError(f"{n_workers} workers for {n_tiles} tiles: every worker needs a tile")
            self.dst = Decomposition.auto(grid, n_tiles)
        if len(self.dst.boxes) < n_workers:
            raise ValueError(f"{n_workers} workers for {len(self.dst.boxes)} tiles: every worker "
                             "needs at least one tile")
        self.n_workers = n_workers
        self.halo = grid.check_halo(halo, "Tunnel: halo")
        self.tile_shape = self.dst.max_shape()
        if tile_owner is None:  # tiles in order, the remainder to the first workers
            starts = split_balanced(len(self.dst.boxes), n_workers)
            self.tile_owner = np.repeat(np.arange(n_workers), np.diff(starts))
        else:  # e.g. node-aware (sizing.placement)
            self.tile_owner = _check_owner(tile_owner, len(self.dst.boxes), n_workers)
        self.tiles_of = [np.flatnonzero(self.tile_owner == w).tolist() for w in range(n_workers)]
        self._plans: dict[str, Plan] = {}

    def plan(self, point: str) -> Plan:
        """The plan for fields on ``point`` (T, U, V, F); grids differ only in the fold."""
        if point not in self._plans:
            self._plans[point] = Plan(self.grid.with_point(point), self.src, self.dst, self.halo,
                                      tile_shape=self.tile_shape)
        return self._plans[point]

    @property
    def batch_shape(self) -> tuple[int, int]:
        return (self.tile_shape[0] + 2 * self.halo, self.tile_shape[1] + 2 * self.halo)

    # ------------------------------------------------------------------ routes (per rank)
    def model_send_routes(self, point: str, s: int) -> list[Route]:
        """Model rank ``s``: runs of its box to pack for each worker, tiles in order."""
        plan = self.plan(point)
        by_worker: dict[int, list] = {}
        for (ss, d) in plan.pairs:
            if ss == s:
                by_worker.setdefault(int(self.tile_owner[d]), []).append((0, plan.pack_runs(s, d)))
        return [Route(w, parts) for w, parts in sorted(by_worker.items())]

    def model_recv_routes(self, point: str, s: int) -> list[Route]:
        """Model rank ``s``: runs of its box each worker returns, tiles in order."""
        plan = self.plan(point)
        by_worker: dict[int, list] = {}
        for (d, ss) in plan.back_pairs:
            if ss == s:
                by_worker.setdefault(int(self.tile_owner[d]), []).append(
                    (0, plan.back_unpack_runs(d, s)))
        return [Route(w, parts) for w, parts in sorted(by_worker.items())]

    def model_fills(self, point: str, s: int) -> dict:
        return {0: self.plan(point).back_fill_rects(s)}

    def worker_recv_routes(self, point: str, w: int) -> list[Route]:
        """Worker ``w``: for each model rank, the runs of its batch tiles that rank fills."""
        plan = self.plan(point)
        return self._worker_routes(w, ((s, d, plan.unpack_runs(s, d)) for s, d in plan.pairs))

    def worker_send_routes(self, point: str, w: int) -> list[Route]:
        """Worker ``w``: for each model rank, the runs of its tiles' own boxes to send back
        (relative to the tile's box origin; the caller shifts by the halo when present)."""
        plan = self.plan(point)
        return self._worker_routes(w, ((s, d, plan.back_pack_runs(d, s))
                                       for d, s in plan.back_pairs))

    def _worker_routes(self, w: int, pairs) -> list[Route]:
        """One route per model rank from ``(model rank, tile, runs)`` triples, keeping the
        tiles of worker ``w`` (indexed in its batch), in model-rank order."""
        local = {d: k for k, d in enumerate(self.tiles_of[w])}
        by_src: dict[int, list] = {}
        for s, d, runs in pairs:
            if d in local:
                by_src.setdefault(s, []).append((local[d], runs))
        return [Route(s, parts) for s, parts in sorted(by_src.items())]

    def worker_fills(self, point: str, w: int) -> dict:
        plan = self.plan(point)
        return {k: plan.fill_rects(d) for k, d in enumerate(self.tiles_of[w])}


def _check_owner(tile_owner, n_tiles: int, n_workers: int) -> np.ndarray:
    """``tile_owner`` as an int array: one worker in ``[0, n_workers)`` per tile, every worker
    with at least one tile."""
    owner = np.asarray(tile_owner)
    if owner.shape != (n_tiles,) or not np.issubdtype(owner.dtype, np.integer):
        raise ValueError(f"tile_owner: expected {n_tiles} worker indices (one per tile), got "
                         f"{owner.shape[0] if owner.ndim == 1 else owner.shape} of {owner.dtype}")
    if n_tiles and (owner.min() < 0 or owner.max() >= n_workers):
        raise ValueError(f"tile_owner: worker indices must be in [0, {n_workers}), got "
                         f"{int(owner.min())}..{int(owner.max())}")
    idle = np.flatnonzero(np.bincount(owner, minlength=n_workers) == 0)
    if idle.size:
        raise ValueError(f"tile_owner: worker {int(idle[0])} has no tile")
    return owner.astype(np.int64)
