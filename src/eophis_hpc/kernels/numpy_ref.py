"""Pack, unpack and fill in plain NumPy slicing: the reference the compiled kernels must match."""
from __future__ import annotations

import numpy as np


def check_runs(runs: np.ndarray, ncols: int, ny: int, nx: int, what: str) -> int:
    runs = np.asarray(runs)
    if runs.ndim != 2 or (runs.shape[0] and runs.shape[1] < ncols):
        raise ValueError(f"{what}: runs must be an (n, {ncols}) integer array, got shape {runs.shape}")
    if runs.shape[0] == 0:
        return 0
    j, i, nj, ni = runs[:, 0], runs[:, 1], runs[:, 2], runs[:, 3]
    bad = np.flatnonzero((j < 0) | (i < 0) | (nj < 0) | (ni < 0) | (j + nj > ny) | (i + ni > nx))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"{what}: run {r} (j={j[r]}, i={i[r]}, nj={nj[r]}, ni={ni[r]}) does not "
                         f"fit an array of {ny}x{nx} points")
    return int(np.sum(nj * ni))


def pack(src: np.ndarray, runs: np.ndarray, buf: np.ndarray) -> None:
    """Copy the ``(sj, si, nj, ni)`` runs of ``src`` into ``buf``, block after block."""
    nz = src.shape[0]
    total = check_runs(runs, 4, src.shape[1], src.shape[2], "pack") * nz
    if total != buf.shape[0]:
        raise ValueError(f"pack: the runs hold {total} values, the buffer has {buf.shape[0]}")
    pos = 0
    for sj, si, nj, ni in np.asarray(runs)[:, :4].tolist():
        n = nz * nj * ni
        buf[pos:pos + n] = src[:, sj:sj + nj, si:si + ni].reshape(-1)
        pos += n


def unpack(buf: np.ndarray, dst: np.ndarray, runs: np.ndarray, sign: float) -> None:
    """Copy ``buf`` into the ``(dj, di, nj, ni, fold)`` runs of ``dst``; folded runs are reversed
    in j and i and multiplied by ``sign`` (in the buffer's dtype, then cast)."""
    nz = dst.shape[0]
    total = check_runs(runs, 5, dst.shape[1], dst.shape[2], "unpack") * nz
    if total != buf.shape[0]:
        raise ValueError(f"unpack: the runs hold {total} values, the buffer has {buf.shape[0]}")
    pos = 0
    s = buf.dtype.type(sign)
    for dj, di, nj, ni, fold in np.asarray(runs)[:, :5].tolist():
        n = nz * nj * ni
        blk = buf[pos:pos + n].reshape(nz, nj, ni)
        if fold:
            blk = (blk * s)[:, ::-1, ::-1]
        dst[:, dj:dj + nj, di:di + ni] = blk
        pos += n


def fill(dst: np.ndarray, rects: np.ndarray, value: float) -> None:
    """Set the ``(dj, di, nj, ni)`` rects of every level of ``dst`` to ``value``."""
    check_runs(rects, 4, dst.shape[1], dst.shape[2], "fill")
    for dj, di, nj, ni in np.asarray(rects)[:, :4].tolist():
        dst[:, dj:dj + nj, di:di + ni] = value


def check_blocks(blocks: np.ndarray, src_shape, dst_shape, what: str) -> None:
    """Check every ``(sj, si, dj, di, nj, ni, fold)`` block fits both planes and the level
    counts agree."""
    blocks = np.asarray(blocks)
    if blocks.ndim != 2 or (blocks.shape[0] and blocks.shape[1] < 7):
        raise ValueError(f"{what}: blocks must be an (n, 7) integer array, got shape "
                         f"{blocks.shape}")
    if src_shape[0] != dst_shape[0]:
        raise ValueError(f"{what}: the source has {src_shape[0]} levels, the destination "
                         f"{dst_shape[0]}")
    if blocks.shape[0] == 0:
        return
    check_runs(blocks[:, [0, 1, 4, 5]], 4, src_shape[1], src_shape[2], what + " (source)")
    check_runs(blocks[:, [2, 3, 4, 5]], 4, dst_shape[1], dst_shape[2], what + " (destination)")


def copy(src: np.ndarray, dst: np.ndarray, blocks: np.ndarray, sign: float,
         stream: bool = False) -> None:
    """Copy the ``(sj, si, nj, ni)`` block of ``src`` to ``(dj, di)`` of ``dst`` for every
    ``(sj, si, dj, di, nj, ni, fold)`` row of ``blocks``, all levels; a folded block is written
    reversed in j and i and multiplied by ``sign`` (in the source's dtype, then cast).
    ``stream`` (write around the caches) changes nothing here."""
    check_blocks(blocks, src.shape, dst.shape, "copy")
    s = src.dtype.type(sign)
    for sj, si, dj, di, nj, ni, fold in np.asarray(blocks)[:, :7].tolist():
        blk = src[:, sj:sj + nj, si:si + ni]
        if fold:
            blk = (blk * s)[:, ::-1, ::-1]
        dst[:, dj:dj + nj, di:di + ni] = blk
