"""Host memory and framework-neutral views: aligned zeroed batches, NumPy views of model
outputs, the NumPy dtype of any tensor, and the "device" array over host memory that Numba's
CUDA simulator and the CPU tests hand to mpi4py. No framework is imported here."""
from __future__ import annotations

import numpy as np

ALIGN = 64  # bytes: JAX aliases host memory only when it is 64-byte aligned


def aligned_empty(shape, dtype) -> np.ndarray:
    """A C-ordered array starting on a 64-byte boundary, its pages touched now (zeros) so the
    first coupling step does not pay the page faults (measured: up to 14x slower first trip
    on GB-sized fields)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + ALIGN, dtype=np.uint8)
    raw.fill(0)
    off = (-raw.ctypes.data) % ALIGN
    return raw[off:off + n].view(dtype).reshape(shape)


def host_view(value, where: str) -> np.ndarray:
    """A NumPy view of a host-resident model output (NumPy, CPU torch tensor, JAX CPU array,
    anything with ``__dlpack__`` or ``__array__``) without copying; a device tensor is copied
    to the host (the model moved it there itself)."""
    if isinstance(value, np.ndarray):
        return value
    mod = type(value).__module__.split(".")[0]
    if mod == "torch":
        if value.device.type != "cpu":
            value = value.cpu()
        return value.detach().numpy()
    if mod == "cupy":
        return value.get()
    if mod in ("jax", "jaxlib"):
        return np.asarray(value)
    if hasattr(value, "copy_to_host"):  # a numba device array
        return value.copy_to_host()
    if hasattr(value, "__dlpack__"):
        try:
            return np.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError):
            pass
    if hasattr(value, "__array__"):
        return np.asarray(value)
    raise TypeError(f"{where}: expected an array or tensor, got {type(value).__name__}")


def to_host(value, where: str) -> np.ndarray:
    """:func:`host_view` under the name the OASIS worker uses."""
    return host_view(value, where)


def np_dtype(value):
    """The NumPy dtype of a tensor of any framework, or the framework's dtype name (a str) when
    NumPy has none (``torch.bfloat16``): :func:`eophis_hpc.checks.output_dtype` then refuses it
    naming the output, instead of a ``TypeError`` from NumPy."""
    dt = value.dtype
    if isinstance(dt, np.dtype):
        return dt
    name = str(dt).replace("torch.", "")
    try:
        return np.dtype(name)
    except TypeError:
        return name


class HostCudaArray:
    """A "device" array over host memory exposing ``__cuda_array_interface__``: what device
    memory is under Numba's CUDA simulator, and what tests hand to mpi4py to drive its GPU
    buffer path on a CPU-only machine (as mpi4py's own tests do)."""

    def __init__(self, host: np.ndarray):
        if not host.flags.c_contiguous:
            raise ValueError("HostCudaArray: the host array must be C-contiguous")
        self.host = host
        self.shape, self.dtype, self.size = host.shape, host.dtype, host.size

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.host.shape, "typestr": self.host.dtype.str,
                "data": (self.host.ctypes.data, False), "strides": None, "version": 3}

    def __getitem__(self, key):
        return HostCudaArray(self.host[key])  # a view: refused if not contiguous

    def __len__(self):
        return len(self.host)


def mpi_buffer(dev):
    """A device buffer as mpi4py takes it: itself (it has ``__cuda_array_interface__``) or, in
    the simulator, a :class:`HostCudaArray` over its host memory (``numpy.asarray`` of a
    simulated device array is a view of it)."""
    if hasattr(dev, "__cuda_array_interface__"):
        return dev
    return HostCudaArray(np.asarray(dev))
