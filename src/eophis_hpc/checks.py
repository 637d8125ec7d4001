"""Checks of the arrays a model hands back, shared by every engine and the model-side client:
an output's shape (with or without the halo) and the finiteness of the points a rank owns.
Pure NumPy; errors name the field, the tile and the global point."""
from __future__ import annotations

import numpy as np

from .errors import CouplingError

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def output_offset(name: str, shape, rows: int, levels: int, hw: tuple[int, int], halo: int,
                  where: str = "") -> tuple[int, int]:
    """Where the tiles' own boxes start inside an output of ``shape``: (0, 0) for outputs
    ``(rows, levels, H - 2h, W - 2h)`` without the halo, (h, h) for ``(rows, levels, H, W)``
    with it (``hw = (H, W)``, the batch's tile shape); a CouplingError for any other shape."""
    H, W = hw
    core = (rows, levels, H - 2 * halo, W - 2 * halo)
    full = (rows, levels, H, W)
    shape = tuple(int(n) for n in shape)
    if shape == core:
        return (0, 0)
    if shape == full:
        return (halo, halo)
    raise CouplingError(f"output {name!r}{where}: shape {shape}, expected {core} or with the "
                        f"halo {full}")


def output_dtype(name: str, dtype, where: str = "") -> np.dtype:
    """``dtype`` as a NumPy float32/float64 dtype, or a CouplingError naming the output."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in FLOATS:  # (None in FLOATS is True: np.dtype(None) is float64)
        raise CouplingError(f"output {name!r}{where}: dtype {dtype} is not float32/float64")
    return dt


def first_nonfinite(arr: np.ndarray):
    """``((level, j, i), value, count)`` of the first NaN/Inf of a 3-D array, or None."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    k, j, i = (int(v) for v in np.argwhere(bad)[0])
    return (k, j, i), arr[k, j, i], int(bad.sum())


def check_finite(what: str, arr: np.ndarray, box, note: str = "", error=CouplingError) -> None:
    """Refuse NaN/Inf in ``arr`` (levels, j, i), the points of ``box`` (global origin
    ``box.j0, box.i0``): the message is ``what`` then the first bad value and its global index,
    then ``note`` (which rank or tile)."""
    found = first_nonfinite(arr)
    if found is not None:
        (k, j, i), value, count = found
        raise error(f"{what}{value} at level {k}, global j={box.j0 + j}, i={box.i0 + i}{note}; "
                    f"{count} non-finite values in all")
