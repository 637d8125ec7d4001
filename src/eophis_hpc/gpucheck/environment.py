"""What gpu-check reports before it checks anything: the driver and GPUs (``nvidia-smi``), the
CUDA each framework was built for, the GPUs each one sees, the MPI library and whether it says it
is CUDA-aware, JAX's memory settings and the GPU this rank would take. Never raises."""
from __future__ import annotations

import os
import shutil
import subprocess

from .. import device

FRAMEWORKS = ("torch", "cupy", "numba", "jax")
ENV_SIMULATOR = "EOPHIS_HPC_GPU_CHECK_SIMULATOR"  # 1: Numba's simulator counts (the CPU tests)


def nvidia_smi() -> str:
    """GPUs and driver as ``nvidia-smi`` lists them, or why it could not be asked."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found"
    try:
        res = subprocess.run([exe, "--query-gpu=index,name,driver_version,memory.total,"
                              "memory.used", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    return (res.stdout.strip() or res.stderr.strip()).replace("\n", "; ")


def cuda_versions() -> dict:
    """The CUDA runtime each installed framework uses."""
    out = {}
    try:
        import torch
        out["torch"] = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    except ImportError:
        pass
    try:
        import cupy
        out["cupy"] = f"cupy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}"
    except Exception as exc:  # not installed, or no driver
        out["cupy"] = f"cupy: {type(exc).__name__}: {exc}"
    try:
        from numba import cuda
        if cuda.is_available() and not device.simulator():
            out["numba"] = f"numba CUDA runtime {cuda.runtime.get_version()}"
    except Exception as exc:
        out["numba"] = f"numba.cuda: {type(exc).__name__}: {exc}"
    return out


def gpu_frameworks() -> tuple[list[str], dict]:
    """The frameworks that see a real GPU here (the CUDA simulator counts only when
    ``EOPHIS_HPC_GPU_CHECK_SIMULATOR=1``), and what was checked for each."""
    seen, found = {}, []
    for fw in FRAMEWORKS:
        n, what = device.gpu_count(fw)
        if fw == "numba" and device.simulator() and os.environ.get(ENV_SIMULATOR) != "1":
            n, what = 0, what + "; the CUDA simulator is not a GPU"
        seen[fw] = what
        if n > 0:
            found.append(fw)
    return found, seen


def mpi_facts() -> dict:
    """The MPI library (initialised here, as a singleton) and its CUDA answer."""
    try:
        from mpi4py import MPI
        lib = MPI.Get_library_version().strip().splitlines()[0]
    except Exception as exc:
        return {"library": f"mpi4py unusable: {type(exc).__name__}: {exc}"}
    aware, why = device.mpi_cuda_aware()
    return {"library": lib, "cuda_aware": f"{aware} ({why})",
            "direct mode": f"opt-in: {device.ENV_CUDA_AWARE}="
                           f"{os.environ.get(device.ENV_CUDA_AWARE, '(unset)')}"}


def collect() -> dict:
    """The environment section of the report (``gpu_frameworks`` is what the checks use)."""
    found, seen = gpu_frameworks()  # before MPI: JAX's memory setting is applied first
    rank, why = device.node_rank()
    return {"gpu_frameworks": found, "nvidia-smi": nvidia_smi(), "cuda": cuda_versions(),
            "frameworks": seen, "mpi": mpi_facts(),
            "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE",
                                                            "(unset)"),
            "node-local rank": why if rank is None else f"{rank} ({why})"}
