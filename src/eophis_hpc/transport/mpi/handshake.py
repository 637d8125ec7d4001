"""The handshake over MPI: the model root sends the model's declaration to the workers' root,
which checks it against the tunnel and answers every model rank (the reply, or a foreign
client's table); each side then broadcasts the outcome to its own ranks. The messages and checks
are :mod:`eophis_hpc.protocol.handshake`'s; every wait here is bounded by the timeout."""
from __future__ import annotations

import os
import traceback

import numpy as np

from ...grid import Grid
from ...protocol import client_table
from ...protocol import handshake as messages
from ...protocol.schedule import Schedule
from ...protocol.wire import TAG_HANDSHAKE
from .join import Link
from .strategies import negotiate
from .waits import mpi, probe, wait_all


def send_json(comm, obj, dest: int, timeout: float | None, what: str, peer_label: str) -> None:
    """Send ``obj`` as UTF-8 JSON bytes."""
    data = messages.encode(obj)
    req = comm.Isend([data, len(data), mpi().BYTE], dest=dest, tag=TAG_HANDSHAKE)
    wait_all([req], timeout, what, [dest], peer_label)


def recv_json(comm, source: int, timeout: float | None, what: str, peer_label: str):
    """Receive a JSON message of any length (a CouplingError if it is not JSON)."""
    MPI = mpi()
    status = probe(comm, source, TAG_HANDSHAKE, timeout, what, peer_label)
    buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
    comm.Recv([buf, MPI.BYTE], source=source, tag=TAG_HANDSHAKE)
    return messages.decode(buf, what)


def node_name() -> str:
    """The node this rank runs on: ``MPI.Get_processor_name()``, or ``EOPHIS_HPC_NODE_NAME``
    when set (a testing aid: it fakes several nodes on one machine)."""
    return os.environ.get("EOPHIS_HPC_NODE_NAME") or mpi().Get_processor_name()


def model_side(link: Link, grid: Grid, box, holes: bool, fields: dict | None,
               timeout: float | None, strategy: str | None = None):
    """Model ranks: returns ``(layout, schedule, options)`` agreed with the workers
    (``strategy``: the model's own choice, checked against the workers' one)."""
    box, local_err = messages.parse_box(box)
    gathered = link.comm.gather((box, local_err, node_name()), root=0)
    answer = None
    if link.is_root:
        boxes = [b for b, _, _ in gathered]
        error = messages.first_error([e for _, e, _ in gathered])
        what = "model rank 0: handshake with the workers"
        req = messages.request(grid, boxes, holes, fields, error, strategy,
                               [n for _, _, n in gathered])
        send_json(link.inter, req, 0, timeout, what, "worker")
        answer = recv_json(link.inter, 0, timeout, what, "worker")
    answer = link.comm.bcast(answer, root=0)
    return messages.agreed(grid, answer)


def worker_side(link: Link, grid: Grid, halo: int, schedule: Schedule, n_tiles, options: dict,
                timeout: float | None):
    """Workers: receive the model's declaration, check it, answer; returns the layout and the
    options agreed with the model side (the strategy, negotiated when ``options["explicit"]`` is
    false: :func:`.strategies.negotiate`)."""
    answer = None
    nodes = link.comm.gather(node_name(), root=0)
    if link.is_root:
        what = "worker 0: waiting for the model ranks' declaration"
        req = recv_json(link.inter, 0, timeout, what, "model rank")
        answer, layout = messages.reply(req, grid, halo, schedule, n_tiles, options, link.size,
                                        link.remote_size, worker_nodes=nodes)
        client = req.get("client", "python")
        strategy, mismatch = negotiate(req.get("strategy"), options["strategy"],
                                       options.get("explicit", True), client)
        answer["options"] = dict(options, strategy=strategy, client=client)
        if mismatch and not answer["error"]:
            answer["error"], answer["tiles"], layout = mismatch, None, None
        if client == "python":
            send_json(link.inter, answer, 0, timeout, "worker 0: handshake reply", "model rank")
        else:
            answer["error"] = _send_tables(link, req, layout, schedule, answer["error"], timeout)
    answer = link.comm.bcast(answer, root=0)
    layout, _, agreed = messages.agreed(grid, answer)
    return layout, agreed


def _send_tables(link: Link, req: dict, layout, schedule: Schedule, error,
                 timeout: float | None) -> str | None:
    """A foreign client: each model rank gets its own table (or the error) straight from the
    worker root, so the client has nothing to compute. Returns the error, if any."""
    tables = None
    if not error and not req.get("fields"):
        error = (f"the {req.get('client')} client declared no fields; declare every field of "
                 f"the tunnel ({', '.join(schedule.fields)})")
    if not error:
        try:
            order = list(req["fields"])  # the client's declaration order
            tables = [client_table.build(layout, schedule, r, order)
                      for r in range(link.remote_size)]
        except Exception:  # a bug here must still reach every rank, not hang them
            error = "internal error while building the client tables:\n" + traceback.format_exc()
    sends = []
    for r in range(link.remote_size):
        table = client_table.error_table(error) if error else tables[r]
        sends.append(link.inter.Isend([table, mpi().INT64_T], dest=r, tag=TAG_HANDSHAKE))
    wait_all(sends, timeout, "worker 0: sending the client tables", list(range(link.remote_size)),
             "model rank")
    return error
