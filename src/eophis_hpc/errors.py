"""Errors of a coupled run and what ends the job when one happens: :class:`CouplingError`, the
wait bound (``EOPHIS_HPC_TIMEOUT``) and the hook that turns an uncaught exception on any rank
into the end of the whole MPI job. No MPI is imported here until a hook has to abort."""
from __future__ import annotations

import os
import sys
import time


class CouplingError(RuntimeError):
    """A mismatch or fault of the coupled run. ``collective`` errors are raised with the same
    message on every rank (handshake mismatches): the message is printed once."""

    def __init__(self, message: str, collective: bool = False):
        super().__init__(message)
        self.collective = collective


def default_timeout() -> float | None:
    """Seconds a rank waits for its peers before it declares them lost and ends the job
    (``EOPHIS_HPC_TIMEOUT``, default 600; 0 or 'none' waits forever)."""
    text = os.environ.get("EOPHIS_HPC_TIMEOUT", "600").strip().lower()
    try:
        value = float(text) if text not in ("", "none", "inf") else 0.0
    except ValueError:
        raise ValueError(f"EOPHIS_HPC_TIMEOUT={text!r} is not a number of seconds") from None
    return value if value > 0 else None


LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def under_mpi_launcher() -> bool:
    """Whether this process was started by an MPI launcher (mpiexec, srun) as part of a job."""
    return any(v in os.environ for v in LAUNCHER_VARS)


def install_abort_hook() -> None:
    """Make an uncaught exception on any rank end the whole MPI job (print, then Abort) instead
    of leaving the other ranks waiting forever, as ``python -m mpi4py`` does. Installed when a
    coupler or tunnel is created (never at import); it initialises MPI to abort if the error
    came before MPI was started and the process runs under mpiexec. Set
    EOPHIS_HPC_ABORT_ON_ERROR=0 to keep Python's own hook."""
    if os.environ.get("EOPHIS_HPC_ABORT_ON_ERROR", "1") == "0":
        return
    if getattr(sys.excepthook, "_eophis_hpc", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if "mpi4py.MPI" not in sys.modules and not under_mpi_launcher():
            previous(exc_type, exc, tb)  # not an MPI job: nothing to tear down
            return
        from mpi4py import MPI
        world = MPI.COMM_WORLD
        if isinstance(exc, CouplingError) and exc.collective:
            if world.rank == 0:  # every rank has the same message: print it once
                print(f"eophis_hpc: {exc}", file=sys.stderr, flush=True)
            else:
                time.sleep(2.0)  # let rank 0 print and end the job first
        else:  # the cause first, in one line, then the traceback
            print(f"eophis_hpc: uncaught exception on world rank {world.rank}, aborting the job: "
                  f"{exc_type.__name__}: {exc}", file=sys.stderr, flush=True)
            previous(exc_type, exc, tb)
        sys.stderr.flush()
        time.sleep(0.5)  # let mpiexec forward the output before the job is torn down
        world.Abort(1)

    hook._eophis_hpc = True
    sys.excepthook = hook
