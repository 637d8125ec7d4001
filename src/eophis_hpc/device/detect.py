"""What this process can use, found without side effects that hurt a run: GPUs per framework,
which GPU this rank takes, JAX's memory pre-allocation, a CUDA-aware MPI library. Nothing here
initialises MPI or raises: each answer comes with what was checked."""
from __future__ import annotations

import ctypes
import os
import re
import sys

ENV_CUDA_AWARE = "EOPHIS_HPC_CUDA_AWARE_MPI"  # 1/0: the explicit opt-in (or out) of direct mode
# node-local rank variables set by launchers, in the order they are trusted
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID",
                   "PALS_LOCAL_RANKID", "MV2_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK",
                   "FLUX_TASK_LOCAL_ID", "JSM_NAMESPACE_LOCAL_RANK")
# JAX settings that already say how much GPU memory to take: left alone when one is set
JAX_MEMORY_VARS = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                   "XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR")


def simulator() -> bool:
    """Whether Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``): device memory is then
    host memory and kernels run on the CPU."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def jax_gpu_memory() -> str:
    """Before JAX's first GPU query: unless the user chose (``XLA_PYTHON_CLIENT_PREALLOCATE``,
    ``XLA_PYTHON_CLIENT_MEM_FRACTION``, ...), turn JAX's pre-allocation of 75% of every visible
    GPU off, so that several workers can share a GPU. Returns what was done, for the logs."""
    chosen = [f"{v}={os.environ[v]}" for v in JAX_MEMORY_VARS if os.environ.get(v)]
    if chosen:
        return "JAX GPU memory as set: " + ", ".join(chosen)
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return ("XLA_PYTHON_CLIENT_PREALLOCATE=false set (JAX would take 75% of the GPU at start; "
            "set it yourself to choose)")


def gpu_count(framework: str) -> tuple[int, str]:
    """How many GPUs ``framework`` sees here, and what was checked (never raises)."""
    try:
        if framework == "torch":
            import torch
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            return n, f"torch {torch.__version__}: torch.cuda.is_available()={n > 0}, {n} device(s)"
        if framework == "cupy":
            import cupy
            try:
                n = cupy.cuda.runtime.getDeviceCount()
            except Exception as exc:  # no driver, no device
                return 0, (f"cupy {cupy.__version__}: cupy.cuda.runtime.getDeviceCount() failed "
                           f"({type(exc).__name__}: {exc})")
            return n, f"cupy {cupy.__version__}: {n} device(s)"
        if framework == "jax":
            note = jax_gpu_memory()
            import jax
            try:
                n = len(jax.devices("gpu"))
            except RuntimeError:
                n = 0
            return n, f"jax {jax.__version__}: jax.devices('gpu') has {n} device(s); {note}"
        if framework == "numba":
            from numba import cuda
            ok = cuda.is_available()
            n = len(cuda.gpus) if ok else 0
            sim = " (CUDA simulator)" if simulator() else ""
            return n, f"numba.cuda.is_available()={ok}{sim}, {n} device(s)"
    except ImportError as exc:
        return 0, f"{framework} is not installed ({exc})"
    return 0, f"{framework} arrays live in host memory"


def gpu_status(framework: str, index: int = 0) -> tuple[bool, str]:
    """Whether ``framework`` sees GPU ``index`` here, and what was checked (never raises)."""
    n, what = gpu_count(framework)
    return index < n, what


def node_rank() -> tuple[int | None, str]:
    """This process's rank among the processes of its node, from the launcher's environment
    (Open MPI, MPICH/Hydra, Slurm, PALS, MVAPICH, Flux, jsrun), or None when none is set."""
    for var in LOCAL_RANK_VARS:
        text = os.environ.get(var, "").strip()
        if text.isdigit():
            return int(text), f"{var}={text}"
    return None, "no node-local rank in the environment"


def gpu_for_rank(count: int) -> tuple[int, str]:
    """The GPU a worker takes for ``device="cuda"``: its node-local rank modulo the ``count``
    GPUs it sees (so workers of a node spread over its GPUs; with one GPU visible per rank,
    ``CUDA_VISIBLE_DEVICES`` set by the launcher, always that one)."""
    rank, why = node_rank()
    if rank is None or count < 1:
        return 0, f"GPU 0 ({why})"
    return rank % count, f"GPU {rank % count} = node-local rank {rank} ({why}) mod {count} GPU(s)"


def mpi_cuda_aware() -> tuple[bool | None, str]:
    """Whether the MPI library under mpi4py reads and writes device memory: the
    ``EOPHIS_HPC_CUDA_AWARE_MPI`` override (1/0), else ``MPIX_GPU_query_support`` (MPICH) or
    ``MPIX_Query_cuda_support`` (Open MPI, MPICH) looked up by ctypes in the loaded library.
    None when it cannot tell. Never initialises MPI and never asks before ``MPI_Init`` (MPICH's
    query needs it)."""
    env = os.environ.get(ENV_CUDA_AWARE)
    if env is not None and env.strip() != "":
        value = env.strip().lower() in ("1", "true", "yes", "on")
        return value, f"{ENV_CUDA_AWARE}={env}"
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None:
        return None, "mpi4py.MPI not loaded yet"
    try:
        ready = mpi.Is_initialized() and not mpi.Is_finalized()
    except Exception as exc:  # an MPI library that cannot even say
        return None, f"MPI_Initialized failed ({type(exc).__name__}: {exc})"
    if not ready:
        return None, "MPI is not initialised (or already finalised): not asked"
    libs = loaded_mpi_libraries()
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


def loaded_mpi_libraries() -> list[str]:
    """Paths of the MPI libraries mapped into this process (Linux ``/proc/self/maps``)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if re.search(r"/lib(mpi|mpich)[^/]*\.so", p))


def device_kernels_status() -> tuple[bool, str]:
    """Whether the device unpack/pack kernels compile and give the right answer on this GPU
    (a tiny launch checked against its expected result, once per process): a missing NVVM or a
    driver too old for the toolkit shows here, not at the first coupling step."""
    try:
        from . import cuda_kernels
    except Exception as exc:  # numba without its CUDA target
        return False, f"numba.cuda unusable: {type(exc).__name__}: {exc}"
    return cuda_kernels.self_test()
