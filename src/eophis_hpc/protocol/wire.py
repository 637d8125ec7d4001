"""Constants and message shapes of the coupling protocol, shared by every client (Python,
Fortran, C) and engine: message tags, role codes of the join, step sentinels of the control
note, and :class:`Route` (what moves between a rank and one peer for one field)."""
from __future__ import annotations

import numpy as np

TAG_HANDSHAKE = 7001   # handshake request / reply / foreign-client tables
TAG_CONTROL = 7002     # the model root's (exchange, step) note to the workers (see note_group)
TAG_JOIN = 7003        # role codes to the join's root and the role table back
TAG_DATA = 8000        # + field index: the field's data messages

# Role codes of the join, as int32 (a Fortran or C client sends the same integers).
ROLES = ("model", "worker")
ROLE_MODEL, ROLE_WORKER = 0, 1

# Control notes are int64 pairs (exchange, step); the step of a static exchange and the note
# that ends the run are these sentinels.
STEP_STATIC = -2
STOP = -1
STOP_NOTE = (STOP, STOP)

# The notes travel in two hops past a few workers: the model root sends each note to the group
# leaders (workers 0, G, 2G, ...), and each leader passes it on to the G - 1 workers after it
# over the workers' communicator. With 1,000 workers the root sends 32 notes instead of 1,000.
NOTE_GROUP_ENV = "EOPHIS_HPC_NOTE_GROUP"   # G itself (tests; both sides must see the same)
NOTE_DIRECT_UP_TO = 16                     # up to this many workers the root sends to each


def note_group(n_workers: int, override: str | None = None) -> int:
    """G, the workers per note group: 1 (the root sends to every worker) up to
    ``NOTE_DIRECT_UP_TO`` workers, else ceil(sqrt(n_workers)); ``override`` (the value of
    ``NOTE_GROUP_ENV``) a positive integer instead. A Fortran or C client computes the same."""
    if override:
        text = override.strip()  # digits only, as the Fortran client reads it
        g = int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0
        if g < 1:
            raise ValueError(f"{NOTE_GROUP_ENV}={override!r}: expected a positive integer")
        return g
    if n_workers <= NOTE_DIRECT_UP_TO:
        return 1
    g = int(n_workers ** 0.5)
    return g if g * g >= n_workers else g + 1


class Route:
    """What moves between this rank and one peer for one field: ``parts`` is a list of
    ``(index, runs)``, ``index`` selecting the 3-D array ``target[index]`` the runs refer to
    (a tile of a batch, or 0 for a model box). The message is the parts' runs in order."""

    def __init__(self, peer: int, parts: list):
        self.peer = peer
        self.parts = [(int(k), np.ascontiguousarray(runs, dtype=np.int64)) for k, runs in parts]
        self.cells = int(sum(np.sum(r[:, 2] * r[:, 3]) for _, r in self.parts))

    def shifted(self, oj: int, oi: int) -> "Route":
        """The same route for an array where the runs' origin sits at ``(oj, oi)``."""
        if oj == 0 and oi == 0:
            return self
        parts = []
        for k, runs in self.parts:
            runs = runs.copy()
            runs[:, 0] += oj
            runs[:, 1] += oi
            parts.append((k, runs))
        return Route(self.peer, parts)
