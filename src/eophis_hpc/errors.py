"""Errors of a coupled run and what ends the job when one happens: :class:`CouplingError`, the
wait bound (``EOPHIS_HPC_TIMEOUT``), the hook that turns an uncaught exception on any rank into
the end of the whole MPI job, and the exit guard that ends the job when a program of it stops
before it coupled (the other programs would otherwise wait for it forever, inside MPI_Init or
the join). No MPI is imported here until a hook has to abort."""
from __future__ import annotations

import atexit
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
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def under_mpi_launcher() -> bool:
    """Whether this process was started by an MPI launcher (mpiexec, srun) as part of a job."""
    return any(v in os.environ for v in LAUNCHER_VARS)


def _launcher_int(names) -> int | None:
    for name in names:
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return None


def world_rank_from_launcher() -> str:
    """This process' world rank as the launcher says it (before MPI starts), or '?'."""
    rank = _launcher_int(_RANK_VARS)
    return "?" if rank is None else str(rank)


def _enabled() -> bool:
    return os.environ.get("EOPHIS_HPC_ABORT_ON_ERROR", "1") != "0"


_state = {"coupled": False, "released": False, "guarded": False}


def mark_coupled() -> None:
    """This process joined the coupling (the exit guard has nothing more to do)."""
    _state["coupled"] = True


def release_exit_guard() -> None:
    """Say that this process takes part in an MPI job without coupling (a benchmark's raw MPI
    program, an OASIS model component): its exit must not end the job."""
    _state["released"] = True


def install_exit_guard() -> None:
    """At exit, a process of a multi-program MPI job that imported eophis_hpc but never coupled
    ends the whole job with a one-line message, so the ranks waiting for it (inside MPI_Init or
    the join) do not hang. Installed at ``import eophis_hpc`` under an MPI launcher only (it
    starts MPI only when it fires); ``EOPHIS_HPC_ABORT_ON_ERROR=0`` or
    :func:`release_exit_guard` turns it off."""
    if _state["guarded"] or not _enabled() or not under_mpi_launcher():
        return
    size = _launcher_int(_SIZE_VARS)
    if size is not None and size < 2:
        return
    _state["guarded"] = True
    install_abort_hook()
    atexit.register(_exit_guard)


def _exit_guard() -> None:
    if _state["coupled"] or _state["released"] or not _enabled():
        return
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_finalized():
        return
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    print(f"eophis_hpc: world rank {world_rank_from_launcher()} ({script}) ended before it "
          "coupled (it never reached connect() or Tunnel.run()); ending the whole job so the "
          "other ranks do not wait for it", file=sys.stderr, flush=True)
    from mpi4py import MPI
    time.sleep(0.2)  # let mpiexec forward the output before the job is torn down
    MPI.COMM_WORLD.Abort(1)


def install_abort_hook() -> None:
    """Make an uncaught exception on any rank end the whole MPI job (print, then Abort) instead
    of leaving the other ranks waiting forever, as ``python -m mpi4py`` does. Installed when a
    coupler or tunnel is created (never at import); it initialises MPI to abort if the error
    came before MPI was started and the process runs under mpiexec. Set
    EOPHIS_HPC_ABORT_ON_ERROR=0 to keep Python's own hook."""
    if not _enabled():
        return
    if getattr(sys.excepthook, "eophis_hpc_abort", False):
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
        else:  # who and what happens, then the traceback: the message itself printed once
            print(f"eophis_hpc: uncaught exception on world rank {world.rank}; ending the whole "
                  "job (traceback below)", file=sys.stderr, flush=True)
            previous(exc_type, exc, tb)
        sys.stderr.flush()
        _state["released"] = True  # the job is ending here: the exit guard has nothing to add
        time.sleep(0.5)  # let mpiexec forward the output before the job is torn down
        world.Abort(1)

    hook.eophis_hpc_abort = True
    sys.excepthook = hook
