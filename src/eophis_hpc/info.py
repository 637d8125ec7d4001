"""``eophis-hpc info``: what this installation can do here, including which MPI library mpi4py
loads and whether pyoasis imports over the same one (:func:`oasis_environment`)."""
from __future__ import annotations

import importlib
import json
import platform
import subprocess
import sys

# Run in a fresh interpreter (same environment): which MPI C libraries mpi4py loads, then which
# ones importing pyoasis adds (its liboasis.cbind.so links an MPI of its own when it was built
# against another one). MPI is not initialised; pyoasis' import hooks die with that process.
_PROBE = r"""
import json, os, re
def loaded(pattern):
    out = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            path = parts[-1] if len(parts) >= 6 else ""
            if re.match(pattern, os.path.basename(path)):
                real = os.path.realpath(path)
                if real not in out:
                    out.append(real)
    return out
MPI_C = r"lib(mpi|mpich)\.so"
res = {}
try:
    import mpi4py
    mpi4py.rc.initialize = False
    from mpi4py import MPI
    res["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
    res["mpi_libs"] = loaded(MPI_C)
except Exception as exc:
    res["mpi_error"] = f"{type(exc).__name__}: {exc}"
try:
    import pyoasis
    res["pyoasis"] = os.path.dirname(pyoasis.__file__)
    res["liboasis"] = loaded(r"liboasis")
    res["oasis_mpi_libs"] = [p for p in loaded(MPI_C) if p not in res.get("mpi_libs", [])]
except BaseException as exc:
    res["pyoasis_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
print("EOPHIS_HPC_PROBE " + json.dumps(res))
"""
ENV_HINT = ('point mpi4py at the MPI that OASIS was built with: eval "$(eophis-hpc fortran --env '
            'mpifort)" (docs/usage.md, "OASIS transport")')


def oasis_environment(timeout: float = 60.0) -> dict:
    """Which MPI library mpi4py loads here and whether pyoasis imports over it.

    Keys: ``mpi`` (the library's version line), ``mpi_libs`` (the files mpi4py loaded),
    ``pyoasis`` (its folder) or ``pyoasis_error``, ``liboasis`` (the OASIS C bindings loaded),
    ``oasis_mpi_libs`` (MPI libraries pyoasis loaded *besides* mpi4py's: two MPIs in one process,
    which crash at the first OASIS call) and ``problem`` (a sentence, or None when pyoasis can
    run here)."""
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                             timeout=timeout)
        line = next((x for x in res.stdout.splitlines() if x.startswith("EOPHIS_HPC_PROBE ")),
                    None)
        env = json.loads(line.split(" ", 1)[1]) if line else {
            "mpi_error": f"the probe failed: {(res.stderr or res.stdout).strip()[-300:]}"}
    except (OSError, subprocess.TimeoutExpired) as exc:
        env = {"mpi_error": f"the probe failed: {exc}"}
    if "mpi_error" in env:
        env["problem"] = f"mpi4py does not load: {env['mpi_error']}"
    elif "pyoasis" not in env:
        env["problem"] = (f"pyoasis does not import ({env.get('pyoasis_error')}): it is built with "
                          "OASIS3-MCT from source (docs/usage.md, \"OASIS transport\")")
    elif env.get("oasis_mpi_libs"):
        env["problem"] = (f"pyoasis loads {', '.join(env['oasis_mpi_libs'])} but mpi4py loaded "
                          f"{', '.join(env['mpi_libs']) or 'another MPI'}: two MPI libraries in "
                          f"one process crash at the first OASIS call; {ENV_HINT}")
    else:
        env["problem"] = None
    return env


def oasis_lines(env: dict) -> list[str]:
    """``eophis-hpc info``'s MPI and pyoasis lines from :func:`oasis_environment`."""
    if "mpi" in env:
        libs = ", ".join(env.get("mpi_libs") or []) or "library file not found"
        lines = [f"  MPI      {' '.join(env['mpi'].split())} (mpi4py loads {libs})"]
    else:
        lines = [f"  MPI      unavailable ({env.get('mpi_error')})"]
    if "pyoasis" not in env:
        lines.append(f"  pyoasis  absent ({env.get('pyoasis_error')})")
    else:
        lib = ", ".join(env.get("liboasis") or []) or "no liboasis loaded"
        state = "same MPI library as mpi4py" if not env["problem"] else f"UNUSABLE: {env['problem']}"
        lines.append(f"  pyoasis  {env['pyoasis']} ({lib}): {state}")
    return lines


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
    for mod in ("numpy", "numba", "mpi4py", "torch", "cupy", "jax"):
        lines.append(f"  {mod:<8} {_version(mod)}")
    lines += oasis_lines(oasis_environment())
    lines.append("  MPI probe: eophis-hpc info --probe (contiguous, intercommunicator, subarray and "
                 "struct round trips on this library)")
    from .transport.mpi.strategies import DEFAULT, names
    lines.append(f"  strategies {', '.join(names())} (default {DEFAULT})")
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
