"""Splitting a grid into boxes and assigning boxes to ranks (layer 2, pure).

A :class:`Decomposition` is plain data: the grid, a list of half-open inner boxes, and whether
points owned by no box (land-only blocks that NEMO removes) are allowed. It never communicates.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from .grid import Grid


class Box(NamedTuple):
    """Half-open box of global inner points: ``j in [j0, j1)``, ``i in [i0, i1)``."""

    j0: int
    j1: int
    i0: int
    i1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.j1 - self.j0, self.i1 - self.i0)

    @property
    def size(self) -> int:
        return (self.j1 - self.j0) * (self.i1 - self.i0)


def split_balanced(n: int, parts: int) -> list[int]:
    """Start offsets of ``parts`` near-equal pieces of ``n`` (remainder to the first pieces, as
    NEMO's ``mpp_basesplit`` and Eophis do); the list has ``parts + 1`` entries."""
    if parts < 1 or parts > n:
        raise ValueError(f"cannot split {n} points into {parts} pieces")
    base, rem = divmod(n, parts)
    starts = [0]
    for p in range(parts):
        starts.append(starts[-1] + base + (1 if p < rem else 0))
    return starts


def _as_box(b, k: int) -> Box:
    try:
        vals = tuple(int(v) for v in b)
    except (TypeError, ValueError):
        raise TypeError(f"boxes[{k}]: expected (j0, j1, i0, i1) integers, got {b!r}") from None
    if len(vals) != 4:
        raise TypeError(f"boxes[{k}]: expected 4 values (j0, j1, i0, i1), got {len(vals)}")
    return Box(*vals)


class Decomposition:
    """Boxes of a grid, one per source rank (model side) or per tile (worker side).

    ``holes=False`` demands that the boxes cover every inner point exactly once; ``holes=True``
    lets points belong to no box (land-only blocks): they read as the fill value.
    """

    def __init__(self, grid: Grid, boxes: Sequence, holes: bool = False):
        if not isinstance(grid, Grid):
            raise TypeError(f"Decomposition: grid must be an eophis_hpc.Grid, got {type(grid).__name__}")
        self.grid = grid
        self.boxes = [_as_box(b, k) for k, b in enumerate(boxes)]
        self.holes = bool(holes)
        if not self.boxes:
            raise ValueError("Decomposition: no boxes")
        self._validate()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_boxes(cls, grid: Grid, boxes: Sequence, holes: bool = False) -> "Decomposition":
        """Explicit boxes ``(j0, j1, i0, i1)``; they must not overlap and (unless ``holes``)
        must cover the grid."""
        return cls(grid, boxes, holes=holes)

    @classmethod
    def blocks(cls, grid: Grid, px: int, py: int) -> "Decomposition":
        """``px x py`` balanced blocks, x fastest in the numbering (NEMO's and Eophis' order)."""
        for name, val, n in (("px", px, grid.nx), ("py", py, grid.ny)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"Decomposition.blocks: {name} must be a positive integer, got {val!r}")
            if val > n:
                raise ValueError(f"Decomposition.blocks: {name}={val} is more than the {n} points "
                                 f"of the grid in that direction")
        xs, ys = split_balanced(grid.nx, px), split_balanced(grid.ny, py)
        return cls(grid, [Box(ys[q], ys[q + 1], xs[p], xs[p + 1])
                          for q in range(py) for p in range(px)])

    @classmethod
    def auto(cls, grid: Grid, n: int) -> "Decomposition":
        """``n`` blocks with ``px * py = n`` and ``px / py`` as close as possible to ``nx / ny``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Decomposition.auto: n must be a positive integer, got {n!r}")
        px, py = best_factors(n, grid.nx, grid.ny)
        return cls.blocks(grid, px, py)

    @classmethod
    def nemo(cls, grid: Grid, jpni: int, jpnj: int, mask=None) -> "Decomposition":
        """NEMO's ``jpni x jpnj`` blocks; with a land mask ``(ny, nx)`` (nonzero = ocean), blocks
        with no ocean point are removed, as NEMO does, and their points read as fill values."""
        full = cls.blocks(grid, jpni, jpnj)
        if mask is None:
            return full
        mask = np.asarray(mask)
        if mask.shape != grid.shape:
            raise ValueError(f"Decomposition.nemo: mask has shape {mask.shape}, the grid is "
                             f"{grid.shape} (ny, nx)")
        keep = [b for b in full.boxes if np.any(mask[b.j0:b.j1, b.i0:b.i1])]
        if not keep:
            raise ValueError("Decomposition.nemo: the mask has no ocean point")
        return cls(grid, keep, holes=len(keep) < len(full.boxes))

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.boxes)

    def __iter__(self):
        return iter(self.boxes)

    def __getitem__(self, k: int) -> Box:
        return self.boxes[k]

    def __repr__(self) -> str:
        return (f"Decomposition({len(self.boxes)} boxes of {self.grid.describe()}"
                f"{', holes' if self.holes else ''})")

    def as_array(self) -> np.ndarray:
        """Boxes as an ``(n, 4)`` int64 array of ``j0, j1, i0, i1``."""
        return np.array(self.boxes, dtype=np.int64).reshape(-1, 4)

    def owner_map(self) -> np.ndarray:
        """``(ny, nx)`` int array: index of the box owning each point, -1 for holes."""
        own = np.full(self.grid.shape, -1, dtype=np.int64)
        for k, b in enumerate(self.boxes):
            own[b.j0:b.j1, b.i0:b.i1] = k
        return own

    def max_shape(self) -> tuple[int, int]:
        return (max(b.j1 - b.j0 for b in self.boxes), max(b.i1 - b.i0 for b in self.boxes))

    def to_dict(self) -> dict:
        return {"grid": self.grid.to_dict(), "boxes": [list(b) for b in self.boxes],
                "holes": self.holes}

    @classmethod
    def from_dict(cls, data: dict) -> "Decomposition":
        return cls(Grid.from_dict(data["grid"]), data["boxes"], holes=data["holes"])

    def __eq__(self, other) -> bool:
        return (isinstance(other, Decomposition) and self.grid == other.grid
                and self.boxes == other.boxes and self.holes == other.holes)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        g = self.grid
        arr = self.as_array()
        j0, j1, i0, i1 = arr.T
        bad = np.flatnonzero((j0 < 0) | (i0 < 0) | (j1 > g.ny) | (i1 > g.nx) | (j1 <= j0) | (i1 <= i0))
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"Decomposition: box {k} {tuple(self.boxes[k])} is empty or falls "
                             f"outside the {g.ny}x{g.nx} (ny x nx) grid")
        area = int(np.sum((j1 - j0) * (i1 - i0)))
        self._check_overlaps(arr)
        if not self.holes and area != g.nx * g.ny:
            own = self.owner_map()
            jj, ii = np.nonzero(own < 0)
            raise ValueError(f"Decomposition: the boxes leave {jj.size} points of the grid "
                             f"uncovered (first: j={int(jj[0])}, i={int(ii[0])}); pass holes=True "
                             "if these are land points")

    def _check_overlaps(self, arr: np.ndarray) -> None:
        """Sweep the boxes sorted by ``j0``; compare each with those starting before it ends."""
        order = np.argsort(arr[:, 0], kind="stable")
        srt = arr[order]
        for pos in range(len(srt)):
            b = srt[pos]
            # candidates: boxes starting before this one ends (sorted by j0)
            end = np.searchsorted(srt[:, 0], b[1], side="left")
            cand = srt[pos + 1:end]
            if cand.size == 0:
                continue
            hit = (cand[:, 0] < b[1]) & (cand[:, 1] > b[0]) & (cand[:, 2] < b[3]) & (cand[:, 3] > b[2])
            if np.any(hit):
                other = int(order[pos + 1 + int(np.flatnonzero(hit)[0])])
                raise ValueError(f"Decomposition: boxes {int(order[pos])} "
                                 f"{tuple(self.boxes[int(order[pos])])} and {other} "
                                 f"{tuple(self.boxes[other])} overlap")


def best_factors(n: int, nx: int, ny: int) -> tuple[int, int]:
    """``(px, py)`` with ``px * py = n``, ``px <= nx``, ``py <= ny`` and ``px / py`` closest to
    ``nx / ny`` (in log ratio)."""
    best = None
    for px in range(1, n + 1):
        if n % px:
            continue
        py = n // px
        if px > nx or py > ny:
            continue
        score = abs(math.log((px / py) / (nx / ny)))
        if best is None or score < best[0]:
            best = (score, px, py)
    if best is None:
        raise ValueError(f"cannot split a {nx}x{ny} grid into {n} blocks")
    return best[1], best[2]
