"""The model side of a lagged exchange (``Exchange(lag=L)``): outputs in flight, in a ring.

The workers know nothing of the lag: they answer every occurrence as soon as its inputs are in.
The model rank posts the receives of occurrence ``n``'s outputs when the occurrence begins, into
slot ``n mod (L + 1)`` of a ring of ``L + 1`` boxes per output, and ``get`` at occurrence ``n``
completes the receives of occurrence ``n - L`` and copies that slot into the caller's array.
Occurrences ``-L .. -1`` are the ring's initial content: ``initial`` everywhere, or a coupling
restart (:mod:`eophis_hpc.protocol.restart`). Buffers and persistent requests are made once;
a step allocates nothing.
"""
from __future__ import annotations

import numpy as np

from ..protocol.restart import NO_STEP, Record


class LaggedOutputs:
    """The ring of one lagged exchange on one model rank.

    ``specs``: the exchange's output fields; ``receiver(spec)`` makes one Receiver for an
    output (called ``L + 1`` times per output: each slot has its own requests and buffers);
    ``box_shape`` ``(nj, ni)``."""

    def __init__(self, lag: int, initial: float, specs: list, receiver, box_shape):
        self.lag, self.size = lag, lag + 1
        self.specs = list(specs)
        nj, ni = box_shape
        self.slots = {s.name: np.full((self.size, 1, s.levels, nj, ni), initial, dtype=s.dtype)
                      for s in self.specs}
        self.receivers = {s.name: [receiver(s) for _ in range(self.size)] for s in self.specs}
        for s in self.specs:
            for k, rcv in enumerate(self.receivers[s.name]):
                rcv.bind(self.slots[s.name][k])
        self.posted = {s.name: [False] * self.size for s in self.specs}
        self.steps = np.full(self.size, NO_STEP, dtype=np.int64)  # step that fills each slot
        self.count = 0  # occurrences begun in this run
        self.wanted = set()  # outputs not yet got at the current occurrence

    def slot_of(self, occurrence: int) -> int:
        return occurrence % self.size

    # ------------------------------------------------------------------ occurrences
    def begin(self, step: int) -> None:
        """Occurrence ``count`` starts at ``step``: its outputs' receives are posted (the
        slot's previous content, never got, is received and dropped first)."""
        slot = self.slot_of(self.count)
        for s in self.specs:
            self._complete(s, slot)
            target = self.slots[s.name][slot]
            self.receivers[s.name][slot].post(target)
            self.posted[s.name][slot] = True
        self.steps[slot] = step
        self.count += 1
        self.wanted = {s.name for s in self.specs}

    def _complete(self, spec, slot: int) -> None:
        if self.posted[spec.name][slot]:
            self.receivers[spec.name][slot].wait(self.slots[spec.name][slot])
            self.posted[spec.name][slot] = False

    def get(self, spec, view, offset) -> int:
        """Copy output ``spec`` of occurrence ``current - lag`` into ``view`` (4-D, the box at
        ``offset``); returns the step whose inputs produced it (-1: initial value)."""
        slot = self.slot_of(self.count - 1 - self.lag)
        self._complete(spec, slot)
        nj, ni = self.slots[spec.name].shape[-2:]
        oj, oi = offset
        view[0, :spec.levels, oj:oj + nj, oi:oi + ni] = self.slots[spec.name][slot, 0]
        self.wanted.discard(spec.name)
        return int(self.steps[slot])

    def bytes(self, name: str) -> int:
        return self.receivers[name][0].bytes

    # ------------------------------------------------------------------ restarts
    def load(self, records: dict) -> None:
        """Start from a restart: occurrences ``-L .. -1`` take the records' values, oldest
        first (nothing is posted yet)."""
        for s in self.specs:
            rec = records[s.name]
            for k in range(self.lag):
                slot = self.slot_of(k - self.lag)
                self.slots[s.name][slot, 0] = rec.values[k]
                self.steps[slot] = rec.steps[k]

    def in_flight(self) -> list[Record]:
        """What ``get`` would return at the next ``L`` occurrences (every receive completed),
        one record per output."""
        self.drain()
        occurrences = [self.slot_of(m) for m in range(self.count - self.lag, self.count)]
        return [Record(s.name, np.ascontiguousarray(self.slots[s.name][occurrences, 0]),
                       self.steps[occurrences].copy()) for s in self.specs]

    def drain(self) -> None:
        """Complete every posted receive (the end of the run)."""
        for s in self.specs:
            for slot in range(self.size):
                self._complete(s, slot)

    def close(self) -> None:
        for rcvs in self.receivers.values():
            for rcv in rcvs:
                rcv.close()
