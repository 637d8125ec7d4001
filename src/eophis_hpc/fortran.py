"""The Fortran/C client's files, and running the Python workers on the model's MPI library.

A Fortran model is compiled against an MPI with Fortran bindings (its ``mpifort``); the Python
workers of the same job must load that same MPI library, and the job must be started by its
``mpiexec``. mpi4py's wheels choose the library at run time (``MPI4PY_LIBMPI``), so this module
finds the library behind an MPI compiler wrapper and gives the environment that points mpi4py
at it (no rebuild of mpi4py).
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

CLIENT_DIR = Path(__file__).parent / "fortran_client"
if not CLIENT_DIR.is_dir():  # an editable install runs from the source tree: the sources' home
    CLIENT_DIR = Path(__file__).resolve().parents[2] / "ext" / "fortran"
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
            "/usr/local/lib")
# the sonames mpi4py's wheels link against: MPICH ABI and Open MPI
ABI_SONAMES = {"mpich": "libmpi.so.12", "openmpi": "libmpi.so.40"}


def source() -> Path:
    """The Fortran module to compile into a model (``mpifort -c``)."""
    return CLIENT_DIR / "eophis_hpc.f90"


def header() -> Path:
    """The C header of the bind(C) entry points."""
    return CLIENT_DIR / "eophis_hpc.h"


def recipe(wrapper: str = "mpifort") -> str:
    """The two lines that build the client into a model with its own build system."""
    return (f"{wrapper} -O2 -c {shlex.quote(str(source()))}      # eophis_hpc.mod + eophis_hpc.o\n"
            f"{wrapper} -O2 model.f90 eophis_hpc.o -o model")


def wrapper_flags(wrapper: str) -> list[str]:
    """The compile/link line behind an MPI compiler wrapper (MPICH ``-show``, Open MPI
    ``--showme``)."""
    path = shutil.which(wrapper)
    if path is None:
        raise FileNotFoundError(f"MPI compiler wrapper {wrapper!r} not found on PATH")
    for flag in ("-show", "--showme"):
        try:
            out = subprocess.run([path, flag], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return shlex.split(out.stdout)
    raise RuntimeError(f"{wrapper}: neither -show nor --showme printed its link line")


def libmpi_of(wrapper: str) -> Path:
    """The C MPI library a wrapper links (``-lmpich`` / ``-lmpi``), as a real file."""
    words = wrapper_flags(wrapper)
    dirs = [w[2:] for w in words if w.startswith("-L")]
    dirs += [d for w in words if w.startswith("-Wl,-rpath,") for d in w[11:].split(",")]
    names = [w[2:] for w in words if w.startswith("-l")]
    candidates = [n for n in names if n in ("mpich", "mpi")]
    if not candidates:
        raise RuntimeError(f"{wrapper}: no -lmpich or -lmpi in its link line {' '.join(words)}")
    for name in candidates:
        for d in dirs + list(LIB_DIRS):
            for found in sorted(Path(d).glob(f"lib{name}.so.*")) if Path(d).is_dir() else ():
                if re.fullmatch(rf"lib{name}\.so\.\d+", found.name):
                    return found
    raise FileNotFoundError(f"{wrapper}: lib{candidates[0]}.so.N not found in {dirs + list(LIB_DIRS)}")


def mpiexec_of(wrapper: str) -> Path:
    """The launcher that goes with a wrapper: ``mpiexec.mpich`` for ``mpifort.mpich``, else the
    ``mpiexec`` next to it."""
    path = Path(shutil.which(wrapper) or wrapper)
    suffix = path.name.split(".", 1)[1] if "." in path.name else ""
    for name in ([f"mpiexec.{suffix}"] if suffix else []) + ["mpiexec"]:
        exe = path.parent / name
        if exe.exists():
            return exe
    raise FileNotFoundError(f"no mpiexec next to {path}")


def abi_of(libmpi: Path) -> str:
    """``openmpi`` or ``mpich`` (the MPICH ABI: MPICH, Intel MPI, MVAPICH, Cray MPICH)."""
    return "openmpi" if "open" in str(libmpi).lower() or libmpi.name.startswith("libmpi.so.4") \
        else "mpich"


def worker_env(libmpi: Path | str, shim_root: Path | str | None = None) -> dict:
    """Environment for Python ranks so that mpi4py loads ``libmpi`` (the model's MPI).

    mpi4py's MPICH-ABI module needs the soname ``libmpi.so.12``; distributions name MPICH's
    library ``libmpich.so.12``, so a directory with that one symbolic link is made (under
    ``shim_root``, default the user's cache) and put first on ``LD_LIBRARY_PATH``."""
    libmpi = Path(libmpi).resolve()
    if not libmpi.exists():
        raise FileNotFoundError(f"MPI library {libmpi} does not exist")
    abi = abi_of(libmpi)
    soname = ABI_SONAMES[abi]
    lib_dir = libmpi.parent
    target = libmpi
    if not Path(str(libmpi)).name.startswith(soname):
        root = Path(shim_root) if shim_root else Path(
            os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eophis_hpc" / "libmpi"
        lib_dir = root / hashlib.sha1(str(libmpi).encode()).hexdigest()[:12]
        lib_dir.mkdir(parents=True, exist_ok=True)
        link = lib_dir / soname
        if not link.exists() or link.resolve() != libmpi:
            tmp = lib_dir / f".{soname}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(libmpi)
            tmp.replace(link)
        target = link
    path = os.environ.get("LD_LIBRARY_PATH", "")
    return {"MPI4PY_LIBMPI": str(target),
            "LD_LIBRARY_PATH": str(lib_dir) + (os.pathsep + path if path else "")}
