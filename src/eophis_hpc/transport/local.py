"""The in-process transport: a plan executed in one process with the same pack and unpack
kernels as the MPI runtime (tests, notebooks, offline use of the same plans). ``scatter_local``
makes every tile with its halo from one piece per source box; ``gather_local`` brings one output
per tile back to the source boxes."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import kernels
from ..plan import Plan


def scatter_local(plan: Plan, pieces: Sequence[np.ndarray], backend: str | None = None,
                  sign: float = 1.0, fill: float = 0.0, dtype=None) -> list[np.ndarray]:
    """Tiles with halos from one ``(nz, bj, bi)`` piece per source box of ``plan``; ``dtype``
    casts in the unpack, ``sign`` multiplies folded cells, ``fill`` goes past closed edges."""
    kern = kernels.get(backend)
    nz, src_dtype = _check_pieces(pieces, [b.shape for b in plan.src.boxes], "pieces")
    out_dtype = np.dtype(src_dtype if dtype is None else dtype)
    _check_float(out_dtype, "dtype")
    tiles = [np.empty((nz,) + plan.tile_shape_of(d), dtype=out_dtype) for d in range(plan.n_dst)]
    for d in range(plan.n_dst):
        kern.fill(tiles[d], plan.fill_rects(d), fill)
    buf = np.empty(nz * max([plan.message_cells(s, d) for s, d in plan.pairs] or [0]),
                   dtype=src_dtype)
    for (s, d) in plan.pairs:
        n = nz * plan.message_cells(s, d)
        kern.pack(pieces[s], plan.pack_runs(s, d), buf[:n])
        kern.unpack(buf[:n], tiles[d], plan.unpack_runs(s, d), sign)
    return tiles


def gather_local(plan: Plan, outputs: Sequence[np.ndarray], backend: str | None = None,
                 fill: float = 0.0, dtype=None) -> list[np.ndarray]:
    """One array per source box of ``plan`` from one output per tile (each with or without the
    halo: it is stripped); points of no tile get ``fill``."""
    kern = kernels.get(backend)
    nz, out_dtype, offsets = _check_outputs(plan, outputs)
    res_dtype = np.dtype(out_dtype if dtype is None else dtype)
    _check_float(res_dtype, "dtype")
    back = [np.empty((nz,) + b.shape, dtype=res_dtype) for b in plan.src.boxes]
    for s in range(plan.n_src):
        kern.fill(back[s], plan.back_fill_rects(s), fill)
    for (d, s) in plan.back_pairs:
        n = nz * plan.message_cells(s, d, back=True)
        buf = np.empty(n, dtype=out_dtype)
        kern.pack(outputs[d], plan.back_pack_runs(d, s, offsets[d]), buf)
        kern.unpack(buf, back[s], plan.back_unpack_runs(d, s), 1.0)
    return back


def output_offset(plan: Plan, d: int, shape: tuple[int, int], where: str = "outputs") -> int:
    """Offset of tile ``d``'s own box inside an output of ``shape``: 0 for the tile's own box or
    its read box without halo (``tile_shape``), the halo for the read box with its halo."""
    inner = plan.tile_shape_of(d)
    h = plan.halo
    core = (inner[0] - 2 * h, inner[1] - 2 * h)
    shape = tuple(shape)
    if shape == core or shape == plan.dst.boxes[d].shape:
        return 0
    if shape == inner:
        return h
    raise ValueError(f"{where}[{d}]: expected shape (nz, {core[0]}, {core[1]}) or with the "
                     f"halo (nz, {inner[0]}, {inner[1]}), got (nz, {shape[0]}, {shape[1]})")


def _check_outputs(plan: Plan, outputs):
    if len(outputs) != plan.n_dst:
        raise ValueError(f"outputs: expected {plan.n_dst} arrays (one per tile), got "
                         f"{len(outputs)}")
    nz, dtype = None, None
    offsets = []
    for d, arr in enumerate(outputs):
        _check_array(arr, f"outputs[{d}]")
        if nz is None:
            nz, dtype = arr.shape[0], arr.dtype
        if arr.shape[0] != nz or arr.dtype != dtype:
            raise ValueError(f"outputs[{d}]: shape {arr.shape} / dtype {arr.dtype} differ from "
                             f"outputs[0] ({nz} levels, {dtype})")
        offsets.append(output_offset(plan, d, arr.shape[1:]))
    return nz, dtype, offsets


def _check_float(dtype: np.dtype, where: str) -> None:
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype}")


def _check_array(arr, where: str) -> None:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{where}: expected a numpy.ndarray, got {type(arr).__name__}")
    if arr.ndim != 3:
        raise ValueError(f"{where}: expected a 3-D array (nz, ny, nx), got {arr.ndim} dimensions "
                         f"(shape {arr.shape})")
    _check_float(arr.dtype, where)
    if not arr.flags.c_contiguous:
        raise ValueError(f"{where}: array must be C-contiguous (use numpy.ascontiguousarray)")


def _check_pieces(pieces, shapes, where: str):
    """Validate one array per box: 3-D, float32/64, C-contiguous, right shape, same nz/dtype."""
    if isinstance(pieces, np.ndarray) or len(pieces) != len(shapes):
        n = "an array" if isinstance(pieces, np.ndarray) else f"{len(pieces)} arrays"
        raise ValueError(f"{where}: expected a list of {len(shapes)} arrays (one per source box), "
                         f"got {n}")
    nz, dtype = None, None
    for k, (arr, shp) in enumerate(zip(pieces, shapes)):
        _check_array(arr, f"{where}[{k}]")
        if nz is None:
            nz, dtype = arr.shape[0], arr.dtype
        if arr.shape[1:] != tuple(shp):
            raise ValueError(f"{where}[{k}]: shape {arr.shape} does not match its box "
                             f"(nz, {shp[0]}, {shp[1]})")
        if arr.shape[0] != nz or arr.dtype != dtype:
            raise ValueError(f"{where}[{k}]: {arr.shape[0]} levels / {arr.dtype} differ from "
                             f"{where}[0] ({nz} levels, {dtype})")
    if nz == 0:
        raise ValueError(f"{where}: arrays have no level (nz=0)")
    return nz, dtype
