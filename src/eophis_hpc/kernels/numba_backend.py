"""Numba twins of the Cython pack/unpack/fill kernels (compiled on first use, cached on disk)."""
from __future__ import annotations

import numba
import numpy as np

from .numpy_ref import check_blocks, check_runs


@numba.njit(cache=True, nogil=True)
def _pack(src, runs, buf):
    nz = src.shape[0]
    pos = 0
    for r in range(runs.shape[0]):
        sj, si, nj, ni = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3]
        for k in range(nz):
            for j in range(nj):
                for c in range(ni):
                    buf[pos + c] = src[k, sj + j, si + c]
                pos += ni


@numba.njit(cache=True, nogil=True)
def _unpack(buf, dst, runs, s):
    """``s`` is the sign in the buffer's dtype: the product is exact as in the reference."""
    nz = dst.shape[0]
    pos = 0
    for r in range(runs.shape[0]):
        dj, di, nj, ni, fold = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3], runs[r, 4]
        if fold:
            for k in range(nz):
                for j in range(nj):
                    jj = dj + nj - 1 - j
                    for c in range(ni):
                        dst[k, jj, di + ni - 1 - c] = s * buf[pos + c]
                    pos += ni
        else:
            for k in range(nz):
                for j in range(nj):
                    for c in range(ni):
                        dst[k, dj + j, di + c] = buf[pos + c]
                    pos += ni


@numba.njit(cache=True, nogil=True)
def _fill(dst, rects, value):
    for r in range(rects.shape[0]):
        dj, di, nj, ni = rects[r, 0], rects[r, 1], rects[r, 2], rects[r, 3]
        for k in range(dst.shape[0]):
            for j in range(nj):
                for c in range(ni):
                    dst[k, dj + j, di + c] = value


@numba.njit(cache=True, nogil=True)
def _copy(src, dst, blocks, s):
    """``s`` is the sign in the source's dtype (the product is exact as in the reference)."""
    for r in range(blocks.shape[0]):
        sj, si, dj, di = blocks[r, 0], blocks[r, 1], blocks[r, 2], blocks[r, 3]
        nj, ni, fold = blocks[r, 4], blocks[r, 5], blocks[r, 6]
        for k in range(src.shape[0]):
            for j in range(nj):
                if fold:
                    jj = dj + nj - 1 - j
                    for c in range(ni):
                        dst[k, jj, di + ni - 1 - c] = s * src[k, sj + j, si + c]
                else:
                    for c in range(ni):
                        dst[k, dj + j, di + c] = src[k, sj + j, si + c]


def pack(src: np.ndarray, runs: np.ndarray, buf: np.ndarray) -> None:
    total = check_runs(runs, 4, src.shape[1], src.shape[2], "pack") * src.shape[0]
    if total != buf.shape[0]:
        raise ValueError(f"pack: the runs hold {total} values, the buffer has {buf.shape[0]}")
    if total:
        _pack(src, runs, buf)


def unpack(buf: np.ndarray, dst: np.ndarray, runs: np.ndarray, sign: float) -> None:
    total = check_runs(runs, 5, dst.shape[1], dst.shape[2], "unpack") * dst.shape[0]
    if total != buf.shape[0]:
        raise ValueError(f"unpack: the runs hold {total} values, the buffer has {buf.shape[0]}")
    if total:
        _unpack(buf, dst, runs, buf.dtype.type(sign))


def fill(dst: np.ndarray, rects: np.ndarray, value: float) -> None:
    check_runs(rects, 4, dst.shape[1], dst.shape[2], "fill")
    if rects.shape[0]:
        _fill(dst, rects, dst.dtype.type(value))


def copy(src: np.ndarray, dst: np.ndarray, blocks: np.ndarray, sign: float,
         stream: bool = False) -> None:
    check_blocks(blocks, src.shape, dst.shape, "copy")
    if blocks.shape[0]:
        _copy(src, dst, blocks, src.dtype.type(sign))
