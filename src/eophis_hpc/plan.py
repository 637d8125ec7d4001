"""Redistribution plans between a source decomposition and destination tiles with halos (layer 3).

A :class:`Plan` lists, for every (src box, dst tile) pair, the rectangular blocks of cells to copy,
already resolved through the boundary conditions of docs/architecture.md: a halo cell that wraps
(cyclic) reads from the box owning its periodic image, a cell past the north fold reads a
reversed block (times the field's sign), a cell outside a closed edge is filled. The plan is pure
(no communication, no kernels), deterministic, and serialisable; the transports execute it
(:mod:`eophis_hpc.transport.local` in one process, the MPI engine across ranks).

Wire format of a message (src s -> dst d): the pair's blocks in plan order, each block
``nz x nj x ni`` C-ordered in the *source's* natural order. The receiver writes block rows
reversed (and multiplied by the sign) when ``fold`` is set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .decomposition import Box, Decomposition
from .grid import Grid

# Columns of Plan.blocks (scatter direction).
SRC, DST, SJ, SI, DJ, DI, NJ, NI, FOLD = range(9)
# Columns of Plan.back_blocks (gather direction): tile -> src box, all plain.
B_DST, B_SRC, B_DJ, B_DI, B_SJ, B_SI, B_NJ, B_NI = range(8)


@dataclass(frozen=True)
class _Segment:
    """A run ``[lo, hi)`` of extended indices along one axis and how it maps to the grid:
    ``mode`` 'fill', 'plain' (source = index + shift) or 'fold' (north fold rows)."""

    lo: int
    hi: int
    mode: str
    shift: int = 0


def _wrap_segments(lo: int, hi: int, n: int) -> list[_Segment]:
    """Split ``[lo, hi)`` at multiples of ``n``: each piece maps to ``index - k*n``."""
    out = []
    x = lo
    while x < hi:
        k = x // n
        end = min(hi, (k + 1) * n)
        out.append(_Segment(x, end, "plain", -k * n))
        x = end
    return out


def _axis_segments(lo: int, hi: int, n: int, low_bc: str, high_bc: str) -> list[_Segment]:
    """Segments of ``[lo, hi)`` for an axis of ``n`` points with the given edge conditions."""
    segs = []
    if lo < 0:
        end = min(hi, 0)
        segs += _wrap_segments(lo, end, n) if low_bc == "cyclic" else [_Segment(lo, end, "fill")]
    a, b = max(lo, 0), min(hi, n)
    if a < b:
        segs.append(_Segment(a, b, "plain", 0))
    if hi > n:
        start = max(lo, n)
        if high_bc == "cyclic":
            segs += _wrap_segments(start, hi, n)
        elif high_bc == "fold":
            segs.append(_Segment(start, hi, "fold"))
        else:
            segs.append(_Segment(start, hi, "fill"))
    return segs


class Plan:
    """Who sends which cells to whom, for ``src`` boxes -> ``dst`` tiles with ``halo`` cells.

    ``tile_shape=(H, W)`` makes every tile read an ``H x W`` box from its own ``(j0, i0)`` (so a
    worker can stack uneven tiles into one batch); only the tile's own box goes back in
    ``gather_local``. By default each tile reads exactly its box.
    """

    def __init__(self, grid: Grid, src: Decomposition, dst: Decomposition, halo: int = 0,
                 tile_shape: tuple[int, int] | None = None, *, tables=None):
        if not isinstance(grid, Grid):
            raise TypeError(f"Plan: grid must be an eophis_hpc.Grid, got {type(grid).__name__}")
        for name, dec in (("src", src), ("dst", dst)):
            if not isinstance(dec, Decomposition):
                raise TypeError(f"Plan: {name} must be an eophis_hpc.Decomposition, got "
                                f"{type(dec).__name__}")
            if (dec.grid.nx, dec.grid.ny) != (grid.nx, grid.ny):
                raise ValueError(f"Plan: {name} decomposes a {dec.grid.nx}x{dec.grid.ny} grid, "
                                 f"the plan's grid is {grid.nx}x{grid.ny}")
        self.grid, self.src, self.dst = grid, src, dst
        self.halo = grid.check_halo(halo, "Plan: halo")
        self.read_boxes = self._read_boxes(tile_shape)
        self.tile_shape = None if tile_shape is None else tuple(int(v) for v in tile_shape)
        if tables is None:
            self.blocks, self.fills = self._build_scatter()
            self.back_blocks, self.back_fills = self._build_gather()
        else:  # a serialised plan (from_dict): the tables as they were built
            self.blocks, self.fills, self.back_blocks, self.back_fills = tables
        self._index()

    # ------------------------------------------------------------------ construction
    def _read_boxes(self, tile_shape) -> list[Box]:
        if tile_shape is None:
            return list(self.dst.boxes)
        try:
            th, tw = (int(v) for v in tile_shape)
        except (TypeError, ValueError):
            raise ValueError(f"Plan: tile_shape must be (H, W), got {tile_shape!r}") from None
        mh, mw = self.dst.max_shape()
        if th < mh or tw < mw:
            raise ValueError(f"Plan: tile_shape {(th, tw)} is smaller than the largest tile "
                             f"{(mh, mw)}")
        return [Box(b.j0, b.j0 + th, b.i0, b.i0 + tw) for b in self.dst.boxes]

    def _check_reach(self, box: Box) -> None:
        """Extended rows past the fold must land inside the grid (tile_shape can push a tile past
        the north edge further than the halo alone)."""
        g, h = self.grid, self.halo
        if g.north == "fold":
            deepest = box.j1 + h - 1 - g.ny
            if deepest >= 0 and g.ny - 1 - g.fold_shift[0] - deepest < 0:
                raise ValueError(f"Plan: tile {tuple(box)} with halo {h} reaches {deepest + 1} rows "
                                 f"past the fold of a grid with ny={g.ny}")
        for lo, hi, n, bcs in ((box.j0 - h, box.j1 + h, g.ny, (g.south, g.north)),
                               (box.i0 - h, box.i1 + h, g.nx, (g.east_west,) * 2)):
            if "cyclic" in bcs and (hi - lo > 3 * n):
                raise ValueError(f"Plan: tile {tuple(box)} with halo {h} wraps around the grid "
                                 "more than once")

    def _build_scatter(self):
        g, h = self.grid, self.halo
        src_arr = self.src.as_array()
        a, b = g.fold_shift
        blocks, fills = [], []
        for d, rb in enumerate(self.read_boxes):
            self._check_reach(rb)
            oj, oi = rb.j0 - h, rb.i0 - h  # global index of the tile's local (0, 0)
            rows = _axis_segments(rb.j0 - h, rb.j1 + h, g.ny, g.south, g.north)
            cols = _axis_segments(rb.i0 - h, rb.i1 + h, g.nx, g.east_west, g.east_west)
            if self.src.holes:  # cells owned by no box read as fill: fill first, blocks overwrite
                fills.append((d, 0, 0, rb.j1 - rb.j0 + 2 * h, rb.i1 - rb.i0 + 2 * h))
            for rs in rows:
                for cs in cols:
                    if rs.mode == "fill" or cs.mode == "fill":
                        if not self.src.holes:
                            fills.append((d, rs.lo - oj, cs.lo - oi, rs.hi - rs.lo, cs.hi - cs.lo))
                    elif rs.mode == "plain":
                        self._intersect(blocks, src_arr, d, oj, oi, rs.lo + rs.shift,
                                        rs.hi + rs.shift, cs.lo + cs.shift, cs.hi + cs.shift,
                                        rs.shift, cs.shift)
                    else:
                        # fold: src_j = KJ - j, src_i = (nx - 1 + b - s - i) mod nx = KI - i
                        kj = 2 * g.ny - 1 - a
                        base = g.nx - 1 + b - cs.shift
                        i = cs.lo
                        while i < cs.hi:
                            m = (base - i) // g.nx
                            ki = base - m * g.nx
                            # v = base - i stays in [m*nx, (m+1)*nx) while i > base - (m+1)*nx
                            end = min(cs.hi, base - m * g.nx + 1)
                            self._intersect_fold(blocks, src_arr, d, oj, oi, rs.lo, rs.hi, i, end,
                                                 kj, ki)
                            i = end
        blk = np.array(blocks, dtype=np.int64).reshape(-1, 9)
        order = np.lexsort((np.arange(len(blk)), blk[:, DST], blk[:, SRC]))
        return np.ascontiguousarray(blk[order]), np.array(fills, dtype=np.int64).reshape(-1, 5)

    @staticmethod
    def _hits(src_arr, j0, j1, i0, i1):
        """Indices of src boxes intersecting the global rect and the clipped rects."""
        cj0 = np.maximum(src_arr[:, 0], j0)
        cj1 = np.minimum(src_arr[:, 1], j1)
        ci0 = np.maximum(src_arr[:, 2], i0)
        ci1 = np.minimum(src_arr[:, 3], i1)
        hit = np.flatnonzero((cj0 < cj1) & (ci0 < ci1))
        return hit, cj0[hit], cj1[hit], ci0[hit], ci1[hit]

    def _intersect(self, blocks, src_arr, d, oj, oi, j0, j1, i0, i1, sj_shift, si_shift):
        """Plain blocks: source rect ``[j0, j1) x [i0, i1)``, destination = source - shift."""
        hit, cj0, cj1, ci0, ci1 = self._hits(src_arr, j0, j1, i0, i1)
        for s, a0, a1, b0, b1 in zip(hit.tolist(), cj0.tolist(), cj1.tolist(), ci0.tolist(),
                                     ci1.tolist()):
            bj0, bi0 = src_arr[s, 0], src_arr[s, 2]
            blocks.append((s, d, a0 - bj0, b0 - bi0, a0 - sj_shift - oj, b0 - si_shift - oi,
                           a1 - a0, b1 - b0, 0))

    def _intersect_fold(self, blocks, src_arr, d, oj, oi, j_lo, j_hi, i_lo, i_hi, kj, ki):
        """Folded blocks for extended rows ``[j_lo, j_hi)`` and columns ``[i_lo, i_hi)``:
        source ``(kj - j, ki - i)``; the destination corner stored is the lowest (j, i)."""
        hit, cj0, cj1, ci0, ci1 = self._hits(src_arr, kj - j_hi + 1, kj - j_lo + 1,
                                             ki - i_hi + 1, ki - i_lo + 1)
        for s, a0, a1, b0, b1 in zip(hit.tolist(), cj0.tolist(), cj1.tolist(), ci0.tolist(),
                                     ci1.tolist()):
            bj0, bi0 = src_arr[s, 0], src_arr[s, 2]
            blocks.append((s, d, a0 - bj0, b0 - bi0, kj - (a1 - 1) - oj, ki - (b1 - 1) - oi,
                           a1 - a0, b1 - b0, 1))

    def _build_gather(self):
        src_arr = self.src.as_array()
        blocks, fills = [], []
        for d, tb in enumerate(self.dst.boxes):
            hit, cj0, cj1, ci0, ci1 = self._hits(src_arr, tb.j0, tb.j1, tb.i0, tb.i1)
            for s, a0, a1, b0, b1 in zip(hit.tolist(), cj0.tolist(), cj1.tolist(), ci0.tolist(),
                                         ci1.tolist()):
                blocks.append((d, s, a0 - tb.j0, b0 - tb.i0, a0 - src_arr[s, 0],
                               b0 - src_arr[s, 2], a1 - a0, b1 - b0))
        if self.dst.holes:  # points of src boxes that no tile owns come back as the fill value
            fills = [(s, 0, 0, b.j1 - b.j0, b.i1 - b.i0) for s, b in enumerate(self.src.boxes)]
        blk = np.array(blocks, dtype=np.int64).reshape(-1, 8)
        order = np.lexsort((np.arange(len(blk)), blk[:, B_SRC], blk[:, B_DST]))
        return np.ascontiguousarray(blk[order]), np.array(fills, dtype=np.int64).reshape(-1, 5)

    def _index(self):
        """Per-pair slices of the block tables, for both directions."""
        self.pairs = _pair_slices(self.blocks[:, SRC], self.blocks[:, DST])
        self.back_pairs = _pair_slices(self.back_blocks[:, B_DST], self.back_blocks[:, B_SRC])

    # ------------------------------------------------------------------ queries
    @property
    def n_src(self) -> int:
        return len(self.src.boxes)

    @property
    def n_dst(self) -> int:
        return len(self.dst.boxes)

    def tile_shape_of(self, d: int) -> tuple[int, int]:
        """``(H + 2h, W + 2h)`` of tile ``d`` as scattered."""
        rb = self.read_boxes[d]
        return (rb.j1 - rb.j0 + 2 * self.halo, rb.i1 - rb.i0 + 2 * self.halo)

    def pack_runs(self, s: int, d: int) -> np.ndarray:
        """``(n, 4)`` runs ``sj, si, nj, ni`` that source ``s`` packs for tile ``d``."""
        lo, hi = self.pairs.get((s, d), (0, 0))
        return np.ascontiguousarray(self.blocks[lo:hi, [SJ, SI, NJ, NI]])

    def unpack_runs(self, s: int, d: int) -> np.ndarray:
        """``(n, 5)`` runs ``dj, di, nj, ni, fold`` that tile ``d`` unpacks from source ``s``."""
        lo, hi = self.pairs.get((s, d), (0, 0))
        return np.ascontiguousarray(self.blocks[lo:hi, [DJ, DI, NJ, NI, FOLD]])

    def fill_rects(self, d: int) -> np.ndarray:
        """``(n, 4)`` rects ``dj, di, nj, ni`` of tile ``d`` that take the fill value (first)."""
        return np.ascontiguousarray(self.fills[self.fills[:, 0] == d, 1:])

    def back_pack_runs(self, d: int, s: int, offset: int = 0) -> np.ndarray:
        """``(n, 4)`` runs tile ``d`` packs for source ``s``; ``offset`` = halo of the array."""
        lo, hi = self.back_pairs.get((d, s), (0, 0))
        runs = self.back_blocks[lo:hi, [B_DJ, B_DI, B_NJ, B_NI]].copy()
        runs[:, :2] += offset
        return runs

    def back_unpack_runs(self, d: int, s: int) -> np.ndarray:
        """``(n, 5)`` runs source ``s`` unpacks from tile ``d`` (never folded)."""
        lo, hi = self.back_pairs.get((d, s), (0, 0))
        runs = np.zeros((hi - lo, 5), dtype=np.int64)
        runs[:, :4] = self.back_blocks[lo:hi, [B_SJ, B_SI, B_NJ, B_NI]]
        return runs

    def back_fill_rects(self, s: int) -> np.ndarray:
        return np.ascontiguousarray(self.back_fills[self.back_fills[:, 0] == s, 1:])

    def message_cells(self, s: int, d: int, back: bool = False) -> int:
        """Cells per level in the message between ``s`` and ``d`` (either direction)."""
        if back:
            lo, hi = self.back_pairs.get((d, s), (0, 0))
            rows = self.back_blocks[lo:hi]
            return int(np.sum(rows[:, B_NJ] * rows[:, B_NI]))
        lo, hi = self.pairs.get((s, d), (0, 0))
        rows = self.blocks[lo:hi]
        return int(np.sum(rows[:, NJ] * rows[:, NI]))

    def traffic(self, nz: int = 1, itemsize: int = 8, src_ranks: Sequence[int] | None = None,
                dst_ranks: Sequence[int] | None = None) -> dict:
        """Messages and bytes each rank sends and receives for one scatter and one gather.

        ``src_ranks[s]``/``dst_ranks[d]`` give the rank owning box ``s``/tile ``d`` (default: one
        each). Messages between boxes of the same pair of ranks are merged, as the runtime does.
        """
        src_ranks = np.arange(self.n_src) if src_ranks is None else np.asarray(src_ranks)
        dst_ranks = np.arange(self.n_dst) if dst_ranks is None else np.asarray(dst_ranks)
        out = {}
        for name, blk, a_col, b_col, a_map, b_map, nj, ni in (
                ("scatter", self.blocks, SRC, DST, src_ranks, dst_ranks, NJ, NI),
                ("gather", self.back_blocks, B_DST, B_SRC, dst_ranks, src_ranks, B_NJ, B_NI)):
            ra, rb = a_map[blk[:, a_col]], b_map[blk[:, b_col]]
            cells = blk[:, nj] * blk[:, ni] * nz * itemsize
            pairs = {}
            for x, y, c in zip(ra.tolist(), rb.tolist(), cells.tolist()):
                pairs[(x, y)] = pairs.get((x, y), 0) + c
            send_msgs, send_bytes, recv_msgs, recv_bytes = {}, {}, {}, {}
            for (x, y), c in pairs.items():
                send_msgs[x] = send_msgs.get(x, 0) + 1
                send_bytes[x] = send_bytes.get(x, 0) + c
                recv_msgs[y] = recv_msgs.get(y, 0) + 1
                recv_bytes[y] = recv_bytes.get(y, 0) + c
            out[name] = {"send_messages": send_msgs, "send_bytes": send_bytes,
                         "recv_messages": recv_msgs, "recv_bytes": recv_bytes}
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """JSON-able description; :meth:`from_dict` rebuilds an identical plan."""
        return {"grid": self.grid.to_dict(), "src": self.src.to_dict(), "dst": self.dst.to_dict(),
                "halo": self.halo, "tile_shape": self.tile_shape,
                "blocks": self.blocks.tolist(), "fills": self.fills.tolist(),
                "back_blocks": self.back_blocks.tolist(), "back_fills": self.back_fills.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        grid = Grid.from_dict(data["grid"])
        tables = (np.array(data["blocks"], dtype=np.int64).reshape(-1, 9),
                  np.array(data["fills"], dtype=np.int64).reshape(-1, 5),
                  np.array(data["back_blocks"], dtype=np.int64).reshape(-1, 8),
                  np.array(data["back_fills"], dtype=np.int64).reshape(-1, 5))
        return cls(grid, Decomposition.from_dict(data["src"]), Decomposition.from_dict(data["dst"]),
                   int(data["halo"]), data["tile_shape"], tables=tables)

    def __repr__(self) -> str:
        return (f"Plan({self.grid.describe()}, {self.n_src} src boxes -> {self.n_dst} tiles, "
                f"halo {self.halo}, {len(self.blocks)} blocks in {len(self.pairs)} messages)")

def _pair_slices(a: np.ndarray, b: np.ndarray) -> dict:
    """``{(a, b): (lo, hi)}`` for a table sorted by (a, b)."""
    out = {}
    if a.size == 0:
        return out
    change = np.flatnonzero((np.diff(a) != 0) | (np.diff(b) != 0)) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [a.size]))
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        out[(int(a[lo]), int(b[lo]))] = (lo, hi)
    return out
