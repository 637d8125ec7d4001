"""Joining the coupled job: the model and worker ranks of a communicator (``COMM_WORLD`` by
default, or the caller's) find each other, each side gets its own communicator and the
intercommunicator to the other side.

The join is point to point, bounded by the timeout and tolerant of ranks that never come: every
rank sends its role code to the communicator's rank 0, which answers with the table of roles, so
a wait that runs out names the ranks that never joined. Starting MPI itself can hang when another
program of the job ended before starting MPI; a watchdog bounds that wait too.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

from ...errors import CouplingError, mark_coupled, world_rank_from_launcher
from ...protocol.wire import ROLES, TAG_HANDSHAKE, TAG_JOIN
from .waits import arrive, mpi, wait_all

NEVER_JOINED = ("these ranks never reached connect()/Tunnel(): their program failed or hangs "
                "before coupling (see its output above), or they are not part of this "
                "coupling (pass world=comm holding only the model and worker ranks)")


def start_mpi(timeout: float | None):
    """``mpi4py.MPI``, initialising MPI under a watchdog: if another program of the job ended
    before it started MPI, MPI_Init never returns; after ``timeout`` seconds the watchdog says so
    and ends this process, so the job ends instead of hanging."""
    if "mpi4py.MPI" in sys.modules or timeout is None:
        return mpi()
    done = threading.Event()

    def watch():
        if not done.wait(timeout):
            rank = world_rank_from_launcher()
            print(f"eophis_hpc: world rank {rank}: MPI did not start within {timeout:g} s: another "
                  "program of this job ended before starting MPI (see its output above); ending "
                  "this rank so the job does not hang", file=sys.stderr, flush=True)
            os._exit(1)

    threading.Thread(target=watch, name="eophis_hpc-mpi-init-watchdog", daemon=True).start()
    try:
        return mpi()
    finally:
        done.set()


def exchange_roles(world, code: int, timeout: float | None) -> list[int]:
    """Every rank's role code (the table made by ``world``'s rank 0), waiting at most
    ``timeout`` seconds for the ranks that have not joined yet."""
    n, me = world.size, world.rank
    codes = np.full(n, -1, dtype=np.int32)
    codes[me] = code
    what = f"world rank {me}: joining the coupled job"
    if me == 0:
        reqs = [world.Irecv(codes[r:r + 1], source=r, tag=TAG_JOIN) for r in range(1, n)]
        wait_all(reqs, timeout, what, list(range(1, n)), "world rank", NEVER_JOINED)
        sends = [world.Isend(codes, dest=r, tag=TAG_JOIN) for r in range(1, n)]
        wait_all(sends, timeout, what, list(range(1, n)), "world rank", NEVER_JOINED)
    else:
        mine = np.array([code], dtype=np.int32)
        wait_all([world.Isend(mine, dest=0, tag=TAG_JOIN)], timeout, what, [0], "world rank",
                 NEVER_JOINED)
        wait_all([world.Irecv(codes, source=0, tag=TAG_JOIN)], timeout, what, [0], "world rank",
                 NEVER_JOINED)
    return codes.tolist()


class Link:
    """This rank's side of the MPMD job: its own communicator and the intercommunicator to the
    other side (built by splitting ``world`` by role, so any launch order works). ``world`` is
    the communicator holding exactly the model and worker ranks (default ``COMM_WORLD``)."""

    def __init__(self, role: str, world=None, timeout: float | None = None):
        if role not in ROLES:
            raise ValueError(f"Link: role must be one of {ROLES}, got {role!r}")
        MPI = start_mpi(timeout)
        self.role, self.timeout = role, timeout
        self.world = MPI.COMM_WORLD if world is None else world
        if not isinstance(self.world, MPI.Intracomm) or self.world == MPI.COMM_NULL:
            raise TypeError(f"world must be an mpi4py intracommunicator holding the model and "
                            f"worker ranks, got {world!r}")
        roles = [ROLES[c] if 0 <= c < len(ROLES) else "?"
                 for c in exchange_roles(self.world, ROLES.index(role), timeout)]
        other = ROLES[1 - ROLES.index(role)]
        if other not in roles:
            # every rank sees the same list, so every rank raises: no hang
            raise CouplingError(
                f"no {other} rank in this MPI job ({len(roles)} ranks, all '{role}'): launch both "
                "sides in one job, e.g. mpiexec -n P python ocean.py : -n Q python closure.py "
                "(or eophis-hpc run)", collective=True)
        self.comm = self.world.Split(ROLES.index(role), self.world.rank)
        remote_leader = roles.index(other)
        self.inter = self.comm.Create_intercomm(0, self.world, remote_leader, TAG_HANDSHAKE)
        self.rank, self.size = self.comm.rank, self.comm.size
        self.remote_size = self.inter.remote_size
        self.data, self.peer_base = self.inter, 0
        mark_coupled()

    def merge(self) -> None:
        """Move the data messages to one intracommunicator of both sides (collective over both;
        model ranks first, then workers). Some MPI builds (the ``mpich`` 5 wheel) move large
        messages more slowly over an intercommunicator (docs/performance.md); the control
        notes and the handshake stay on ``inter``. Only between eophis_hpc's own clients: a
        Fortran or C client keeps ``inter`` for everything."""
        if self.data is self.inter:
            arrive(self.inter, self.timeout, f"{self.role} rank {self.rank}: merging the "
                   "communicators of the two sides")
            self.data = self.inter.Merge(high=self.role == ROLES[1])
            self.peer_base = self.size if self.role == ROLES[0] else 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def abort(self, code: int = 1) -> None:
        """End the whole job (every program of ``world``)."""
        self.world.Abort(code)

    def close(self) -> None:
        """Free the communicators (collective over both sides)."""
        if self.data is not None and self.data is not self.inter:
            self.data.Free()
        self.data = None
        if self.inter is not None:
            self.inter.Free()
            self.comm.Free()
            self.inter = self.comm = None
