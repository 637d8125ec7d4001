"""The boundary-condition semantics of docs/architecture.md applied to a global NumPy array.

A production module with two uses: it is the test oracle (every plan, kernel backend, transport
and strategy must reproduce its arrays bit for bit), and the one place that maps a point outside
the grid to its source point (the OASIS partitions list those source points; the demo extends
its global field with it). Written for clarity, not speed: every halo point is mapped with index
arrays, so it is never on a coupled run's hot path.
"""
from __future__ import annotations

import numpy as np

from .decomposition import Box
from .grid import Grid

FILL, PLAIN, FOLDED = 0, 1, 2


def source_points(grid: Grid, jj: np.ndarray, ii: np.ndarray):
    """Map global (possibly out-of-grid) points to their sources.

    Returns ``(src_j, src_i, kind)`` broadcast to a common shape; ``kind`` is FILL (the fill
    value), PLAIN (a copy of ``F[src_j, src_i]``) or FOLDED (``sign * F[src_j, src_i]``).
    """
    jj, ii = np.broadcast_arrays(np.asarray(jj, dtype=np.int64), np.asarray(ii, dtype=np.int64))
    shape = jj.shape
    jj, ii = jj.reshape(-1), ii.reshape(-1)
    nx, ny = grid.nx, grid.ny
    kind = np.full(jj.shape, PLAIN, dtype=np.int8)
    # east-west first: cyclic wrap or fill
    outside_i = (ii < 0) | (ii >= nx)
    if grid.east_west == "cyclic":
        si = np.mod(ii, nx)
    else:
        si = np.where(outside_i, 0, ii)
        kind[outside_i] = FILL
    sj = jj.copy()
    south = jj < 0
    if grid.south == "cyclic":
        sj[south] = np.mod(jj[south], ny)
    else:
        kind[south] = FILL
        sj[south] = 0
    north = jj >= ny
    if grid.north == "cyclic":
        sj[north] = np.mod(jj[north], ny)
    elif grid.north == "closed":
        kind[north] = FILL
        sj[north] = 0
    else:  # fold: row ny + k, column i -> F[ny - 1 - a - k, (nx - 1 - i + b) mod nx]
        a, b = grid.fold_shift
        k = jj[north] - ny
        sj[north] = ny - 1 - a - k
        si[north] = np.mod(nx - 1 - si[north] + b, nx)
        kind[north & (kind != FILL)] = FOLDED
    fill_pts = kind == FILL
    sj[fill_pts] = 0
    si[fill_pts] = 0
    if np.any((sj < 0) | (sj >= ny)):
        raise ValueError(f"halo too wide for {grid.describe()}: a point maps outside the grid")
    return sj.reshape(shape), si.reshape(shape), kind.reshape(shape)


def reference_tile(glb: np.ndarray, grid: Grid, box: Box, halo: int, sign: float = 1.0,
                   fill: float = 0.0, owned: np.ndarray | None = None) -> np.ndarray:
    """Tile ``box`` with ``halo`` cells on each side, of the global array ``glb`` (nz, ny, nx).

    ``owned`` (ny, nx) bool marks points that exist (False for land-only holes, which read as
    ``fill`` like any point outside the grid).
    """
    glb = np.asarray(glb)
    if glb.ndim == 2:
        glb = glb[None]
    j0, j1, i0, i1 = box
    jj = np.arange(j0 - halo, j1 + halo)[:, None]
    ii = np.arange(i0 - halo, i1 + halo)[None, :]
    sj, si, kind = source_points(grid, jj, ii)
    if owned is not None:
        kind = np.where(owned[sj, si], kind, FILL)
    vals = glb[:, sj, si]
    folded = vals * np.asarray(sign, dtype=glb.dtype)
    out = np.where(kind == FOLDED, folded, vals)
    out = np.where(kind == FILL, np.asarray(fill, dtype=glb.dtype), out)
    return np.ascontiguousarray(out.astype(glb.dtype, copy=False))


def extend(glb: np.ndarray, grid: Grid, halo: int, sign: float = 1.0, fill: float = 0.0) -> np.ndarray:
    """The whole global array with ``halo`` cells added on every side (the single-process
    reference of a coupled run)."""
    return reference_tile(glb, grid, Box(0, grid.ny, 0, grid.nx), halo, sign, fill)


def assemble(pieces, boxes, grid: Grid, nz: int, dtype, fill: float = 0.0) -> np.ndarray:
    """Global ``(nz, ny, nx)`` array from one ``(nz, bj, bi)`` piece per box; holes get ``fill``."""
    glb = np.full((nz, grid.ny, grid.nx), fill, dtype=dtype)
    for p, b in zip(pieces, boxes):
        glb[:, b.j0:b.j1, b.i0:b.i1] = p
    return glb


def lagged(results, lag: int, initial):
    """What a model gets at each occurrence of an exchange with ``lag`` (OASIS' LAG, counted in
    occurrences): ``results[n - lag]``, the result computed from the inputs of occurrence
    ``n - lag``, or ``initial`` for the first ``lag`` occurrences. The single-process semantics
    every lagged coupled run must reproduce."""
    results = list(results)
    return [initial if n < lag else results[n - lag] for n in range(len(results))]
