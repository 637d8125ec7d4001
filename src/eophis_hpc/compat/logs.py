"""Eophis' logs: ``info`` writes ``eophis.out`` (worker 0 only), ``warning`` and ``abort`` write
``eophis.err`` with the rank, file and line of the caller; ``abort`` then ends the whole MPI job.

As in Eophis, the end of the Python process closes the tunnels and writes ``EOPHIS run
finished`` (registered with :mod:`atexit` when the first message is written; not after an abort).

Before the tunnels are open the workers' own ranks are unknown (in an MPMD launch the model
holds world rank 0), so messages are kept until :func:`set_rank` is called, as Eophis does, and
written at once in a single-process run (preproduction). ``abort`` in a single process raises
:class:`EophisAbort` (a ``SystemExit``) instead of calling ``MPI_Abort``.
"""
from __future__ import annotations

import atexit
import inspect
import os
import sys

OUT, ERR = "eophis.out", "eophis.err"


class EophisAbort(SystemExit):
    """Raised by :func:`abort` when there is no MPI job to end (a single process)."""


class _State:
    rank: int | None = None      # this worker's rank among the workers, once known
    directory: str | None = None  # where the log files go (the cwd at the first message)
    buffer: list = []
    started = False
    finisher = None               # what the end of the run does first (close the tunnels)
    at_exit = False               # finish() is registered with atexit
    finished = False
    aborted = False


def _world():
    """``(rank, size)`` of MPI.COMM_WORLD if MPI is already initialised, else None."""
    mod = sys.modules.get("mpi4py.MPI")
    if mod is None or not mod.Is_initialized() or mod.Is_finalized():
        return None
    return mod.COMM_WORLD.Get_rank(), mod.COMM_WORLD.Get_size()


def _known_rank() -> int | None:
    if _State.rank is not None:
        return _State.rank
    world = _world()
    if world is None or world[1] == 1:
        return 0
    return None


def _path(name: str) -> str:
    if _State.directory is None:
        _State.directory = os.getcwd()
    return os.path.join(_State.directory, name)


def _write(name: str, text: str, truncate: bool = False) -> None:
    with open(_path(name), "w" if truncate else "a") as fh:
        fh.write(text + "\n")


def set_finisher(fn) -> None:
    """``fn()`` runs at the end of the process, before ``EOPHIS run finished`` is written."""
    _State.finisher = fn


def finish() -> None:
    """The end of an Eophis run (at exit): close the tunnels, write ``EOPHIS run finished``."""
    if _State.aborted or _State.finished or not _State.at_exit:
        return
    _State.finished = True
    if _State.finisher is not None:
        _State.finisher()
    info("\nEOPHIS run finished")
    flush()


def _register_finish() -> None:
    if not _State.at_exit and not _State.finished:
        _State.at_exit = True
        atexit.register(finish)


def _start() -> None:
    """Rank 0 starts fresh log files (as Eophis opens them in 'w' mode)."""
    _register_finish()
    if not _State.started:
        _State.started = True
        if _known_rank() == 0:
            open(_path(OUT), "w").close()
            open(_path(ERR), "w").close()


def set_rank(rank: int) -> None:
    """This worker's rank among the workers (known once the tunnels are open): worker 0 writes
    the messages kept so far."""
    _State.rank = int(rank)
    flush()


def flush() -> None:
    rank = _known_rank()
    if rank is None:
        return
    _start()
    if rank == 0:
        for message in _State.buffer:
            _write(OUT, message)
    _State.buffer = []


def info(message: str = "") -> None:
    """An informational message in ``eophis.out`` (written by worker 0)."""
    rank = _known_rank()
    if rank is None:
        _register_finish()
        _State.buffer.append(str(message))
        return
    flush()
    if rank == 0:
        _write(OUT, str(message))


def _caller(depth: int = 2) -> str:
    frame = inspect.stack()[depth]
    return f"from {frame.filename} at line {frame.lineno}"


def _rank_label() -> str:
    if _State.rank is not None:
        return str(_State.rank)
    world = _world()
    return str(world[0]) if world else "0"


def warning(message: str = "Warning not described") -> None:
    """A warning in ``eophis.err`` (every rank), noted in ``eophis.out``."""
    _start()
    rank = _rank_label()
    _write(ERR, f"WARNING [RANK:{rank}] {_caller()}: {message}")
    info(f"Warning raised by rank {rank} ! See error log for details\n")


def abort(message: str = "Error not described") -> None:
    """An error in ``eophis.err``, then the end of the whole MPI job (``MPI_Abort``), or
    :class:`EophisAbort` in a single process."""
    _start()
    _State.aborted = True
    rank = _rank_label()
    _write(ERR, f"ERROR [RANK:{rank}] {_caller()}: {message}")
    info(f"RUN ABORTED by rank {rank} see error log for details")
    flush()
    world = _world()
    print(f"eophis_hpc.compat: RUN ABORTED by rank {rank}: {message}", file=sys.stderr,
          flush=True)
    if world is not None and world[1] > 1:
        import time
        time.sleep(0.5)  # let mpiexec forward the message
        sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(1)
    raise EophisAbort(f"eophis abort: {message}")


def reset() -> None:
    """Forget the rank, the directory and kept messages (for tests and new runs)."""
    _State.rank = None
    _State.directory = None
    _State.buffer = []
    _State.started = False
    _State.aborted = False
    _State.finished = False
    if _State.at_exit:
        atexit.unregister(finish)
        _State.at_exit = False
