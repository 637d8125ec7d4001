"""Pack, unpack (with the cast and the fold) and fill on the GPU: Numba CUDA twins of the host
kernels, for receives and sends in device memory (CUDA-aware MPI, ``device.py``'s ``direct``
mode). Same signatures and results as :mod:`numpy_ref`; arrays are anything with
``__cuda_array_interface__`` (torch, CuPy, Numba device arrays). Under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) they run on the CPU over host memory, which is how CI tests them.

One thread per buffer element (grid-stride loop): the element's run is found by a binary search
over the runs' start offsets, which are computed once per runs array and kept on the device.
Kernels are launched on the default stream; the caller synchronises before MPI reads a buffer.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .numpy_ref import _check_runs

THREADS = 256


def simulated() -> bool:
    from .. import device
    return device.simulator()


@cuda.jit(device=True)
def _find_run(starts, p):
    lo = 0
    hi = starts.shape[0] - 1
    while hi - lo > 1:  # starts[lo] <= p < starts[hi]
        mid = (lo + hi) // 2
        if starts[mid] <= p:
            lo = mid
        else:
            hi = mid
    return lo


@cuda.jit(device=True)
def _cell(runs, starts, p):
    """Run ``r`` holding wire position ``p`` and the cell's (level, row, column) inside it."""
    r = _find_run(starts, p)
    nj, ni = runs[r, 2], runs[r, 3]
    q = p - starts[r]
    per = nj * ni
    k = q // per
    rem = q - k * per
    j = rem // ni
    return r, k, j, rem - j * ni


@cuda.jit
def _unpack_kernel(buf, dst, runs, starts, s):
    total = starts[starts.shape[0] - 1]
    p = cuda.grid(1)
    stride = cuda.gridsize(1)
    while p < total:
        r, k, j, c = _cell(runs, starts, p)
        dj, di, nj, ni, fold = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3], runs[r, 4]
        if fold:
            dst[k, dj + nj - 1 - j, di + ni - 1 - c] = s * buf[p]
        else:
            dst[k, dj + j, di + c] = buf[p]
        p += stride


@cuda.jit
def _pack_kernel(src, runs, starts, buf):
    total = starts[starts.shape[0] - 1]
    p = cuda.grid(1)
    stride = cuda.gridsize(1)
    while p < total:
        r, k, j, c = _cell(runs, starts, p)
        buf[p] = src[k, runs[r, 0] + j, runs[r, 1] + c]
        p += stride


@cuda.jit
def _fill_kernel(dst, rects, starts, value):
    total = starts[starts.shape[0] - 1]
    p = cuda.grid(1)
    stride = cuda.gridsize(1)
    while p < total:
        r, k, j, c = _cell(rects, starts, p)
        dst[k, rects[r, 0] + j, rects[r, 1] + c] = value
        p += stride


_runs_cache: dict = {}


def _device_runs(runs: np.ndarray, nz: int):
    """Runs and their element start offsets on the device, cached by content (bounded)."""
    runs = np.ascontiguousarray(runs, dtype=np.int64)
    key = (runs.shape, nz, runs.tobytes())
    hit = _runs_cache.get(key)
    if hit is None:
        sizes = runs[:, 2] * runs[:, 3] * nz
        starts = np.zeros(len(runs) + 1, dtype=np.int64)
        np.cumsum(sizes, out=starts[1:])
        if len(_runs_cache) > 4096:
            _runs_cache.clear()
        hit = (cuda.to_device(runs), cuda.to_device(starts), int(starts[-1]))
        _runs_cache[key] = hit
    return hit


def _dev(x):
    """A kernel argument: Numba device arrays as they are; other ``__cuda_array_interface__``
    exporters wrapped without copying; in the simulator, the host memory behind them."""
    if simulated():
        host = getattr(x, "host", None)  # device.HostCudaArray
        if host is not None:
            return host
        return x
    if hasattr(x, "copy_to_host"):
        return x
    return cuda.as_cuda_array(x)


def _launch(total: int):
    if simulated():
        return 1, 8
    return max(1, min((total + THREADS - 1) // THREADS, 65535)), THREADS


def _shape(x):
    return tuple(int(n) for n in x.shape)


def _dtype(x):
    from ..device import np_dtype
    return np_dtype(x)


def unpack(buf, dst, runs: np.ndarray, sign: float) -> None:
    """Like :func:`numpy_ref.unpack` on device arrays (the sign multiplies in the buffer's
    dtype, then the value is cast to ``dst``'s dtype)."""
    nz, ny, nx = _shape(dst)
    total = _check_runs(runs, 5, ny, nx, "unpack") * nz
    if total != _shape(buf)[0]:
        raise ValueError(f"unpack: the runs hold {total} values, the buffer has {_shape(buf)[0]}")
    if total:
        d_runs, d_starts, _ = _device_runs(runs, nz)
        blocks, threads = _launch(total)
        _unpack_kernel[blocks, threads](_dev(buf), _dev(dst), d_runs, d_starts,
                                        _dtype(buf).type(sign))


def pack(src, runs: np.ndarray, buf) -> None:
    """Like :func:`numpy_ref.pack` on device arrays (cast to the buffer's dtype)."""
    nz, ny, nx = _shape(src)
    total = _check_runs(runs, 4, ny, nx, "pack") * nz
    if total != _shape(buf)[0]:
        raise ValueError(f"pack: the runs hold {total} values, the buffer has {_shape(buf)[0]}")
    if total:
        d_runs, d_starts, _ = _device_runs(runs[:, :4], nz)
        blocks, threads = _launch(total)
        _pack_kernel[blocks, threads](_dev(src), d_runs, d_starts, _dev(buf))


def fill(dst, rects: np.ndarray, value: float) -> None:
    """Like :func:`numpy_ref.fill` on a device array."""
    nz, ny, nx = _shape(dst)
    total = _check_runs(rects, 4, ny, nx, "fill") * nz
    if total:
        d_rects, d_starts, _ = _device_runs(rects[:, :4], nz)
        blocks, threads = _launch(total)
        _fill_kernel[blocks, threads](_dev(dst), d_rects, d_starts, _dtype(dst).type(value))


def synchronize() -> None:
    """Wait for every kernel launched here (before MPI reads a buffer they wrote)."""
    cuda.synchronize()
