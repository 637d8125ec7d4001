"""``eophis-hpc info``: what this installation can do here."""
from __future__ import annotations

import importlib
import platform


def _version(mod: str) -> str:
    try:
        return getattr(importlib.import_module(mod), "__version__", "installed")
    except Exception as exc:  # optional packages: report why they are absent
        return f"absent ({type(exc).__name__})"


def _fortran_line() -> str:
    """The Fortran/C client: where its source is, and the first MPI Fortran wrapper found."""
    import shutil

    from . import fortran
    wrapper = next((w for w in ("mpifort.mpich", "mpifort", "mpif90") if shutil.which(w)), None)
    if wrapper is None:
        return f"  fortran  {fortran.source()} (no mpifort on PATH: docs/fortran.md)"
    try:
        return (f"  fortran  {fortran.source()}; {wrapper} -> {fortran.libmpi_of(wrapper)} "
                f"(workers: eophis-hpc fortran --env {wrapper})")
    except (OSError, RuntimeError) as exc:
        return f"  fortran  {fortran.source()}; {wrapper}: {exc}"


def report() -> str:
    from . import __version__, kernels
    from .launch import find_mpiexec

    lines = [f"eophis_hpc {__version__} on Python {platform.python_version()} "
             f"({platform.machine()}, {platform.system()})"]
    for mod in ("numpy", "numba", "mpi4py", "torch", "cupy", "jax", "pyoasis"):
        lines.append(f"  {mod:<8} {_version(mod)}")
    try:
        from mpi4py import MPI
        lib = MPI.Get_library_version().splitlines()[0].strip()
        lines.append(f"  MPI      {lib}")
    except Exception as exc:
        lines.append(f"  MPI      unavailable ({exc})")
    try:
        lines.append(f"  mpiexec  {find_mpiexec()}")
    except FileNotFoundError as exc:
        lines.append(f"  mpiexec  {exc}")
    from . import config
    try:
        cfg_path = config.path()
        state = f"{cfg_path}: {config.load()}" if cfg_path else f"none (no ./{config.FILENAME})"
    except config.ConfigError as exc:
        state = f"unreadable: {exc}"
    lines.append(f"  settings {state}")
    lines.append(_fortran_line())
    lines.append("  kernel backends (first available is the default):")
    for name, state in kernels.available().items():
        lines.append(f"    {name:<7} {state}")
    from . import device
    lines.append("  GPUs and staging (device.staging_policy decides per tunnel):")
    lines += device.report()
    return "\n".join(lines)
