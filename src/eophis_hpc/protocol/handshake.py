"""The handshake's messages and checks (pure): the model's declaration (request), its check
against the workers' tunnel, and the reply that carries the agreed schedule and layout. Any
mismatch becomes one error message that every rank of both sides raises, so nothing hangs.

On the wire the request and the Python client's reply are UTF-8 JSON (never pickles), so a
Fortran or C client can write the request; such a client (``"client"`` other than ``python``)
gets, instead of the reply, one int64 table per model rank (:mod:`.client_table`).
"""
from __future__ import annotations

import json
import traceback

import numpy as np

from ..version import __version__
from ..errors import CouplingError
from ..grid import Grid
from ..sizing import placement
from .layout import Layout
from .schedule import Schedule

PROTOCOL = 1
GRID_KEYS = ("nx", "ny", "east_west", "south", "north", "pivot")


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return str(obj)


def encode(obj) -> np.ndarray:
    """``obj`` as UTF-8 JSON bytes (a uint8 array: a message any language can write or read)."""
    return np.frombuffer(json.dumps(obj, default=_json_default).encode(), dtype=np.uint8)


def decode(data: np.ndarray, what: str = "handshake"):
    """The object of a JSON message; anything else is a CouplingError."""
    try:
        return json.loads(data.tobytes().decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CouplingError(f"{what}: the other side sent a message that is not eophis_hpc's "
                            f"JSON ({exc}); are both sides the same eophis_hpc version?") from None


def parse_box(box) -> tuple[tuple | None, str | None]:
    """``(box as 4 ints, None)`` or ``(None, error)`` for a model rank's box."""
    try:
        parsed = tuple(int(v) for v in box)
        if len(parsed) != 4:
            raise ValueError(f"box must be (j0, j1, i0, i1), got {box!r}")
        return parsed, None
    except (TypeError, ValueError) as exc:
        return None, f"connect: bad box {box!r}: {exc}"


def first_error(errors) -> str | None:
    """The first model rank's error, prefixed with its rank, or None."""
    for rank, err in enumerate(errors):
        if err:
            return f"model rank {rank}: {err}"
    return None


def request(grid: Grid, boxes: list, holes: bool, fields: dict | None, error: str | None,
            strategy: str | None = None, nodes: list | None = None) -> dict:
    """The model root's declaration of the model side (``strategy``: the one the model asks
    for, None to follow the workers; ``nodes``: each rank's node name)."""
    return {"protocol": PROTOCOL, "version": __version__, "client": "python",
            "grid": grid.to_dict(), "boxes": boxes, "holes": holes, "fields": fields,
            "error": error, "strategy": strategy, "nodes": nodes}


def reply(req: dict, grid: Grid, halo: int, schedule: Schedule, n_tiles, options: dict,
          n_workers: int, n_model: int,
          worker_nodes: list | None = None) -> tuple[dict, Layout | None]:
    """The workers' answer to ``req`` and the layout (None when there is an error). With the
    node names of both sides, tiles go to workers so that most bytes stay on a node."""
    layout = placed = None
    try:
        error = req["error"] or check(req, grid, schedule, n_model)
        if not error:
            tile_args = ({"n_tiles": n_tiles} if n_tiles is None or isinstance(n_tiles, int)
                         else {"tiles": [tuple(b) for b in n_tiles]})
            layout = Layout(grid, req["boxes"], n_workers, halo, holes=req["holes"], **tile_args)
            placed = placement.from_node_names(layout.plan(grid.point), req.get("nodes"),
                                               worker_nodes)
            if placed is not None and placed.moved:
                layout = Layout(grid, req["boxes"], n_workers, halo, holes=req["holes"],
                                tiles=layout.dst.boxes, tile_owner=placed.owner)
    except (ValueError, TypeError) as exc:
        error = f"{exc}"
    except Exception:  # an unexpected bug must still reach every rank, not hang them
        error = "internal error while building the layout:\n" + traceback.format_exc()
    answer = {"error": error, "schedule": schedule.to_dict(), "options": options,
              "boxes": req.get("boxes"), "holes": req.get("holes", False),
              "n_workers": n_workers, "halo": halo,
              "tiles": None if error else [list(b) for b in layout.dst.boxes],
              "tile_owner": None if error else layout.tile_owner.tolist(),
              "onnode_share": None if placed is None else [placed.before, placed.after]}
    return answer, (None if error else layout)


def agreed(grid: Grid, answer: dict) -> tuple[Layout, Schedule, dict]:
    """The layout, schedule and options of a reply without error (else its CouplingError)."""
    if answer["error"]:
        raise CouplingError(answer["error"], collective=True)
    layout = Layout(grid, answer["boxes"], answer["n_workers"], answer["halo"],
                    holes=answer["holes"], tiles=answer["tiles"],
                    tile_owner=answer.get("tile_owner"))
    return layout, Schedule.from_dict(answer["schedule"], grid.point), answer["options"]


def check(req: dict, grid: Grid, schedule: Schedule, n_model: int) -> str | None:
    """The first mismatch between the model's declaration and the tunnel, or None."""
    if req.get("protocol") != PROTOCOL:
        return (f"protocol mismatch: model side speaks {req.get('protocol')} (eophis_hpc "
                f"{req.get('version')}), workers speak {PROTOCOL} ({__version__})")
    theirs = req["grid"]
    for key in GRID_KEYS:
        if key == "pivot" and grid.north != "fold":
            continue
        if theirs[key] != getattr(grid, key):
            return (f"grid mismatch: the model says {key}={theirs[key]!r}, the workers' tunnel "
                    f"says {key}={getattr(grid, key)!r}")
    if len(req["boxes"]) != n_model:
        return f"expected one box per model rank ({n_model}), got {len(req['boxes'])}"
    declared = req.get("fields") or {}
    for name, decl in declared.items():
        spec = schedule.fields.get(name)
        if spec is None:
            return (f"field {name!r} is declared by the model but not by the workers' tunnel "
                    f"(tunnel fields: {', '.join(sorted(schedule.fields))})")
        for key in ("levels", "dtype", "direction", "lag"):
            if key in decl and str(decl[key]) != str(getattr(spec, key)):
                return (f"field {name!r}: the model declares {key}={decl[key]!r}, the workers' "
                        f"tunnel {key}={getattr(spec, key)!r}")
    if declared:
        missing = sorted(set(schedule.fields) - set(declared))
        if missing:
            return f"field {missing[0]!r} is declared by the workers' tunnel but not by the model"
    return None
