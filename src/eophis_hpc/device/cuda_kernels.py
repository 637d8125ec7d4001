"""Pack, unpack (with the cast and the fold) and fill on the GPU: Numba CUDA twins of the host
kernels, for receives and sends in device memory (CUDA-aware MPI, the ``direct`` mode). Same
signatures and results as :mod:`eophis_hpc.kernels.numpy_ref`; arrays are anything with
``__cuda_array_interface__`` (torch, CuPy, Numba device arrays). Under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) they run on the CPU over host memory, which is how CI tests them.

One thread per buffer element (grid-stride loop): the element's run is found by a binary search
over the runs' start offsets, which are computed once per runs array and kept on the device.
Every launch goes on an explicit stream, the one the model runs on (so unpack -> model -> pack
are ordered by the stream, not by the legacy default stream); arrays of another framework are
wrapped without a host synchronisation, their producer's stream made to wait for by an event.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from ..kernels.numpy_ref import check_runs
from .detect import simulator

THREADS = 256


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


@cuda.jit
def _copy4_kernel(src, dst):
    """``dst[...] = src`` for 4-D arrays of one shape, any strides (a contiguous copy)."""
    n0, n1, n2, n3 = dst.shape
    total = n0 * n1 * n2 * n3
    p = cuda.grid(1)
    stride = cuda.gridsize(1)
    while p < total:
        i3 = p % n3
        q = p // n3
        i2 = q % n2
        q = q // n2
        dst[q // n1, q % n1, i2, i3] = src[q // n1, q % n1, i2, i3]
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


# ---------------------------------------------------------------------- streams
def stream_from_pointer(ptr: int | None):
    """The Numba stream for a raw ``cudaStream_t`` of any framework: 0 and 1 are the legacy
    default stream, 2 the per-thread default stream (CUDA's and the CUDA array interface's
    conventions). In the simulator streams do nothing: 0."""
    if simulator() or ptr is None:
        return 0
    ptr = int(ptr)
    if ptr in (0, 1):
        return cuda.legacy_default_stream()
    if ptr == 2:
        return cuda.per_thread_default_stream()
    return cuda.external_stream(ptr)


def stream_pointer(stream) -> int:
    """The raw handle of a Numba stream or a pointer, the legacy default stream as 0."""
    if isinstance(stream, int):
        return 0 if stream in (0, 1) else stream
    h = stream.handle
    ptr = int((h.value if hasattr(h, "value") else int(h)) or 0)
    return 0 if ptr in (0, 1) else ptr


def _dev(x, stream):
    """A kernel argument: Numba device arrays as they are; other ``__cuda_array_interface__``
    exporters wrapped without copying and without the host synchronisation Numba would do
    (``sync=False``): when the exporter names another stream, ``stream`` waits for it on the
    device. In the simulator, the host memory behind a :class:`HostCudaArray`."""
    if simulator():
        host = getattr(x, "host", None)  # device.HostCudaArray
        return x if host is None else host
    if hasattr(x, "copy_to_host"):
        return x
    wait_for_producer(x, stream)
    return cuda.as_cuda_array(x, sync=False)


def wait_for_producer(x, stream) -> None:
    """Make ``stream`` wait (on the device) for the stream named in ``x``'s CUDA array
    interface, when it names one and it is not ``stream`` itself."""
    producer = getattr(x, "__cuda_array_interface__", {}).get("stream")
    if producer is None or simulator():
        return
    if stream_pointer(int(producer)) == stream_pointer(stream):
        return
    ev = cuda.event(timing=False)
    ev.record(stream_from_pointer(producer))
    ev.wait(stream)


def launch(kernel, total: int, stream, *args) -> None:
    """Launch ``kernel`` over ``total`` elements (grid-stride) on ``stream``."""
    if simulator():
        kernel[1, 8](*args)
        return
    blocks = max(1, min((total + THREADS - 1) // THREADS, 65535))
    kernel[blocks, THREADS, stream](*args)


def _shape(x):
    return tuple(int(n) for n in x.shape)


def _dtype(x) -> np.dtype:
    from .host import np_dtype
    return np.dtype(np_dtype(x))


# ---------------------------------------------------------------------- the backend
def unpack(buf, dst, runs: np.ndarray, sign: float, stream=0) -> None:
    """Like :func:`numpy_ref.unpack` on device arrays (the sign multiplies in the buffer's
    dtype, then the value is cast to ``dst``'s dtype), on ``stream``."""
    nz, ny, nx = _shape(dst)
    total = check_runs(runs, 5, ny, nx, "unpack") * nz
    if total != _shape(buf)[0]:
        raise ValueError(f"unpack: the runs hold {total} values, the buffer has {_shape(buf)[0]}")
    if total:
        d_runs, d_starts, _ = _device_runs(runs, nz)
        launch(_unpack_kernel, total, stream, _dev(buf, stream), _dev(dst, stream), d_runs,
               d_starts, _dtype(buf).type(sign))


def pack(src, runs: np.ndarray, buf, stream=0) -> None:
    """Like :func:`numpy_ref.pack` on device arrays (cast to the buffer's dtype), on
    ``stream``."""
    nz, ny, nx = _shape(src)
    total = check_runs(runs, 4, ny, nx, "pack") * nz
    if total != _shape(buf)[0]:
        raise ValueError(f"pack: the runs hold {total} values, the buffer has {_shape(buf)[0]}")
    if total:
        d_runs, d_starts, _ = _device_runs(runs[:, :4], nz)
        launch(_pack_kernel, total, stream, _dev(src, stream), d_runs, d_starts, _dev(buf, stream))


def fill(dst, rects: np.ndarray, value: float, stream=0) -> None:
    """Like :func:`numpy_ref.fill` on a device array, on ``stream``."""
    nz, ny, nx = _shape(dst)
    total = check_runs(rects, 4, ny, nx, "fill") * nz
    if total:
        d_rects, d_starts, _ = _device_runs(rects[:, :4], nz)
        launch(_fill_kernel, total, stream, _dev(dst, stream), d_rects, d_starts,
               _dtype(dst).type(value))


def contiguous_copy(src, dst, stream=0) -> None:
    """``dst[...] = src`` for 4-D device arrays of one shape and dtype, any strides (the
    C-contiguous copy of a cropped model output that ``copy_to_host`` refuses)."""
    if _shape(src) != _shape(dst) or len(_shape(src)) != 4:
        raise ValueError(f"contiguous_copy: shapes {_shape(src)} and {_shape(dst)} (4-D, equal)")
    total = int(np.prod(_shape(src)))
    if total:
        launch(_copy4_kernel, total, stream, _dev(src, stream), _dev(dst, stream))


def bound(stream_of) -> tuple:
    """``(pack, unpack, fill)`` launching on ``stream_of()`` (asked at each launch: the stream
    the model runs on may change between steps)."""
    def pack_on(src, runs, buf):
        pack(src, runs, buf, stream_of())

    def unpack_on(buf, dst, runs, sign):
        unpack(buf, dst, runs, sign, stream_of())

    def fill_on(dst, rects, value):
        fill(dst, rects, value, stream_of())
    return pack_on, unpack_on, fill_on


def synchronize() -> None:
    """Wait for every kernel launched here (before MPI reads a buffer they wrote)."""
    cuda.synchronize()


@functools.lru_cache(maxsize=None)
def self_test() -> tuple[bool, str]:
    """Compile and run unpack (with the fold and the sign) and fill on a tiny array, once per
    process, and compare with the expected values: ``(ok, what happened)``. Never raises."""
    try:
        if not cuda.is_available():
            return False, "numba.cuda.is_available()=False"
        runs = np.array([[0, 0, 1, 2, 0], [1, 0, 1, 2, 1]], dtype=np.int64)
        buf = cuda.to_device(np.array([1.0, 2.0, 3.0, 4.0]))
        dst = cuda.to_device(np.zeros((1, 3, 2), np.float32))
        unpack(buf, dst, runs, -1.0)
        fill(dst, np.array([[2, 0, 1, 2]], dtype=np.int64), 7.0)
        cuda.synchronize()
        got = dst.copy_to_host()
    except Exception as exc:  # NVVM missing, driver too old for the toolkit, no context...
        return False, f"device kernels failed to compile or run ({type(exc).__name__}: {exc})"
    want = np.array([[[1.0, 2.0], [-4.0, -3.0], [7.0, 7.0]]], np.float32)
    if not np.array_equal(got, want):
        return False, f"device kernels gave {got.ravel().tolist()}, expected {want.ravel().tolist()}"
    return True, "device kernels compiled and checked" + (" (CUDA simulator)" if simulator() else "")


def select_device(index: int) -> None:
    """Put Numba's context (where these kernels run) on GPU ``index`` for this thread."""
    if not simulator():
        cuda.select_device(index)
