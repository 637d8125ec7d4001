"""Hypothesis strategies shared by the tests: grids, decompositions, halos."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import eophis_hpc as eh
from eophis_hpc.decomposition import Box

BACKENDS = ("cython", "numba", "numpy")


@st.composite
def grids(draw, max_n: int = 24):
    """Any valid small grid: every edge condition, both pivots, all point types."""
    north = draw(st.sampled_from(("closed", "cyclic", "fold")))
    south = draw(st.sampled_from(("closed", "cyclic")))
    pivot = draw(st.sampled_from(("T", "F")))
    point = draw(st.sampled_from(("T", "U", "V", "F")))
    min_ny = 3 if north == "fold" else 1
    return eh.Grid(nx=draw(st.integers(1, max_n)), ny=draw(st.integers(min_ny, max_n)),
                   east_west=draw(st.sampled_from(("closed", "cyclic"))), south=south,
                   north=north, pivot=pivot, point=point)


@st.composite
def guillotine_boxes(draw, ny: int, nx: int, max_boxes: int = 9):
    """Uneven boxes covering the grid, by random recursive cuts."""
    boxes = [Box(0, ny, 0, nx)]
    for _ in range(draw(st.integers(0, max_boxes - 1))):
        k = draw(st.integers(0, len(boxes) - 1))
        b = boxes[k]
        along_j = draw(st.booleans())
        if along_j and b.j1 - b.j0 > 1:
            cut = draw(st.integers(b.j0 + 1, b.j1 - 1))
            boxes[k:k + 1] = [Box(b.j0, cut, b.i0, b.i1), Box(cut, b.j1, b.i0, b.i1)]
        elif not along_j and b.i1 - b.i0 > 1:
            cut = draw(st.integers(b.i0 + 1, b.i1 - 1))
            boxes[k:k + 1] = [Box(b.j0, b.j1, b.i0, cut), Box(b.j0, b.j1, cut, b.i1)]
    return boxes


@st.composite
def decompositions(draw, grid: eh.Grid, allow_holes: bool = True):
    """Balanced blocks, auto, or explicit uneven boxes, sometimes with land-only boxes removed."""
    kind = draw(st.sampled_from(("blocks", "auto", "explicit")))
    if kind == "blocks":
        dec = eh.Decomposition.blocks(grid, draw(st.integers(1, min(grid.nx, 4))),
                                      draw(st.integers(1, min(grid.ny, 4))))
    elif kind == "auto":
        n = draw(st.integers(1, 6))
        try:
            dec = eh.Decomposition.auto(grid, n)
        except ValueError:
            dec = eh.Decomposition.auto(grid, 1)
    else:
        dec = eh.Decomposition.from_boxes(grid, draw(guillotine_boxes(grid.ny, grid.nx)))
    if allow_holes and len(dec.boxes) > 1 and draw(st.booleans()):
        keep = draw(st.lists(st.booleans(), min_size=len(dec.boxes), max_size=len(dec.boxes)))
        kept = [b for b, k in zip(dec.boxes, keep) if k] or dec.boxes[:1]
        dec = eh.Decomposition.from_boxes(grid, kept, holes=True)
    return dec


def halos(grid: eh.Grid, cap: int = 7):
    limit = grid.max_halo()
    return st.integers(0, cap if limit is None else min(cap, limit))


def random_pieces(rng: np.random.Generator, dec: eh.Decomposition, nz: int, dtype):
    """A random global field (holes keep NaN, so a hole read by mistake cannot go unnoticed)
    and its pieces, one per box."""
    glb = rng.standard_normal((nz, dec.grid.ny, dec.grid.nx)).astype(dtype)
    pieces = [np.ascontiguousarray(glb[:, b.j0:b.j1, b.i0:b.i1]) for b in dec.boxes]
    owned = dec.owner_map() >= 0
    glb[:, ~owned] = np.nan
    return glb, pieces, owned
