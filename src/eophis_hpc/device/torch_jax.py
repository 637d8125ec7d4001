"""Torch and JAX adapters. Torch owns its streams (``torch.cuda.Stream``, created
non-blocking by PyTorch) and caching allocator (``record_stream`` after each asynchronous
copy); JAX owns both and is handed host rows by ``jax.device_put``."""
from __future__ import annotations

import numpy as np

from .base import Adapter, EventStreamAdapter
from .detect import jax_gpu_memory
from .host import aligned_empty


class TorchAdapter(EventStreamAdapter):
    module = "torch"

    def __init__(self, index):
        super().__init__(index)
        import torch
        self.torch = torch
        self.dev = None if index is None else torch.device("cuda", index)
        if index is not None:
            torch.cuda.set_device(self.dev)  # the worker's GPU: the model's default device too

    def _tdtype(self, dtype):
        return {np.dtype(np.float32): self.torch.float32,
                np.dtype(np.float64): self.torch.float64}[np.dtype(dtype)]

    def host_empty(self, shape, dtype, pinned=False):
        if not pinned:
            return aligned_empty(shape, dtype)
        # the NumPy view keeps the tensor (its ``base``) and so the pinned memory alive
        return self.torch.zeros(tuple(shape), dtype=self._tdtype(dtype), pin_memory=True).numpy()

    def wrap_host(self, arr):
        return self.torch.from_numpy(arr)

    def device_empty(self, shape, dtype):
        return self.torch.zeros(tuple(shape), dtype=self._tdtype(dtype), device=self.dev)

    def stream(self):
        return self.torch.cuda.Stream(device=self.dev)

    def current_stream(self):
        return self.torch.cuda.current_stream(self.dev)

    def kernel_stream(self):
        from .cuda_kernels import stream_from_pointer
        return stream_from_pointer(self.current_stream().cuda_stream)

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def elapsed_ms(self, start, end) -> float:
        return start.elapsed_time(end)

    def h2d(self, dst, src: np.ndarray, stream):
        with self.torch.cuda.stream(stream):
            dst.copy_(self.torch.from_numpy(src), non_blocking=True)

    def d2h(self, dst: np.ndarray, src, stream):
        with self.torch.cuda.stream(stream):
            self.torch.from_numpy(dst).copy_(src, non_blocking=True)
        src.record_stream(stream)  # the allocator must not reuse src before the copy ends

    def upload(self, host: np.ndarray):
        return self.torch.from_numpy(host).to(self.dev)

    def download(self, dev) -> np.ndarray:
        return dev.cpu().numpy()

    def as_device(self, value):
        """A device output of any framework as a torch tensor (DLPack, zero copy; the
        producer's stream is waited for on the current stream, as the DLPack protocol asks)."""
        if isinstance(value, self.torch.Tensor):
            return value.detach()
        return self.torch.from_dlpack(value)

    def contiguous(self, value):
        return value.contiguous()


class JaxAdapter(Adapter):
    """JAX: on the CPU, zero-copy DLPack views of 64-byte aligned host rows; on a GPU,
    ``jax.device_put`` (JAX owns the streams and the staging memory). Before JAX first sees
    the GPU its pre-allocation of 75% of the memory is turned off unless the user set it."""

    module = "jax"

    def __init__(self, index):
        super().__init__(index)
        if index is not None:
            self.memory_note = jax_gpu_memory()
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        self.dev = None if index is None else jax.devices("gpu")[index]

    def wrap_host(self, arr):
        return self.jnp.from_dlpack(arr)

    def put(self, src: np.ndarray):
        return self.jax.device_put(src, self.dev)

    upload = put

    def download(self, dev):
        return np.asarray(dev)
