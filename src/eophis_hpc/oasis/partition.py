"""OASIS partitions of a worker's tiles, and the kernel runs that reorder what OASIS delivers (pure).

With ``transport="oasis"`` a worker receives each field through one OASIS ``OrangePartition``
that lists every global point its tiles need, real AND halo cells, with the cyclic wrap and the
north fold of docs/architecture.md already resolved to the source points: one ``get`` delivers everything,
and no halo exchange is needed afterwards. It sends its tiles' own boxes (no halo) back through a
``BoxPartition`` (one tile per worker, as Eophis) or an ``OrangePartition`` (several tiles).

Global numbering (OASIS'): ``g = j * nx + i``, x fastest; segment offsets are counted from 0 (the
number of points before the segment), as pyoasis' Python API takes them.

**Distinct, sorted points.** The OASIS3-MCT user guide (section "Orange partition") does not say
whether a process may list a point twice, and nothing in OASIS checks it: ``mod_oasis_part.F90``
hands the segments, in the given order, to MCT's ``GlobalSegMap``, whose own documentation
allows "haloed" maps only as a point held by several *processes*; MCT's ``m_Router`` then pairs
local and remote segments in loop order, which keeps both ends of a message in the same order
only when segments are sorted and disjoint. Eophis 1.0.2 (``domain/offsiz.py``,
``clean_for_oasis``) removes duplicated points and sorts them before defining its orange
partitions. We do the same: the partition holds every needed point once, in increasing global
order (merged into maximal contiguous segments), and the reorder runs replicate the points a tile
needs twice (a fold row that mirrors the tile's own rows, a cyclic halo of a full-width tile,
neighbouring tiles of one worker). The OASIS3-MCT 5.0 user guide still mentions a limit of 200
segments per orange partition (a leftover of OASIS3's ``Clim_MaxSegments``; OASIS3-MCT's
``mod_oasis_part.F90`` allocates the segments dynamically): :attr:`RecvPartition.n_segments`
lets the caller warn about it.

**Reorder with the kernels.** pyoasis delivers a bundle of ``L`` levels as a Fortran
``(points, L)`` array, that is level-major memory: C ``(L, points)``. The worker's batch
``(tiles, L, H + 2h, W + 2h)`` is viewed as one 3-D array ``(1, tiles * L * (H + 2h), W + 2h)``
so that a single ``unpack`` call reads the received buffer sequentially, level after level, and
writes every point once (folded runs reversed and signed); a ``pack``/``unpack`` pair then copies
the replicated points from their first copy, and ``fill`` sets the cells past closed edges. Runs
are computed once per level count; nothing on the hot path indexes with arrays.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import kernels
from ..decomposition import Box, Decomposition, split_balanced
from ..grid import Grid
from ..reference import FILL, FOLDED, PLAIN, source_points

#: segment limit quoted by the OASIS3-MCT 5.0 user guide for orange partitions
OASIS_GUIDE_MAX_SEGMENTS = 200


# ---------------------------------------------------------------------- decomposition (Eophis)
def eophis_factors(n: int, nx: int, ny: int) -> tuple[int, int]:
    """``(px, py)`` with ``px * py = n`` chosen as Eophis 1.0.2 does (``Grid.decompose``): the
    factor pair whose ratio (larger / smaller) is closest to the grid's aspect ratio, the larger
    factor along the longer axis; the first best pair wins ties."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of subdomains must be a positive integer, got {n!r}")
    target = max(nx / ny, ny / nx)
    best = None
    for i in range(1, math.isqrt(n) + 1):
        if n % i:
            continue
        j = n // i
        diff = abs(j / i - target)
        if best is None or diff < best[0]:
            best = (diff, (j, i) if nx >= ny else (i, j))
    px, py = best[1]
    if px > nx or py > ny:
        raise ValueError(f"cannot split a {nx}x{ny} grid into {n} subdomains ({px}x{py} blocks)")
    return px, py


def worker_tiles(grid: Grid, n_workers: int, n_tiles: int | None = None) -> list[list[Box]]:
    """Own boxes of every worker's tiles.

    One tile per worker (default): Eophis' ``px x py`` blocks, x fastest, remainders to the first
    blocks. ``n_tiles`` > workers: :meth:`Decomposition.auto` tiles, contiguous ranges per worker
    (as the MPI runtime's layout)."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    if n_tiles is None or n_tiles == n_workers:
        px, py = eophis_factors(n_workers, grid.nx, grid.ny)
        return [[b] for b in Decomposition.blocks(grid, px, py).boxes]
    if n_tiles < n_workers:
        raise ValueError(f"{n_workers} workers for {n_tiles} tiles: every worker needs a tile")
    boxes = Decomposition.auto(grid, n_tiles).boxes
    starts = split_balanced(len(boxes), n_workers)
    return [boxes[starts[w]:starts[w + 1]] for w in range(n_workers)]


# ---------------------------------------------------------------------- run building blocks
def _continues(key: np.ndarray, values: Sequence[np.ndarray], steps: Sequence[np.ndarray]):
    """Whether item ``i`` continues item ``i - 1``: equal ``key`` rows, and every array of
    ``values`` ((n,) or (n, m)) advanced by its ``steps`` (same shape, +1 or -1)."""
    n = key.shape[0]
    cont = np.zeros(n, dtype=bool)
    if n > 1:
        ok = np.all(key[1:] == key[:-1], axis=1)
        for v, s in zip(values, steps):
            moved = v[1:] == v[:-1] + s[:-1]
            ok &= moved if moved.ndim == 1 else np.all(moved, axis=1)
        cont[1:] = ok
    starts = np.flatnonzero(~cont)
    return starts, np.diff(np.append(starts, n)).astype(np.int64)


def _row_runs(key: np.ndarray, col: np.ndarray, step: np.ndarray):
    """Split a sequence of cells into runs along a row: ``key`` (n, k) stays equal within a run,
    ``col`` advances by ``step``. Returns ``(starts, lengths)``."""
    return _continues(key, [col], [step])


def _merge_rows(key: np.ndarray, rows: Sequence[np.ndarray], steps: Sequence[np.ndarray]):
    """Group consecutive row runs into rectangles: a run continues the previous rectangle when
    its ``key`` columns are equal and each array of ``rows`` advances by its ``steps``.
    Returns ``(starts, counts)``."""
    return _continues(key, rows, steps)


def _group_min(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.minimum.reduceat(values, starts) if starts.size else values[:0]


def _levels(runs: np.ndarray, tiles: np.ndarray, levels: int, height: int,
            row_col: int = 0) -> np.ndarray:
    """Runs of one level (``runs[:, row_col]`` = row inside a tile) replicated for ``levels``
    levels, level-major, as rows of the flattened ``(1, tiles * levels * height, width)`` view."""
    if runs.shape[0] == 0:
        return np.zeros((0, runs.shape[1]), dtype=np.int64)
    out = np.repeat(runs[None], levels, axis=0)  # (L, n, c)
    k = np.arange(levels, dtype=np.int64)[:, None]
    out[:, :, row_col] += (tiles[None, :] * levels + k) * height
    return np.ascontiguousarray(out.reshape(-1, runs.shape[1]))


def _segments(points: np.ndarray):
    """Sorted distinct global indices -> (offsets, sizes) of maximal contiguous segments."""
    if points.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    brk = np.flatnonzero(np.diff(points) != 1) + 1
    starts = np.concatenate(([0], brk))
    sizes = np.diff(np.append(starts, points.size))
    return points[starts].astype(np.int64), sizes.astype(np.int64)


def _check_boxes(grid: Grid, boxes) -> list[Box]:
    out = []
    for k, b in enumerate(boxes):
        b = Box(*(int(v) for v in b))
        if not (0 <= b.j0 < b.j1 <= grid.ny and 0 <= b.i0 < b.i1 <= grid.nx):
            raise ValueError(f"tile {k} {tuple(b)} is empty or outside the {grid.ny}x{grid.nx} grid")
        out.append(b)
    if not out:
        raise ValueError("a worker needs at least one tile")
    return out


class _LevelRuns:
    """Runs of a :class:`RecvPartition` for one level count (all int64, C-contiguous)."""

    def __init__(self, prim, dup_src, dup_dst, fills, dup_cells):
        self.prim, self.dup_src, self.dup_dst, self.fills = prim, dup_src, dup_dst, fills
        self.dup_cells = dup_cells


class _Partition:
    """What both partitions share: their tiles, their OASIS segments, and the buffer pyoasis
    moves (Fortran-ordered ``(points, levels)``)."""

    @property
    def n_tiles(self) -> int:
        return len(self.boxes)

    @property
    def n_segments(self) -> int:
        return int(self.offsets.size)

    def new_buffer(self, levels: int, dtype=np.float64) -> np.ndarray:
        """A buffer as pyoasis wants it: Fortran-ordered ``(points, levels)``."""
        return np.empty((levels, self.n_points), dtype=dtype).T


# ---------------------------------------------------------------------- receiving side
class RecvPartition(_Partition):
    """The orange partition of one worker's tiles with their halo, and the reorder into a batch.

    ``boxes``: the own boxes of the worker's tiles; each tile reads a ``tile_shape`` box from its
    own origin (default: the largest of the worker's boxes, so uneven tiles stack) plus ``halo``
    cells on every side. Attributes: ``offsets``/``sizes`` (int64 segments, 0-based offsets,
    increasing), ``global_size`` (nx * ny), ``n_points``, ``read_boxes``, ``shape`` (the batch's
    ``(H + 2h, W + 2h)``).
    """

    def __init__(self, grid: Grid, boxes: Sequence, halo: int = 0,
                 tile_shape: tuple[int, int] | None = None):
        if not isinstance(grid, Grid):
            raise TypeError(f"RecvPartition: grid must be an eophis_hpc.Grid, got {type(grid).__name__}")
        self.grid = grid
        self.halo = grid.check_halo(halo, "RecvPartition: halo")
        self.boxes = _check_boxes(grid, boxes)
        if tile_shape is None:
            tile_shape = (max(b.j1 - b.j0 for b in self.boxes), max(b.i1 - b.i0 for b in self.boxes))
        th, tw = (int(v) for v in tile_shape)
        if any(b.j1 - b.j0 > th or b.i1 - b.i0 > tw for b in self.boxes):
            raise ValueError(f"RecvPartition: tile_shape {(th, tw)} is smaller than a tile")
        self.read_boxes = [Box(b.j0, b.j0 + th, b.i0, b.i0 + tw) for b in self.boxes]
        h = self.halo
        self.shape = (th + 2 * h, tw + 2 * h)
        self.global_size = grid.nx * grid.ny
        self._build()
        self._cache: dict[int, _LevelRuns] = {}

    def _build(self) -> None:
        g, h = self.grid, self.halo
        H, W = self.shape
        nt = self.n_tiles
        sj = np.empty((nt, H, W), np.int64)
        si = np.empty((nt, H, W), np.int64)
        kind = np.empty((nt, H, W), np.int8)
        inner = np.empty((nt, H, W), bool)
        for t, rb in enumerate(self.read_boxes):
            jj = np.arange(rb.j0 - h, rb.j0 - h + H, dtype=np.int64)[:, None]
            ii = np.arange(rb.i0 - h, rb.i0 - h + W, dtype=np.int64)[None, :]
            sj[t], si[t], kind[t] = source_points(g, jj, ii)
            inner[t] = (jj == sj[t]) & (ii == si[t]) & (kind[t] == PLAIN)
        flat_t, flat_j, flat_i = (a.reshape(-1) for a in np.indices((nt, H, W), dtype=np.int64))
        kind, inner = kind.reshape(-1), inner.reshape(-1)
        gidx = (sj * g.nx + si).reshape(-1)
        folded = (kind == FOLDED).astype(np.int64)

        data = np.flatnonzero(kind != FILL)
        # primary copy of each point: an interior cell if any, else a plain one, else the first
        order = data[np.lexsort((data, folded[data], ~inner[data], gidx[data]))]
        g_sorted = gidx[order]
        first = np.ones(order.size, dtype=bool)
        first[1:] = g_sorted[1:] != g_sorted[:-1]
        prim = order[first]                     # buffer order: increasing global index
        self.points = g_sorted[first]
        self.offsets, self.sizes = _segments(self.points)
        self.n_points = int(self.points.size)

        # -- primary runs: buffer order, rows forward (plain) or backward (folded)
        pt, pj, pi, pf = flat_t[prim], flat_j[prim], flat_i[prim], folded[prim]
        st, ln = _row_runs(np.stack([pt, pj, pf], 1), pi, 1 - 2 * pf)
        last = st + ln - 1
        r_t, r_j, r_f = pt[st], pj[st], pf[st]
        r_i = np.where(r_f == 1, pi[last], pi[st])
        gs, gc = _merge_rows(np.stack([r_t, r_f, r_i, ln], 1), [r_j], [1 - 2 * r_f])
        self._prim = np.stack([_group_min(r_j, gs), r_i[gs], gc, ln[gs], r_f[gs]], 1)
        self._prim_t = r_t[gs]

        # -- replicated points: copied from their primary, in destination raster order
        group = np.cumsum(first) - 1            # for every cell of `order`, its point's rank
        dups_pos = np.flatnonzero(~first)
        dup_cells = order[dups_pos]
        src_cells = prim[group[dups_pos]]
        srt = np.argsort(dup_cells, kind="stable")
        dup_cells, src_cells = dup_cells[srt], src_cells[srt]
        dt_, dj_, di_, df = (flat_t[dup_cells], flat_j[dup_cells], flat_i[dup_cells],
                             folded[dup_cells])
        qt, qj, qi, qf = (flat_t[src_cells], flat_j[src_cells], flat_i[src_cells],
                          folded[src_cells])
        x = df ^ qf                             # relative orientation = reversal and sign
        # a run goes along a destination row (column +1) while its source moves along a row
        # of the same tile by +1 (same orientation) or -1 (reversed)
        st, ln = _row_runs(np.stack([dt_, dj_, qt, qj, x], 1), np.stack([di_, qi], 1),
                           np.stack([np.ones_like(x), 1 - 2 * x], 1))
        last = st + ln - 1
        rq_i = np.where(x[st] == 1, qi[last], qi[st])
        d_t, d_j, d_i, s_t, s_j, r_x = dt_[st], dj_[st], di_[st], qt[st], qj[st], x[st]
        gs, gc = _merge_rows(np.stack([d_t, s_t, r_x, d_i, rq_i, ln], 1), [d_j, s_j],
                             [np.ones_like(d_j), 1 - 2 * r_x])
        self._dup_dst = np.stack([d_j[gs], d_i[gs], gc, ln[gs], r_x[gs]], 1) if gs.size else \
            np.zeros((0, 5), np.int64)
        self._dup_src = np.stack([_group_min(s_j, gs), rq_i[gs], gc, ln[gs]], 1) if gs.size else \
            np.zeros((0, 4), np.int64)
        self._dup_dst_t, self._dup_src_t = d_t[gs], s_t[gs]
        self._dup_cells = int(dup_cells.size)

        # -- fills: cells past closed edges, in raster order, merged into rectangles
        fc = np.flatnonzero(kind == FILL)
        ft, fj, fi = flat_t[fc], flat_j[fc], flat_i[fc]
        st, ln = _row_runs(np.stack([ft, fj], 1), fi, np.ones_like(fi))
        r_t, r_j, r_i = ft[st], fj[st], fi[st]
        gs, gc = _merge_rows(np.stack([r_t, r_i, ln], 1), [r_j], [np.ones_like(r_j)])
        self._fills = np.stack([r_j[gs], r_i[gs], gc, ln[gs]], 1) if gs.size else \
            np.zeros((0, 4), np.int64)
        self._fills_t = r_t[gs]

    # ------------------------------------------------------------------ runs per level count
    def runs(self, levels: int) -> _LevelRuns:
        """The runs for ``levels`` levels, cached (rows of the flattened batch view)."""
        runs = self._cache.get(levels)
        if runs is None:
            H = self.shape[0]
            runs = _LevelRuns(
                _levels(self._prim, self._prim_t, levels, H),
                _levels(self._dup_src, self._dup_src_t, levels, H),
                _levels(self._dup_dst, self._dup_dst_t, levels, H),
                _levels(self._fills, self._fills_t, levels, H),
                self._dup_cells * levels)
            self._cache[levels] = runs
        return runs

    @property
    def is_identity(self) -> bool:
        """True when the received buffer already is the batch's memory (one tile whose box with
        its halo lies inside the grid, so nothing wraps, folds or fills): the worker can ``get``
        straight into its batch."""
        H, W = self.shape
        return (self.n_tiles == 1 and self._dup_cells == 0 and self._fills.shape[0] == 0
                and self._prim.shape[0] == 1
                and self._prim[0].tolist() == [0, 0, H, W, 0])

    def new_batch(self, levels: int, dtype=np.float64) -> np.ndarray:
        return np.empty((self.n_tiles, levels) + self.shape, dtype=dtype)

    def apply(self, buf: np.ndarray, batch: np.ndarray, sign: float = 1.0, fill: float = 0.0,
              backend=None) -> None:
        """Reorder a received buffer into ``batch`` (tiles, levels, H + 2h, W + 2h).

        ``buf``: the Fortran ``(points, levels)`` array OASIS filled (or its level-major 1-D
        memory). Casts to the batch's dtype in the copy; folded cells are multiplied by ``sign``;
        cells past closed edges get ``fill``."""
        kern = kernels.get(backend)
        flat = _level_major(buf, self.n_points)
        levels = flat.size // self.n_points if self.n_points else batch.shape[1]
        expected = (self.n_tiles, levels) + self.shape
        if not isinstance(batch, np.ndarray) or batch.shape != expected:
            raise ValueError(f"RecvPartition.apply: batch must have shape {expected}, got "
                             f"{getattr(batch, 'shape', type(batch).__name__)}")
        if not batch.flags.c_contiguous:
            raise ValueError("RecvPartition.apply: batch must be C-contiguous")
        runs = self.runs(levels)
        view = batch.reshape(1, -1, self.shape[1])
        if runs.fills.shape[0]:
            kern.fill(view, runs.fills, fill)
        kern.unpack(flat, view, runs.prim, sign)
        if runs.dup_cells:
            scratch = np.empty(runs.dup_cells, dtype=batch.dtype)
            kern.pack(view, runs.dup_src, scratch)
            kern.unpack(scratch, view, runs.dup_dst, sign)


def _level_major(buf: np.ndarray, n_points: int) -> np.ndarray:
    """The 1-D level-major memory of a Fortran ``(points, levels)`` buffer, without a copy."""
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"expected a numpy.ndarray buffer, got {type(buf).__name__}")
    if buf.ndim == 1:
        flat = buf
    elif buf.ndim == 2 and buf.shape[0] == n_points:
        if not buf.flags.f_contiguous:
            raise ValueError("the OASIS buffer must be Fortran-ordered (points, levels): use "
                             "pyoasis.asarray or RecvPartition.new_buffer")
        flat = buf.T.reshape(-1)
    else:
        raise ValueError(f"the OASIS buffer must be (points={n_points}, levels), got {buf.shape}")
    if not flat.flags.c_contiguous:
        raise ValueError("the OASIS buffer must be contiguous")
    if n_points and flat.size % n_points:
        raise ValueError(f"the OASIS buffer holds {flat.size} values, not a multiple of the "
                         f"{n_points} points of the partition")
    return flat


# ---------------------------------------------------------------------- sending side
class SendPartition(_Partition):
    """The points a worker sends back: its tiles' own boxes, without halo.

    ``box``: ``(offset, nx_loc, ny_loc, nx_glb)`` of a ``BoxPartition`` when the worker has one
    tile (Eophis' case), else None; ``offsets``/``sizes``: the same points as orange segments
    (always available). :meth:`pack` writes an output batch into the Fortran ``(points, levels)``
    send buffer with the kernels."""

    def __init__(self, grid: Grid, boxes: Sequence):
        if not isinstance(grid, Grid):
            raise TypeError(f"SendPartition: grid must be an eophis_hpc.Grid, got {type(grid).__name__}")
        self.grid = grid
        self.boxes = _check_boxes(grid, boxes)
        self.global_size = grid.nx * grid.ny
        nx = grid.nx
        tt, jj, ii, gg = [], [], [], []
        for t, b in enumerate(self.boxes):
            lj, li = np.indices(b.shape, dtype=np.int64)
            tt.append(np.full(lj.size, t, np.int64))
            jj.append(lj.reshape(-1))
            ii.append(li.reshape(-1))
            gg.append(((lj + b.j0) * nx + li + b.i0).reshape(-1))
        t, j, i, gidx = (np.concatenate(a) for a in (tt, jj, ii, gg))
        order = np.argsort(gidx, kind="stable")
        t, j, i, gidx = t[order], j[order], i[order], gidx[order]
        if np.any(np.diff(gidx) == 0):
            raise ValueError("SendPartition: the tiles overlap")
        self.points = gidx
        self.n_points = int(gidx.size)
        self.offsets, self.sizes = _segments(gidx)
        st, ln = _row_runs(np.stack([t, j], 1), i, np.ones_like(i))
        r_t, r_j, r_i = t[st], j[st], i[st]
        gs, gc = _merge_rows(np.stack([r_t, r_i, ln], 1), [r_j], [np.ones_like(r_j)])
        self._runs = np.stack([r_j[gs], r_i[gs], gc, ln[gs]], 1)
        self._runs_t = r_t[gs]
        b0 = self.boxes[0]
        self.box = ((b0.j0 * nx + b0.i0, b0.i1 - b0.i0, b0.j1 - b0.j0, nx)
                    if len(self.boxes) == 1 else None)
        self._cache: dict = {}


    def runs(self, levels: int, height: int, offset: int) -> np.ndarray:
        """Pack runs for outputs of ``height`` rows whose own boxes start at ``(offset, offset)``."""
        key = (levels, height, offset)
        runs = self._cache.get(key)
        if runs is None:
            base = self._runs.copy()
            base[:, :2] += offset
            runs = _levels(base, self._runs_t, levels, height)
            self._cache[key] = runs
        return runs

    def pack(self, outputs: np.ndarray, buf: np.ndarray, offset: int = 0, backend=None) -> None:
        """Copy the own boxes of ``outputs`` (tiles, levels, Hs, Ws), which start at
        ``(offset, offset)`` in every tile, into the Fortran ``(points, levels)`` ``buf``."""
        if not isinstance(outputs, np.ndarray) or outputs.ndim != 4 or not outputs.flags.c_contiguous:
            raise ValueError("SendPartition.pack: outputs must be a C-contiguous (tiles, levels, "
                             "H, W) array")
        if outputs.shape[0] != self.n_tiles:
            raise ValueError(f"SendPartition.pack: {outputs.shape[0]} tiles, the partition has "
                             f"{self.n_tiles}")
        flat = _level_major(buf, self.n_points)
        levels, height = outputs.shape[1], outputs.shape[2]
        kernels.get(backend).pack(outputs.reshape(1, -1, outputs.shape[3]),
                                  self.runs(levels, height, offset), flat)


def oasis_order(glb: np.ndarray, offsets, sizes) -> np.ndarray:
    """What OASIS delivers for segments ``offsets``/``sizes`` of a global ``(L, ny, nx)`` array:
    a Fortran ``(points, L)`` array (for tests and offline use; fancy indexing, not a hot path)."""
    glb = np.asarray(glb)
    flat = glb.reshape(glb.shape[0], -1)
    idx = np.concatenate([np.arange(o, o + s) for o, s in zip(np.asarray(offsets).tolist(),
                                                               np.asarray(sizes).tolist())]
                         or [np.zeros(0, np.int64)])
    return np.asfortranarray(flat[:, idx].T)
