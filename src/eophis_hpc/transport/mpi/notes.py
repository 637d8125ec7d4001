"""The control notes ``(exchange, step)`` from the model root to the workers, in two hops: the
root sends each note to the group leaders only, each leader passes it on to its group
(:func:`eophis_hpc.protocol.wire.note_group`), so the root's cost grows with the square root of
the workers, not with their number. Every wait is bounded and names the rank it waits for.
"""
from __future__ import annotations

import os

import numpy as np

from ...protocol.wire import NOTE_GROUP_ENV, STOP_NOTE, TAG_CONTROL, note_group
from ...errors import CouplingError
from .waits import wait_all

MISMATCH_HINT = (f"a rank stopped or died, or {NOTE_GROUP_ENV} differs between the two sides?); "
                 "set EOPHIS_HPC_TIMEOUT or timeout= to wait longer")


def group_of(n_workers: int) -> int:
    """The note group size both sides use (``NOTE_GROUP_ENV`` overrides the rule)."""
    return note_group(n_workers, os.environ.get(NOTE_GROUP_ENV))


def send_to_workers(link, note, group: int) -> None:
    """The model root: send ``note`` (two int64) to every group leader."""
    note = np.asarray(note, dtype=np.int64)
    for w in range(0, link.remote_size, group):
        link.inter.Send(note, dest=w, tag=TAG_CONTROL)


class NoteInbox:
    """A worker's side: its next note, from the model root (a leader) or from its leader, passed
    on at once to the rest of its group (a leader). A leader receives the next note ahead and
    passes it on from :meth:`poll` as well, which its engine calls while it serves an exchange
    (before the model runs, after the sends), so its group does not wait for it to finish."""

    def __init__(self, link, timeout: float | None):
        self.link, self.timeout = link, timeout
        n, rank = link.size, link.rank
        group = group_of(n)
        self.leader = rank - rank % group
        self.members = list(range(rank + 1, min(self.leader + group, n))) \
            if rank == self.leader else []
        self.note = np.empty(2, dtype=np.int64)
        self.passed = np.empty(2, dtype=np.int64)   # the note being passed on
        self.passing: list = []
        self.ahead = None        # a leader's receive of its next note, posted early
        self.ahead_passed = False

    def describe(self) -> str:
        """Where this worker's notes come from and whom it passes them on to."""
        if self.link.rank != self.leader:
            return f"control notes from worker {self.leader} (its note group leader)"
        return "control notes from the model root" + (
            f", passed on to workers {self.members}" if self.members else "")

    def next(self) -> tuple[int, int]:
        """Wait for the next note (bounded), pass it on, return it."""
        if self.ahead is not None:  # a leader's note, received (and maybe passed on) early
            req, self.ahead = self.ahead, None
            who, label = [0], "model rank"
        elif self.link.rank == self.leader:
            req = self.link.inter.Irecv(self.note, source=0, tag=TAG_CONTROL)
            who, label = [0], "model rank"
        else:
            req = self.link.comm.Irecv(self.note, source=self.leader, tag=TAG_CONTROL)
            who, label = [self.leader], "worker (note group leader)"
        wait_all([req], self.timeout, f"worker {self.link.rank}: waiting for the model's next "
                 "exchange", who, label, hint=MISMATCH_HINT)
        if self.link.rank != self.leader and self.link.inter.Iprobe(source=0, tag=TAG_CONTROL):
            raise CouplingError(f"worker {self.link.rank}: the model root sent it a note "
                                f"directly, but it expects its notes from worker {self.leader}: "
                                f"{NOTE_GROUP_ENV} must be the same on both sides")
        if self.members:
            if not self.ahead_passed:
                self._pass_on()
            self.ahead_passed = False
            note = (int(self.note[0]), int(self.note[1]))
            if note != STOP_NOTE:  # the stop is the last note: nothing to receive ahead
                self.ahead = self.link.inter.Irecv(self.note, source=0, tag=TAG_CONTROL)
            return note
        return int(self.note[0]), int(self.note[1])

    def poll(self) -> None:
        """A leader: pass the next note on now if it has arrived (one test, no wait)."""
        if self.ahead is not None and not self.ahead_passed and self.ahead.Test():
            self._pass_on()
            self.ahead_passed = True

    def _pass_on(self) -> None:
        self.flush()
        self.passed[:] = self.note
        self.passing = [self.link.comm.Isend(self.passed, dest=m, tag=TAG_CONTROL)
                        for m in self.members]

    def close(self) -> None:
        """The notes passed on have left; a note received ahead that never came is cancelled."""
        if self.ahead is not None:
            self.ahead.Cancel()
            self.ahead.Wait()
            self.ahead = None
        self.flush()

    def flush(self) -> None:
        """The notes passed on have left (bounded: a member that ended is named)."""
        if self.passing:
            wait_all(self.passing, self.timeout, f"worker {self.link.rank}: passing a note on",
                     self.members, "worker")
        self.passing = []
