"""Where the model's batches live and how they get there (layer 6).

One function, :func:`staging_policy`, decides for a framework and a device how the tiles reach
the model and the results come back, and says why:

``host``
    the model runs on the CPU: the unpack kernels write straight into the batch and the model
    gets a zero-copy view of it (``torch.from_numpy``, DLPack for JAX), outputs are viewed the
    same way before the send side reads them;
``staged``
    the model runs on a GPU, MPI cannot touch device memory: the batch is pinned host memory,
    one asynchronous host-to-device copy per chunk moves it on a CUDA stream owned by the
    tunnel, outputs come back by asynchronous device-to-host copies into pinned buffers that the
    send side reads (JAX stages its own copies: plain host memory, ``jax.device_put``);
``direct``
    the model runs on a GPU and MPI is CUDA-aware: the packed receive and send buffers are
    device memory, unpack (with the cast and the fold) and pack run on the device (Numba CUDA
    kernels), no host copy at all.

Frameworks are a registry (:data:`ADAPTERS`, keys = the allowed ``framework=`` values); an
adapter allocates host and device buffers, copies on streams and hands tensors over by DLPack or
``__cuda_array_interface__``, never through Python lists. Detection of GPUs and of a CUDA-aware
MPI library never initialises MPI and never raises: it reports what it checked.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

MODES = ("host", "staged", "direct")
ENV_CUDA_AWARE = "EOPHIS_HPC_CUDA_AWARE_MPI"  # 1/0: override the detection
EXTRAS = {
    "torch": "pip install 'eophis_hpc[torch]' (CPU wheels) or a CUDA build of torch",
    "cupy": "pip install 'eophis_hpc[cupy]' (cupy-cuda12x)",
    "jax": "pip install 'eophis_hpc[jax]' (CPU) or 'jax[cuda12]' for GPUs",
    "numba": "numba is a dependency of eophis_hpc; for GPUs install 'eophis_hpc[numba-cuda]'",
}
ALIGN = 64  # bytes: JAX aliases host memory only when it is 64-byte aligned


# ---------------------------------------------------------------------- options
def parse_device(device) -> tuple[str, int | None]:
    """``"cpu"`` -> ("cpu", None); ``"cuda"`` -> ("cuda", 0); ``"cuda:N"`` -> ("cuda", N)."""
    text = str(device).strip().lower() if isinstance(device, str) else None
    m = re.fullmatch(r"cuda(?::(\d+))?", text or "")
    if text == "cpu":
        return "cpu", None
    if m:
        return "cuda", int(m.group(1) or 0)
    raise ValueError(f"device={device!r} is not 'cpu', 'cuda' or 'cuda:N'")


def check_framework(framework: str) -> str:
    """``framework`` when it is known and importable; a clear error otherwise."""
    if framework not in ADAPTERS:
        raise ValueError(f"framework={framework!r} is not one of {tuple(ADAPTERS)}")
    module = ADAPTERS[framework].module
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"framework={framework!r} needs {module}, which is not installed here "
                          f"({exc}): {EXTRAS.get(framework, 'install it')}") from None
    return framework


def gpu_status(framework: str, index: int = 0) -> tuple[bool, str]:
    """Whether ``framework`` sees GPU ``index`` here, and what was checked (never raises)."""
    try:
        if framework == "torch":
            import torch
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            what = f"torch {torch.__version__}: torch.cuda.is_available()={n > 0}, {n} device(s)"
        elif framework == "cupy":
            import cupy
            try:
                n = cupy.cuda.runtime.getDeviceCount()
            except Exception as exc:  # no driver, no device
                n, what = 0, f"cupy {cupy.__version__}: cupy.cuda.runtime.getDeviceCount() " \
                              f"failed ({type(exc).__name__}: {exc})"
            else:
                what = f"cupy {cupy.__version__}: {n} device(s)"
        elif framework == "jax":
            import jax
            try:
                n = len(jax.devices("gpu"))
            except RuntimeError:
                n = 0
            what = f"jax {jax.__version__}: jax.devices('gpu') has {n} device(s)"
        elif framework == "numba":
            from numba import cuda
            ok = cuda.is_available()
            n = len(cuda.gpus) if ok else 0
            sim = " (CUDA simulator)" if simulator() else ""
            what = f"numba.cuda.is_available()={ok}{sim}, {n} device(s)"
        else:
            return False, f"{framework} arrays live in host memory"
    except ImportError as exc:
        return False, f"{framework} is not installed ({exc})"
    return index < n, what


def simulator() -> bool:
    """Whether Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``): device memory is then
    host memory and kernels run on the CPU."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def mpi_cuda_aware() -> tuple[bool | None, str]:
    """Whether the MPI library under mpi4py reads and writes device memory: the
    ``EOPHIS_HPC_CUDA_AWARE_MPI`` override (1/0), else ``MPIX_GPU_query_support`` (MPICH) or
    ``MPIX_Query_cuda_support`` (Open MPI, MPICH) looked up by ctypes in the loaded library.
    None when it cannot tell. Never initialises MPI: without a loaded ``mpi4py.MPI`` it says so."""
    env = os.environ.get(ENV_CUDA_AWARE)
    if env is not None and env.strip() != "":
        value = env.strip().lower() in ("1", "true", "yes", "on")
        return value, f"{ENV_CUDA_AWARE}={env}"
    if "mpi4py.MPI" not in sys.modules:
        return None, "mpi4py.MPI not loaded yet"
    libs = _loaded_mpi_libraries()
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "MPIX_GPU_query_support"):
            flag = ctypes.c_int(0)
            if lib.MPIX_GPU_query_support(0, ctypes.byref(flag)) == 0:  # 0 = MPIX_GPU_SUPPORT_CUDA
                return bool(flag.value), f"MPIX_GPU_query_support(CUDA)={flag.value} in {path}"
        if hasattr(lib, "MPIX_Query_cuda_support"):
            flag = int(lib.MPIX_Query_cuda_support())
            return bool(flag), f"MPIX_Query_cuda_support()={flag} in {path}"
    where = ", ".join(libs) if libs else "no libmpi mapped"
    return None, f"no CUDA query function in the MPI library ({where})"


def _loaded_mpi_libraries() -> list[str]:
    """Paths of the MPI libraries mapped into this process (Linux ``/proc/self/maps``)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if re.search(r"/lib(mpi|mpich)[^/]*\.so", p))


# ---------------------------------------------------------------------- the policy
@dataclass(frozen=True)
class Policy:
    """How batches reach the model: ``mode`` (host, staged, direct), whether host buffers are
    pinned, the device, the CUDA-aware answer and why this choice was made."""

    framework: str
    device: str
    mode: str
    pinned: bool
    cuda_aware: bool | None
    reason: str

    @property
    def gpu(self) -> bool:
        return self.device != "cpu"

    def describe(self) -> str:
        pin = ", pinned host buffers" if self.pinned else ""
        return f"{self.framework} on {self.device}: {self.mode}{pin} ({self.reason})"


def staging_policy(framework: str, device: str = "cpu", cuda_aware: bool | None = None) -> Policy:
    """THE function deciding host / pinned staging / CUDA-aware MPI for ``framework`` on
    ``device``; ``cuda_aware`` None detects it (:func:`mpi_cuda_aware`). Raises clear errors for
    unknown strings, a framework that is not installed, CuPy on the CPU, NumPy on a GPU, and a
    GPU that is not there (naming what was checked)."""
    check_framework(framework)
    kind, index = parse_device(device)
    if kind == "cpu":
        if framework == "cupy":
            raise ValueError("framework='cupy' with device='cpu': CuPy arrays live on a GPU; use "
                             "device='cuda' or framework='numpy'")
        return Policy(framework, "cpu", "host", False, None,
                      "the model runs on the CPU: zero-copy views of the batch")
    if framework == "numpy":
        raise ValueError("framework='numpy' with device='cuda': NumPy arrays live in host "
                         "memory; use framework='torch', 'cupy', 'jax' or 'numba' on a GPU")
    ok, checked = gpu_status(framework, index)
    name = f"cuda:{index}"
    if not ok:
        raise RuntimeError(f"device={device!r}: no GPU {index} for {framework} here ({checked})")
    if cuda_aware is None:
        cuda_aware, why = mpi_cuda_aware()
    else:
        why = f"cuda_aware={cuda_aware} given"
    if framework == "jax":
        return Policy(framework, name, "staged", False, cuda_aware,
                      f"JAX stages its own copies (jax.device_put); {checked}; MPI: {why}")
    if cuda_aware:
        kernels_ok, kwhy = _device_kernels_status()
        if kernels_ok:
            return Policy(framework, name, "direct", False, True,
                          f"CUDA-aware MPI ({why}): receives and sends in device memory; {checked}")
        return Policy(framework, name, "staged", True, True,
                      f"CUDA-aware MPI ({why}) but no device unpack kernels ({kwhy}): staged "
                      f"through pinned host memory; {checked}")
    return Policy(framework, name, "staged", True, cuda_aware,
                  f"MPI is not CUDA-aware ({why}): staged through pinned host memory; {checked}")


def _device_kernels_status() -> tuple[bool, str]:
    try:
        from numba import cuda
        return bool(cuda.is_available()), f"numba.cuda.is_available()={cuda.is_available()}"
    except Exception as exc:  # numba without its CUDA target
        return False, f"numba.cuda unusable: {type(exc).__name__}: {exc}"


def report() -> list[str]:
    """Lines for ``eophis-hpc info``: GPUs seen by each installed framework, CUDA-aware MPI."""
    lines = []
    for fw in ADAPTERS:
        if fw == "numpy":
            continue
        try:
            check_framework(fw)
        except ImportError:
            lines.append(f"    {fw:<7} not installed")
            continue
        ok, what = gpu_status(fw)
        lines.append(f"    {fw:<7} {'GPU' if ok else 'no GPU'}: {what}")
    aware, why = mpi_cuda_aware()
    lines.append(f"    MPI CUDA-aware: {aware} ({why})")
    return lines


# ---------------------------------------------------------------------- host memory
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


# kept for the OASIS worker and older callers: host-mode hand-over by framework name
def to_framework(batch: np.ndarray, framework: str):
    """The host batch as the framework's CPU tensor type, sharing memory."""
    return ADAPTERS[framework](None).wrap_host(batch)


def to_host(value, where: str) -> np.ndarray:
    return host_view(value, where)


def np_dtype(value) -> np.dtype:
    """The NumPy dtype of a tensor of any framework."""
    dt = value.dtype
    if isinstance(dt, np.dtype):
        return dt
    return np.dtype(str(dt).replace("torch.", ""))


# ---------------------------------------------------------------------- adapters
class Adapter:
    """One framework on one device. Host mode uses ``host_empty``/``wrap_host``/``host_view``;
    GPU modes add device buffers, streams, events and asynchronous copies."""

    module = "numpy"

    def __init__(self, index: int | None):
        self.index = index  # None: CPU
        self._keep = []     # owners of pinned memory handed out as NumPy views

    # host side ------------------------------------------------------------
    def host_empty(self, shape, dtype, pinned: bool = False) -> np.ndarray:
        return aligned_empty(shape, dtype)

    def wrap_host(self, arr: np.ndarray):
        return arr

    def host_view(self, value, where: str) -> np.ndarray:
        return host_view(value, where)

    # device side (GPU adapters) ----------------------------------------------
    def device_empty(self, shape, dtype):
        raise NotImplementedError

    def stream(self):
        raise NotImplementedError


class NumpyAdapter(Adapter):
    module = "numpy"


class TorchAdapter(Adapter):
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
        t = self.torch.empty(tuple(shape), dtype=self._tdtype(dtype), pin_memory=True)
        self._keep.append(t)
        return t.numpy()

    def wrap_host(self, arr):
        return self.torch.from_numpy(arr)

    def device_empty(self, shape, dtype):
        return self.torch.empty(tuple(shape), dtype=self._tdtype(dtype), device=self.dev)

    def stream(self):
        return self.torch.cuda.Stream(device=self.dev)

    def current_stream(self):
        return self.torch.cuda.current_stream(self.dev)

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, event, stream):
        event.record(stream)

    def wait(self, stream, event):
        stream.wait_event(event)

    def synchronize(self, stream):
        stream.synchronize()

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
        """A device output of any framework as a torch tensor (DLPack, zero copy)."""
        if isinstance(value, self.torch.Tensor):
            return value.detach()
        return self.torch.from_dlpack(value)


class CupyAdapter(Adapter):
    module = "cupy"

    def __init__(self, index):
        super().__init__(index)
        import cupy
        self.cp = cupy
        self.dev = cupy.cuda.Device(index)

    def host_empty(self, shape, dtype, pinned=False):
        if not pinned:
            return aligned_empty(shape, dtype)
        import cupyx
        return cupyx.empty_pinned(tuple(shape), dtype=dtype)

    def wrap_host(self, arr):
        raise ValueError("CuPy arrays live on a GPU")

    def device_empty(self, shape, dtype):
        with self.dev:
            return self.cp.empty(tuple(shape), dtype=dtype)

    def stream(self):
        with self.dev:
            return self.cp.cuda.Stream(non_blocking=True)

    def current_stream(self):
        with self.dev:
            return self.cp.cuda.get_current_stream()

    def event(self):
        return self.cp.cuda.Event()

    def record(self, event, stream):
        event.record(stream)

    def wait(self, stream, event):
        stream.wait_event(event)

    def synchronize(self, stream):
        stream.synchronize()

    def elapsed_ms(self, start, end) -> float:
        return self.cp.cuda.get_elapsed_time(start, end)

    def h2d(self, dst, src, stream):
        dst.set(src, stream=stream)

    def d2h(self, dst, src, stream):
        src.get(stream=stream, out=dst)

    def upload(self, host):
        with self.dev:
            return self.cp.asarray(host)

    def download(self, dev):
        return self.cp.asnumpy(dev)

    def as_device(self, value):
        return value if isinstance(value, self.cp.ndarray) else self.cp.from_dlpack(value)


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
        return self.cuda.pinned_array(tuple(shape), dtype=dtype)

    def device_empty(self, shape, dtype):
        return self.cuda.device_array(tuple(shape), dtype=dtype)

    def stream(self):
        return self.cuda.stream()

    def current_stream(self):
        return self.cuda.default_stream() if hasattr(self.cuda, "default_stream") else 0

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
        if simulator():
            if hasattr(value, "copy_to_host"):
                return value
            return self.cuda.to_device(np.asarray(value))  # tests only: host memory anyway
        return value if hasattr(value, "copy_to_host") else self.cuda.as_cuda_array(value)


class JaxAdapter(Adapter):
    """JAX: on the CPU, zero-copy DLPack views of 64-byte aligned host rows; on a GPU,
    ``jax.device_put`` (JAX owns the streams and the staging memory)."""

    module = "jax"

    def __init__(self, index):
        super().__init__(index)
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


ADAPTERS = {"numpy": NumpyAdapter, "torch": TorchAdapter, "cupy": CupyAdapter,
            "jax": JaxAdapter, "numba": NumbaAdapter}


def adapter(policy: Policy) -> Adapter:
    """The adapter for ``policy`` (its device selected)."""
    index = None if policy.device == "cpu" else parse_device(policy.device)[1]
    return ADAPTERS[policy.framework](index)


# ---------------------------------------------------------------------- CUDA array interface
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
    the simulator, a :class:`HostCudaArray` over its host memory."""
    if hasattr(dev, "__cuda_array_interface__"):
        return dev
    host = getattr(dev, "_ary", None)  # numba's simulated device array
    if host is None:
        host = np.asarray(dev)
    return HostCudaArray(host)
