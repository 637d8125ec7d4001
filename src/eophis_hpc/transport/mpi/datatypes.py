"""MPI derived datatypes for runs of cells inside 4-D arrays ``(n, nz, ny, nx)``: plain runs are
subarrays, folded runs hvectors with negative strides (MPI writes them reversed, no packing)."""
from __future__ import annotations

import numpy as np

from .waits import mpi, mpi_float


def struct_datatype(base, itemsize: int, shape: tuple, parts: list, folded_ok: bool):
    """A committed struct datatype for ``parts`` (``[(index, runs)]``) inside a C-ordered 4-D
    array ``shape``, or None when there is no run."""
    MPI = mpi()
    n, nz, ny, nx = shape
    tile_bytes = nz * ny * nx * itemsize
    types, displs, made = [], [], []
    for k, runs in parts:
        for row in runs.tolist():
            dj, di, nj, ni = row[:4]
            fold = row[4] if len(row) > 4 else 0
            if fold:
                if not folded_ok:
                    raise ValueError("folded runs cannot be sent with a datatype")
                r = base.Create_hvector(ni, 1, -itemsize)
                rect = r.Create_hvector(nj, 1, -nx * itemsize)
                t = rect.Create_hvector(nz, 1, ny * nx * itemsize)
                made += [r, rect]
                disp = k * tile_bytes + ((dj + nj - 1) * nx + di + ni - 1) * itemsize
            else:
                t = base.Create_subarray([nz, ny, nx], [nz, nj, ni], [0, dj, di])
                disp = k * tile_bytes
            types.append(t)
            displs.append(disp)
            made.append(t)
    if not types:
        return None
    dt = MPI.Datatype.Create_struct([1] * len(types), displs, types).Commit()
    for t in made:
        t.Free()
    return dt


class TypeCache:
    """Committed datatypes per (array shape, dtype, offset): one per route, built on first use."""

    def __init__(self, routes: list, folded_ok: bool):
        self.routes, self.folded_ok, self.cache = routes, folded_ok, {}

    def get(self, target: np.ndarray, offset: tuple[int, int]) -> list:
        key = (target.shape, target.dtype.str, offset)
        if key not in self.cache:
            base = mpi_float(target.dtype)
            self.cache[key] = [struct_datatype(base, target.itemsize, target.shape,
                                               r.shifted(*offset).parts, self.folded_ok)
                               for r in self.routes]
        return self.cache[key]

    def free(self) -> None:
        for types in self.cache.values():
            for dt in types:
                if dt is not None:
                    dt.Free()
        self.cache = {}
