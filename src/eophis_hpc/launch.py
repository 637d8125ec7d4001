"""Building the MPMD launch line: ``mpiexec -n P <model> : -n Q <workers>``."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_mpiexec() -> str:
    """The mpiexec of this Python's environment (the ``mpich`` wheel puts it next to python),
    else the first on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    found = shutil.which("mpiexec")
    if found is None:
        raise FileNotFoundError("no mpiexec found next to this Python nor on PATH; install the "
                                "'mpich' wheel (pip install mpich) or load your MPI module")
    return found


def command_for(target: str, args=()) -> list[str]:
    """A Python script runs with this interpreter under ``eophis_hpc.script`` (the job's fault
    handling in place before its first line); anything else (a Fortran binary) as is."""
    if target.endswith(".py"):
        return [sys.executable, "-m", "eophis_hpc.script", target, *args]
    return [target, *args]


def mpmd_command(p: int, model_cmd: list[str], q: int, worker_cmd: list[str],
                 mpiexec: str | None = None) -> list[str]:
    for name, n in (("model ranks", p), ("workers", q)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return [mpiexec or find_mpiexec(), "-n", str(p), *model_cmd, ":", "-n", str(q), *worker_cmd]
