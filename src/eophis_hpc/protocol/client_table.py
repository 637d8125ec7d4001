"""A model rank's part of the coupling as one flat int64 array (pure), for clients that do not
speak Python: the Fortran/C client receives it at the end of its definition phase and builds its
MPI datatypes from it. ``decode`` reads it back (the tests, and the format's documentation).

Layout (all integers; grid indices 0-based, relative to the rank's box origin)::

    [0]  TABLE_VERSION
    [1]  L: length of the error message; when L > 0 the message follows as L character codes
         and nothing else does
    [2]  number of workers      [3] number of exchanges      [4] number of fields
    [5:9] the rank's box (j0, j1, i0, i1)
    per exchange (3 values): every (steps between occurrences; 0 for a static exchange),
         lag (occurrences between the inputs put and the outputs got, OASIS' LAG; 0: none),
         initial (what get returns at the first ``lag`` occurrences: the int64 whose 64 bits
         are the IEEE float64, e.g. Fortran ``transfer(t(k), 1.0_real64)``)
    per field, in the client's declaration order:
         tag, exchange, direction (0: model -> workers, 1: workers -> model), levels,
         itemsize (4 or 8), route set
    number of route sets, then per set:
         number of routes, then per route: peer (worker rank), number of runs, runs as
         (j, i, nj, ni) quadruples (the message is the runs in this order, each run all levels,
         level-major then j then i); then the number of fill rects and the rects (j, i, nj, ni)
         that get 0 before a receive
"""
from __future__ import annotations

import numpy as np

from .wire import TAG_DATA
from .layout import Layout
from .schedule import Schedule

TABLE_VERSION = 2  # 2: each exchange also carries its lag and initial value


def error_table(message: str) -> np.ndarray:
    """The table that carries only an error message."""
    codes = [ord(c) if ord(c) < 128 else ord("?") for c in message]
    return np.array([TABLE_VERSION, len(codes)] + codes, dtype=np.int64)


def build(layout: Layout, schedule: Schedule, rank: int, field_order: list[str]) -> np.ndarray:
    """The table of model rank ``rank`` for fields declared in ``field_order``."""
    box = layout.src.boxes[rank]
    out = [TABLE_VERSION, 0, layout.n_workers, len(schedule.exchanges), len(field_order),
           box.j0, box.j1, box.i0, box.i1]
    for e, ex in enumerate(schedule.exchanges):
        out += [0 if ex.static else schedule.every_steps(e), ex.lag, float_bits(ex.initial)]
    sets: dict[tuple[str, str], int] = {}
    for name in field_order:
        spec = schedule.fields[name]
        key = (spec.point, spec.direction)
        route_set = sets.setdefault(key, len(sets))
        out += [TAG_DATA + spec.index, spec.exchange, 0 if spec.direction == "in" else 1,
                spec.levels, np.dtype(spec.dtype).itemsize, route_set]
    out.append(len(sets))
    for (point, direction), _ in sorted(sets.items(), key=lambda kv: kv[1]):
        if direction == "in":
            routes, fills = layout.model_send_routes(point, rank), np.zeros((0, 4), np.int64)
        else:
            routes = layout.model_recv_routes(point, rank)
            fills = layout.model_fills(point, rank)[0]
        out.append(len(routes))
        for route in routes:
            runs = np.concatenate([r[:, :4] for _, r in route.parts]) if route.parts else \
                np.zeros((0, 4), np.int64)
            out += [route.peer, len(runs)] + runs.reshape(-1).tolist()
        fills = np.asarray(fills, dtype=np.int64).reshape(-1, 4)
        out += [len(fills)] + fills.reshape(-1).tolist()
    return np.array(out, dtype=np.int64)


def decode(table) -> dict:
    """The table as a dict (``error`` set, or the rest); the inverse of :func:`build`."""
    t = [int(v) for v in np.asarray(table, dtype=np.int64)]
    if len(t) < 2 or t[0] != TABLE_VERSION:
        raise ValueError(f"client table: version {t[:1]} is not {TABLE_VERSION}")
    if t[1]:
        return {"error": "".join(chr(c) for c in t[2:2 + t[1]])}
    n_workers, n_ex, n_fields = t[2:5]
    pos = 9
    per_exchange = [t[pos + 3 * e:pos + 3 * e + 3] for e in range(n_ex)]
    pos += 3 * n_ex
    fields = []
    for _ in range(n_fields):
        tag, ex, direction, levels, itemsize, route_set = t[pos:pos + 6]
        fields.append({"tag": tag, "exchange": ex, "direction": "in" if direction == 0 else "out",
                       "levels": levels, "itemsize": itemsize, "route_set": route_set})
        pos += 6
    sets = []
    n_sets = t[pos]
    pos += 1
    for _ in range(n_sets):
        routes = []
        n_routes = t[pos]
        pos += 1
        for _ in range(n_routes):
            peer, n_runs = t[pos:pos + 2]
            pos += 2
            runs = np.array(t[pos:pos + 4 * n_runs], dtype=np.int64).reshape(n_runs, 4)
            pos += 4 * n_runs
            routes.append((peer, runs))
        n_fill = t[pos]
        pos += 1
        fills = np.array(t[pos:pos + 4 * n_fill], dtype=np.int64).reshape(n_fill, 4)
        pos += 4 * n_fill
        sets.append({"routes": routes, "fills": fills})
    if pos != len(t):
        raise ValueError(f"client table: {len(t) - pos} values left over")
    return {"error": None, "n_workers": n_workers, "box": tuple(t[5:9]),
            "every": [x[0] for x in per_exchange], "lag": [x[1] for x in per_exchange],
            "initial": [bits_float(x[2]) for x in per_exchange], "fields": fields,
            "route_sets": sets}


def float_bits(value: float) -> int:
    """The int64 holding the 64 bits of ``value`` as an IEEE float64."""
    return int(np.array(value, dtype=np.float64).view(np.int64))


def bits_float(bits: int) -> float:
    return float(np.array(bits, dtype=np.int64).view(np.float64))
