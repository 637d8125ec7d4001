"""The handshake of a coupled run: model ranks send their boxes, the workers check them against
their tunnel and answer with the exchanges and the layout. Any mismatch reaches every rank of
both sides as the same :class:`CouplingError`, so nothing hangs.

On the wire the request and the Python client's reply are UTF-8 JSON (never pickles), so a
Fortran or C client can write the request; such a client (``"client"`` other than ``python``)
gets, instead of the reply, one int64 table per model rank (:mod:`.client_table`).
"""
from __future__ import annotations

import json
import traceback

import numpy as np

from .. import __version__
from ..grid import Grid
from ..errors import CouplingError
from ..transport.mpi import TAG_HANDSHAKE, Link, mpi
from . import client_table
from .layout import Layout
from .schedule import Schedule

PROTOCOL = 1
_GRID_KEYS = ("nx", "ny", "east_west", "south", "north", "pivot")


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return str(obj)


def send_json(comm, obj, dest: int, tag: int = TAG_HANDSHAKE) -> None:
    """Send ``obj`` as UTF-8 JSON bytes (a message any language can write or read)."""
    data = json.dumps(obj, default=_json_default).encode()
    comm.Send([np.frombuffer(data, dtype=np.uint8), len(data), mpi().BYTE], dest=dest, tag=tag)


def recv_json(comm, source: int, tag: int = TAG_HANDSHAKE, what: str = "handshake"):
    """Receive a JSON message of any length; a message that is not JSON is a CouplingError."""
    MPI = mpi()
    status = MPI.Status()
    comm.Probe(source=source, tag=tag, status=status)
    buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
    comm.Recv([buf, MPI.BYTE], source=source, tag=tag)
    try:
        return json.loads(buf.tobytes().decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CouplingError(f"{what}: the other side sent a message that is not eophis_hpc's "
                            f"JSON ({exc}); are both sides the same eophis_hpc version?") from None


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
        send_json(link.inter, {"protocol": PROTOCOL, "version": __version__, "client": "python",
                               "grid": grid.to_dict(), "boxes": boxes, "holes": holes,
                               "fields": fields, "error": error}, dest=0)
        reply = recv_json(link.inter, source=0)
    reply = link.comm.bcast(reply, root=0)
    if reply["error"]:
        raise CouplingError(reply["error"], collective=True)
    layout = Layout(grid, reply["boxes"], reply["n_workers"], reply["halo"],
                    holes=holes, tiles=reply["tiles"])
    schedule = Schedule.from_dict(reply["schedule"], grid.point)
    return layout, schedule, reply["options"]


def worker_side(link: Link, grid: Grid, halo: int, schedule: Schedule, n_tiles, options: dict):
    """Workers: receive the model's declaration, check it, answer; returns ``(layout, request)``."""
    reply = request = None
    if link.is_root:
        request = recv_json(link.inter, source=0)
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
                 "boxes": request.get("boxes"), "n_workers": link.size, "halo": halo,
                 "tiles": None if error else [list(b) for b in layout.dst.boxes]}
        if request.get("client", "python") == "python":
            send_json(link.inter, reply, dest=0)
        else:
            reply["error"] = _send_tables(link, request, layout, schedule, error)
    reply = link.comm.bcast(reply, root=0)
    if reply["error"]:
        raise CouplingError(reply["error"], collective=True)
    holes = link.comm.bcast(request["holes"] if link.is_root else None, root=0)
    layout = Layout(grid, reply["boxes"], reply["n_workers"], reply["halo"], holes=holes,
                    tiles=reply["tiles"])
    return layout


def _send_tables(link: Link, request: dict, layout, schedule: Schedule, error) -> str | None:
    """A foreign client: each model rank gets its own table (or the error) straight from the
    worker root, so the client has nothing to compute. Returns the error, if any."""
    tables = None
    if not error and not request.get("fields"):
        error = (f"the {request.get('client')} client declared no fields; declare every field of "
                 f"the tunnel ({', '.join(schedule.fields)})")
    if not error:
        try:
            order = list(request["fields"])  # the client's declaration order
            tables = [client_table.build(layout, schedule, r, order)
                      for r in range(link.remote_size)]
        except Exception:  # a bug here must still reach every rank, not hang them
            error = "internal error while building the client tables:\n" + traceback.format_exc()
    for r in range(link.remote_size):
        table = client_table.error_table(error) if error else tables[r]
        link.inter.Send([table, mpi().INT64_T], dest=r, tag=TAG_HANDSHAKE)
    return error


def _check(request: dict, grid: Grid, schedule: Schedule, n_model: int) -> str | None:
    """The first mismatch between the model's declaration and the tunnel, or None."""
    if request.get("protocol") != PROTOCOL:
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
