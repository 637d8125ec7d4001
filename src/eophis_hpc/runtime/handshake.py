"""The handshake of a coupled run: model ranks send their boxes, the workers check them against
their tunnel and answer with the exchanges and the layout. Any mismatch reaches every rank of
both sides as the same :class:`CouplingError`, so nothing hangs."""
from __future__ import annotations

import traceback

from .. import __version__
from ..grid import Grid
from ..transport.mpi import TAG_HANDSHAKE, CouplingError, Link
from .layout import Layout
from .schedule import Schedule

PROTOCOL = 1
_GRID_KEYS = ("nx", "ny", "east_west", "south", "north", "pivot")


def _first_error(errors) -> str | None:
    for rank, err in enumerate(errors):
        if err:
            return f"model rank {rank}: {err}"
    return None


def model_side(link: Link, grid: Grid, box, holes: bool, fields: dict | None):
    """Model ranks: returns ``(layout, schedule, options)`` agreed with the workers."""
    local_err = None
    try:
        box = tuple(int(v) for v in box)
        if len(box) != 4:
            raise ValueError(f"box must be (j0, j1, i0, i1), got {box!r}")
    except (TypeError, ValueError) as exc:
        local_err = f"connect: bad box {box!r}: {exc}"
    gathered = link.comm.gather((box, local_err), root=0)
    reply = None
    if link.is_root:
        boxes = [b for b, _ in gathered]
        error = _first_error([e for _, e in gathered])
        link.inter.send({"protocol": PROTOCOL, "version": __version__, "grid": grid.to_dict(),
                         "boxes": boxes, "holes": holes, "fields": fields, "error": error},
                        dest=0, tag=TAG_HANDSHAKE)
        reply = link.inter.recv(source=0, tag=TAG_HANDSHAKE)
    reply = link.comm.bcast(reply, root=0)
    if reply["error"]:
        raise CouplingError(reply["error"], collective=True)
    layout = Layout(grid, reply["boxes"], reply["n_workers"], reply["halo"],
                    holes=holes, tiles=reply["tiles"])
    schedule = Schedule.from_dict(reply["schedule"], grid.point)
    return layout, schedule, reply["options"]


def worker_side(link: Link, grid: Grid, halo: int, schedule: Schedule, n_tiles, options: dict):
    """Workers: receive the model's declaration, check it, answer; returns ``(layout, request)``."""
    reply = None
    if link.is_root:
        request = link.inter.recv(source=0, tag=TAG_HANDSHAKE)
        try:
            error = request["error"] or _check(request, grid, schedule, link.remote_size)
            layout = None
            if not error:
                tile_args = ({"n_tiles": n_tiles} if n_tiles is None or isinstance(n_tiles, int)
                             else {"tiles": [tuple(b) for b in n_tiles]})
                layout = Layout(grid, request["boxes"], link.size, halo, holes=request["holes"],
                                **tile_args)
        except (ValueError, TypeError) as exc:
            error = f"{exc}"
        except Exception:  # an unexpected bug must still reach every rank, not hang them
            error = "internal error while building the layout:\n" + traceback.format_exc()
        reply = {"error": error, "schedule": schedule.to_dict(), "options": options,
                 "boxes": request["boxes"], "n_workers": link.size, "halo": halo,
                 "tiles": None if error else [list(b) for b in layout.dst.boxes]}
        link.inter.send(reply, dest=0, tag=TAG_HANDSHAKE)
    reply = link.comm.bcast(reply, root=0)
    if reply["error"]:
        raise CouplingError(reply["error"], collective=True)
    holes = link.comm.bcast(request["holes"] if link.is_root else None, root=0)
    layout = Layout(grid, reply["boxes"], reply["n_workers"], reply["halo"], holes=holes,
                    tiles=reply["tiles"])
    return layout


def _check(request: dict, grid: Grid, schedule: Schedule, n_model: int) -> str | None:
    """The first mismatch between the model's declaration and the tunnel, or None."""
    if request["protocol"] != PROTOCOL:
        return (f"protocol mismatch: model side speaks {request['protocol']} (eophis_hpc "
                f"{request['version']}), workers speak {PROTOCOL} ({__version__})")
    theirs = request["grid"]
    for key in _GRID_KEYS:
        if key == "pivot" and grid.north != "fold":
            continue
        if theirs[key] != getattr(grid, key):
            return (f"grid mismatch: the model says {key}={theirs[key]!r}, the workers' tunnel "
                    f"says {key}={getattr(grid, key)!r}")
    if len(request["boxes"]) != n_model:
        return f"expected one box per model rank ({n_model}), got {len(request['boxes'])}"
    declared = request.get("fields") or {}
    for name, decl in declared.items():
        spec = schedule.fields.get(name)
        if spec is None:
            return (f"field {name!r} is declared by the model but not by the workers' tunnel "
                    f"(tunnel fields: {', '.join(sorted(schedule.fields))})")
        for key in ("levels", "dtype", "direction"):
            if key in decl and str(decl[key]) != str(getattr(spec, key)):
                return (f"field {name!r}: the model declares {key}={decl[key]!r}, the workers' "
                        f"tunnel {key}={getattr(spec, key)!r}")
    if declared:
        missing = sorted(set(schedule.fields) - set(declared))
        if missing:
            return f"field {missing[0]!r} is declared by the workers' tunnel but not by the model"
    return None
