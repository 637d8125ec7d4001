"""THE decision of where the model's batches live (:func:`staging_policy`), the framework
registry (:data:`ADAPTERS`, keys = the allowed ``framework=`` values) and the adapter for a
decision. Which GPU a worker takes: ``cuda:N`` takes GPU N; ``cuda`` takes the worker's
node-local rank modulo the GPUs it sees. Direct mode (receives and sends in device memory) is
taken only when the user opts in (``EOPHIS_HPC_CUDA_AWARE_MPI=1`` or ``cuda_aware=True``): an
MPI library can report CUDA support without a CUDA transport underneath."""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

from .base import Adapter, NumpyAdapter
from .cuda_adapters import CupyAdapter, NumbaAdapter
from .detect import (ENV_CUDA_AWARE, device_kernels_status, gpu_count, gpu_for_rank,
                     gpu_status, mpi_cuda_aware, node_rank)
from .torch_jax import JaxAdapter, TorchAdapter

MODES = ("host", "staged", "direct")
EXTRAS = {
    "torch": "pip install 'eophis_hpc[torch]' (CPU wheels) or a CUDA build of torch",
    "cupy": "pip install 'eophis_hpc[cupy]' (cupy-cuda12x)",
    "jax": "pip install 'eophis_hpc[jax]' (CPU) or 'jax[cuda12]' for GPUs",
    "numba": "numba is a dependency of eophis_hpc; for GPUs install 'eophis_hpc[numba-cuda]'",
}
ADAPTERS = {"numpy": NumpyAdapter, "torch": TorchAdapter, "cupy": CupyAdapter,
            "jax": JaxAdapter, "numba": NumbaAdapter}


def parse_device(device) -> tuple[str, int | None]:
    """``"cpu"`` -> ("cpu", None); ``"cuda"`` -> ("cuda", None): the GPU of the node-local rank;
    ``"cuda:N"`` -> ("cuda", N)."""
    text = str(device).strip().lower() if isinstance(device, str) else None
    m = re.fullmatch(r"cuda(?::(\d+))?", text or "")
    if text == "cpu":
        return "cpu", None
    if m:
        return "cuda", None if m.group(1) is None else int(m.group(1))
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


@dataclass(frozen=True)
class Policy:
    """How batches reach the model: ``mode`` (host, staged, direct), whether host buffers are
    pinned, the device (``cuda:N`` once chosen), the CUDA-aware answer and why."""

    framework: str
    device: str
    mode: str
    pinned: bool
    cuda_aware: bool | None
    reason: str

    @property
    def gpu(self) -> bool:
        return self.device != "cpu"

    @property
    def index(self) -> int | None:
        """The GPU's index, None on the CPU."""
        return None if self.device == "cpu" else parse_device(self.device)[1]

    def describe(self) -> str:
        pin = ", pinned host buffers" if self.pinned else ""
        return f"{self.framework} on {self.device}: {self.mode}{pin} ({self.reason})"


def staging_policy(framework: str, device: str = "cpu", cuda_aware: bool | None = None) -> Policy:
    """THE function deciding host / pinned staging / CUDA-aware MPI for ``framework`` on
    ``device``; ``cuda_aware`` None detects it (:func:`mpi_cuda_aware`), and a detected "yes"
    still stages unless ``EOPHIS_HPC_CUDA_AWARE_MPI=1`` opts in. Raises clear errors for
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
    count, checked = gpu_count(framework)
    if index is None:
        index, how = gpu_for_rank(count)
        if count < 1:
            raise RuntimeError(f"device={device!r}: no GPU for {framework} here ({checked})")
    else:
        how = f"cuda:{index} asked"
    if index >= count:
        raise RuntimeError(f"device={device!r}: no GPU {index} for {framework} here ({checked})")
    name = f"cuda:{index}"
    where = f"{how}; {checked}"
    if cuda_aware is None:
        cuda_aware, why = mpi_cuda_aware()
        if cuda_aware and not why.startswith(ENV_CUDA_AWARE) and framework != "jax":
            return Policy(framework, name, "staged", True, True,
                          f"MPI reports CUDA support ({why}) but receiving into device memory is "
                          f"opt-in ({ENV_CUDA_AWARE}=1, after eophis-hpc gpu-check): staged "
                          f"through pinned host memory; {where}")
    else:
        why = f"cuda_aware={cuda_aware} given"
    if framework == "jax":
        return Policy(framework, name, "staged", False, cuda_aware,
                      f"JAX stages its own copies (jax.device_put); {where}; MPI: {why}")
    if cuda_aware:
        kernels_ok, kwhy = device_kernels_status()
        if kernels_ok:
            return Policy(framework, name, "direct", False, True,
                          f"CUDA-aware MPI ({why}): receives and sends in device memory, "
                          f"{kwhy}; {where}")
        return Policy(framework, name, "staged", True, True,
                      f"CUDA-aware MPI ({why}) but no device unpack kernels ({kwhy}): staged "
                      f"through pinned host memory; {where}")
    return Policy(framework, name, "staged", True, cuda_aware,
                  f"MPI is not CUDA-aware ({why}): staged through pinned host memory; {where}")


def adapter(policy: Policy) -> Adapter:
    """The adapter for ``policy``, its GPU made current; in direct mode Numba's context (the
    device kernels') is put on the same GPU."""
    ad = ADAPTERS[policy.framework](policy.index)
    if policy.mode == "direct":
        from .cuda_kernels import select_device
        select_device(policy.index)
    return ad


def to_framework(batch, framework: str):
    """The host batch as the framework's CPU tensor type, sharing memory (host mode)."""
    return ADAPTERS[framework](None).wrap_host(batch)


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
    lines.append(f"    MPI CUDA-aware: {aware} ({why}); direct mode needs {ENV_CUDA_AWARE}=1")
    lines.append(f"    device='cuda': the GPU of the node-local rank mod the GPUs seen "
                 f"({node_rank()[1]}); 'cuda:N' picks GPU N")
    return lines
