"""CuPy and Numba adapters.

CuPy: the chosen GPU is made current for the whole process (``Device.use()``), so the events,
streams, the current stream and the user's model are all on it; device-to-host copies are
asynchronous (``get(blocking=False)``) into pinned buffers. Numba: copy streams are created
non-blocking (``cuStreamCreate(CU_STREAM_NON_BLOCKING)`` wrapped by ``cuda.external_stream``),
since ``cuda.stream()`` makes streams that serialise with the legacy default stream the model's
kernels run on; strided outputs are made contiguous on the device before ``copy_to_host``.
"""
from __future__ import annotations

import ctypes
import weakref

import numpy as np

from .base import Adapter, EventStreamAdapter
from .detect import simulator
from .host import aligned_empty

CU_STREAM_NON_BLOCKING = 1


class CupyAdapter(EventStreamAdapter):
    module = "cupy"

    def __init__(self, index):
        super().__init__(index)
        import cupy
        self.cp = cupy
        self.dev = cupy.cuda.Device(index)
        self.dev.use()  # current for this thread: events, streams, the model, Numba's context

    def host_empty(self, shape, dtype, pinned=False):
        if not pinned:
            return aligned_empty(shape, dtype)
        import cupyx
        return cupyx.zeros_pinned(tuple(shape), dtype=dtype)

    def wrap_host(self, arr):
        raise ValueError("CuPy arrays live on a GPU")

    def device_empty(self, shape, dtype):
        with self.dev:
            return self.cp.zeros(tuple(shape), dtype=dtype)

    def stream(self):
        with self.dev:
            return self.cp.cuda.Stream(non_blocking=True)

    def current_stream(self):
        with self.dev:
            return self.cp.cuda.get_current_stream()

    def kernel_stream(self):
        from .cuda_kernels import stream_from_pointer
        return stream_from_pointer(self.current_stream().ptr)

    def event(self):
        with self.dev:
            return self.cp.cuda.Event()

    def elapsed_ms(self, start, end) -> float:
        return self.cp.cuda.get_elapsed_time(start, end)

    def h2d(self, dst, src, stream):
        dst.set(src, stream=stream)

    def d2h(self, dst, src, stream):
        src.get(stream=stream, out=dst, blocking=False)  # asynchronous into pinned memory

    def upload(self, host):
        with self.dev:
            return self.cp.asarray(host)

    def download(self, dev):
        return self.cp.asnumpy(dev)

    def as_device(self, value):
        if isinstance(value, self.cp.ndarray):
            return value
        with self.dev:
            return self.cp.from_dlpack(value)  # the producer's stream waited for (DLPack)

    def contiguous(self, value):
        with self.dev:
            return self.cp.ascontiguousarray(value)


def libcuda():
    """The CUDA driver library (loaded by Numba already when a GPU is in use)."""
    return ctypes.CDLL("libcuda.so.1")


def nonblocking_stream(cuda, lib=None):
    """A Numba stream that does not synchronise with the legacy default stream, destroyed with
    its Numba wrapper (never at interpreter exit, when the context may be gone)."""
    cuda.current_context()  # Numba's context is the current one: the stream is created in it
    lib = libcuda() if lib is None else lib
    handle = ctypes.c_void_p()
    rc = lib.cuStreamCreate(ctypes.byref(handle), CU_STREAM_NON_BLOCKING)
    if rc != 0:
        raise RuntimeError(f"cuStreamCreate(CU_STREAM_NON_BLOCKING) failed: CUresult {rc}")
    stream = cuda.external_stream(handle.value)
    destroy = getattr(lib, "cuStreamDestroy_v2", None) or lib.cuStreamDestroy
    weakref.finalize(stream, destroy, handle).atexit = False
    return stream


class NumbaAdapter(Adapter):
    """``numba.cuda`` device arrays (``__cuda_array_interface__``); on the CPU, NumPy arrays.
    With ``NUMBA_ENABLE_CUDASIM=1`` everything runs on the CPU: the device path is tested
    without a GPU."""

    module = "numba"

    def __init__(self, index):
        super().__init__(index)
        if index is not None:
            from numba import cuda
            self.cuda = cuda
            if not simulator():
                cuda.select_device(index)

    def host_empty(self, shape, dtype, pinned=False):
        if not pinned:
            return aligned_empty(shape, dtype)
        arr = self.cuda.pinned_array(tuple(shape), dtype=dtype)
        arr.fill(0)
        return arr

    def device_empty(self, shape, dtype):
        return self.cuda.to_device(np.zeros(tuple(shape), dtype=dtype))

    def stream(self):
        if simulator():
            return self.cuda.stream()
        return nonblocking_stream(self.cuda)

    def current_stream(self):
        return self.cuda.default_stream() if hasattr(self.cuda, "default_stream") else 0

    kernel_stream = current_stream

    def event(self):
        return self.cuda.event() if simulator() else self.cuda.event(timing=True)

    def record(self, event, stream):
        event.record(stream)

    def wait(self, stream, event):
        event.wait(stream)

    def synchronize(self, stream):
        if stream == 0:
            self.cuda.synchronize()
        else:
            stream.synchronize()

    def elapsed_ms(self, start, end) -> float:
        return 0.0 if simulator() else start.elapsed_time(end)

    def h2d(self, dst, src, stream):
        dst.copy_to_device(src, stream=stream)

    def d2h(self, dst, src, stream):
        src.copy_to_host(dst, stream=stream)

    def upload(self, host):
        return self.cuda.to_device(host)

    def download(self, dev):
        return dev.copy_to_host()

    def as_device(self, value):
        if hasattr(value, "copy_to_host"):
            return value
        if simulator():
            return self.cuda.to_device(np.asarray(value))  # tests only: host memory anyway
        from .cuda_kernels import wait_for_producer
        wait_for_producer(value, self.current_stream())  # on the device, not the host
        return self.cuda.as_cuda_array(value, sync=False)

    def contiguous(self, value):
        if value.is_c_contiguous():
            return value
        from .cuda_kernels import contiguous_copy
        out = self.cuda.device_array(tuple(int(n) for n in value.shape), dtype=value.dtype)
        contiguous_copy(value, out, self.current_stream())
        return out
