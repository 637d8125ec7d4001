"""What is exchanged and when (pure): :class:`Exchange` declarations and the field table that both
sides of a coupled run agree on at the handshake."""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import numpy as np

from ..grid import POINTS



@dataclass
class Exchange:
    """Fields sent by the model (``inputs``) and returned by the workers (``outputs``).

    Timing: ``every`` N steps, or ``freq`` seconds given the tunnel's model time step ``dt``, or
    ``static=True`` (once, before the first step). ``levels`` is the number of vertical levels of
    every field of the exchange. ``signs`` gives -1 for vector components (the north fold flips
    them), ``point`` the grid point type (T, U, V, F) and ``dtype`` the dtype the model sends.
    ``stack`` hands the worker's model the exchange's inputs as ONE batch
    ``(tiles, fields * levels, H, W)`` (fields in ``inputs`` order): ``True`` names that keyword
    after the inputs joined by ``_`` (``u_v``), a string names it; None follows the tunnel's
    ``stack`` option. Only the workers read it.

    ``lag`` (OASIS' LAG, counted in occurrences of the exchange): ``get`` at occurrence ``n``
    returns the outputs computed from the inputs put at occurrence ``n - lag``, so the model
    keeps stepping while the workers infer; the first ``lag`` occurrences return ``initial``
    (or the values of a coupling restart). Static exchanges and exchanges without outputs take
    no lag.
    """

    inputs: Sequence[str] = ()
    outputs: Sequence[str] = ()
    levels: int = 1
    every: int | None = None
    freq: float | None = None
    static: bool = False
    signs: dict = field(default_factory=dict)
    point: str | None = None
    dtype: str = "float64"
    stack: bool | str | None = None
    lag: int = 0
    initial: float = 0.0

    def __post_init__(self):
        self.inputs = _names(self.inputs, "inputs")
        self.outputs = _names(self.outputs, "outputs")
        if not self.inputs and not self.outputs:
            raise ValueError("Exchange: no inputs and no outputs")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 1:
            raise ValueError(f"Exchange{self.inputs}: levels must be a positive integer, got "
                             f"{self.levels!r}")
        timings = sum(x is not None for x in (self.every, self.freq)) + bool(self.static)
        if timings > 1:
            raise ValueError(f"Exchange{self.inputs}: give only one of every=, freq=, static=True")
        if timings == 0:
            self.every = 1
        if self.every is not None and (isinstance(self.every, bool) or not isinstance(self.every, int)
                                       or self.every < 1):
            raise ValueError(f"Exchange{self.inputs}: every must be a positive integer, got "
                             f"{self.every!r}")
        if self.freq is not None and not self.freq > 0:
            raise ValueError(f"Exchange{self.inputs}: freq must be a positive number of seconds, "
                             f"got {self.freq!r}")
        if self.point is not None and self.point not in POINTS:
            raise ValueError(f"Exchange{self.inputs}: point={self.point!r} is not one of {POINTS}")
        if str(np.dtype(self.dtype)) not in ("float32", "float64"):
            raise ValueError(f"Exchange{self.inputs}: dtype must be float32 or float64, got "
                             f"{self.dtype!r}")
        self.dtype = str(np.dtype(self.dtype))
        unknown = set(self.signs) - set(self.inputs) - set(self.outputs)
        if unknown:
            raise ValueError(f"Exchange{self.inputs}: signs given for unknown fields {sorted(unknown)}")
        for name, sgn in self.signs.items():
            if sgn not in (1, -1, 1.0, -1.0):
                raise ValueError(f"Exchange: signs[{name!r}] must be +1 or -1, got {sgn!r}")
        if not (self.stack is None or isinstance(self.stack, bool)
                or (isinstance(self.stack, str) and self.stack.isidentifier())):
            raise ValueError(f"Exchange{self.inputs}: stack must be True, False, None or a "
                             f"keyword name, got {self.stack!r}")
        if isinstance(self.lag, bool) or not isinstance(self.lag, int) or self.lag < 0:
            raise ValueError(f"Exchange{self.inputs}: lag must be a whole number of occurrences "
                             f">= 0, got {self.lag!r}")
        if self.lag and self.static:
            raise ValueError(f"Exchange{self.inputs}: a static exchange happens once, before "
                             f"the first step: it cannot have lag={self.lag}")
        if self.lag and not self.outputs:
            raise ValueError(f"Exchange{self.inputs}: lag={self.lag} delays outputs, and this "
                             "exchange has none")
        try:
            self.initial = float(self.initial)
        except (TypeError, ValueError):
            raise ValueError(f"Exchange{self.inputs}: initial must be a number (the value of "
                             f"the first lag outputs), got {self.initial!r}") from None
        if not np.isfinite(self.initial):
            raise ValueError(f"Exchange{self.inputs}: initial must be finite, got {self.initial!r}")

    def stack_name(self, default: bool | str = False) -> str | None:
        """The keyword of the stacked inputs, or None when they are handed one by one
        (``default``: the tunnel's ``stack`` option, used when ``stack`` is None)."""
        stack = default if self.stack is None else self.stack
        if not stack or not self.inputs:
            return None
        return stack if isinstance(stack, str) else "_".join(self.inputs)

    def to_dict(self) -> dict:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs), "levels": self.levels,
                "every": self.every, "freq": self.freq, "static": self.static,
                "signs": {k: float(v) for k, v in self.signs.items()}, "point": self.point,
                "dtype": self.dtype, "stack": self.stack, "lag": self.lag,
                "initial": self.initial}

    @classmethod
    def from_dict(cls, data: dict) -> "Exchange":
        return cls(**data)


def _names(names, where: str) -> tuple:
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    for n in names:
        if not isinstance(n, str) or not n.isidentifier():
            raise ValueError(f"Exchange: {where} must be field names (Python identifiers), got {n!r}")
    return names


@dataclass(frozen=True)
class FieldSpec:
    """One field of the table: global index (its message tag), exchange, direction
    (``in``: model -> workers, ``out``: workers -> model), levels, wire dtype, sign, point."""

    index: int
    name: str
    exchange: int
    direction: str
    levels: int
    dtype: str
    sign: float
    point: str
    lag: int = 0


class Schedule:
    """The exchanges of a tunnel, their fields, and which are due at a step."""

    def __init__(self, exchanges: Sequence[Exchange], dt: float | None = None,
                 default_point: str = "T"):
        self.exchanges = [e if isinstance(e, Exchange) else Exchange.from_dict(e) for e in exchanges]
        if not self.exchanges:
            raise ValueError("Tunnel: no exchanges")
        self.dt = None if dt is None else Fraction(str(dt))
        self.fields: dict[str, FieldSpec] = {}
        for e_idx, ex in enumerate(self.exchanges):
            if ex.freq is not None and self.dt is None:
                raise ValueError(f"Exchange{ex.inputs}: freq={ex.freq} s needs the model time step "
                                 "(Tunnel(dt=...))")
            for direction, names in (("in", ex.inputs), ("out", ex.outputs)):
                for name in names:
                    if name in self.fields:
                        raise ValueError(f"Tunnel: field {name!r} is declared twice")
                    self.fields[name] = FieldSpec(len(self.fields), name, e_idx, direction,
                                                  ex.levels, ex.dtype, float(ex.signs.get(name, 1.0)),
                                                  ex.point or default_point, ex.lag)

    def due(self, e_idx: int, step: int) -> bool:
        """Whether exchange ``e_idx`` runs at ``step`` (static exchanges: always, once)."""
        if self.exchanges[e_idx].static:
            return True
        return step % self.every_steps(e_idx) == 0

    def every_steps(self, e_idx: int) -> int:
        """Steps between occurrences of a timed exchange. ``freq`` seconds with time step ``dt``:
        ``step * dt`` is a multiple of ``freq`` exactly when ``step`` is a multiple of ``q``,
        where ``dt / freq = p / q`` in lowest terms (so clients need only an integer)."""
        ex = self.exchanges[e_idx]
        if ex.static:
            raise ValueError(f"Exchange{ex.inputs}: a static exchange has no period")
        if ex.every is not None:
            return ex.every
        return (self.dt / Fraction(str(ex.freq))).denominator

    def field(self, name: str, where: str) -> FieldSpec:
        spec = self.fields.get(name)
        if spec is None:
            raise KeyError(f"{where}: unknown field {name!r}; the tunnel declares "
                           f"{', '.join(sorted(self.fields))}")
        return spec

    def inputs_of(self, e_idx: int) -> list[FieldSpec]:
        return [self.fields[n] for n in self.exchanges[e_idx].inputs]

    def outputs_of(self, e_idx: int) -> list[FieldSpec]:
        return [self.fields[n] for n in self.exchanges[e_idx].outputs]

    def lag(self, e_idx: int) -> int:
        """Occurrences between the inputs put and the outputs got (0: same occurrence)."""
        return self.exchanges[e_idx].lag

    def points(self) -> list[str]:
        return sorted({f.point for f in self.fields.values()})

    def to_dict(self) -> dict:
        return {"exchanges": [e.to_dict() for e in self.exchanges],
                "dt": None if self.dt is None else str(self.dt)}

    @classmethod
    def from_dict(cls, data: dict, default_point: str = "T") -> "Schedule":
        return cls([Exchange.from_dict(e) for e in data["exchanges"]], data["dt"], default_point)
