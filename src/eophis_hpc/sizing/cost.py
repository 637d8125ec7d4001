"""The cost model (pure): predicted time of one exchange (fields out to the workers, inference,
fields back) per transport strategy, from the messages of :mod:`.traffic` and a :class:`Machine`.

One direction of an exchange over MPI takes a latency plus its slowest resource, each loaded
with what it must do for every field of the direction:

- a sender: ``message_overhead_s`` per message, and (datatype strategy) walking the datatype of
  its non-contiguous messages;
- a receiver: ``message_overhead_s`` per message, on-node bytes at the on-node bandwidth (at the
  datatype bandwidth when the message is not contiguous at both ends), network bytes at the
  per-rank network bandwidth;
- a node's network interface: the bytes leaving it, and those entering it, at ``nic_bandwidth``.

Bandwidths depend on the size of one message or copy (the machine's tables). Copies share a
node's memory bandwidth: a rank copies at ``copy_bandwidth`` or at its share of
``node_memory_bandwidth``, whichever is less; ranks above ``cores_per_node`` share cores, which
stretches their CPU work. The steps of a synchronous exchange (lag 0) follow one another:
(packed: model pack) -> scatter -> (packed: worker unpack) -> inference -> (packed: worker pack)
-> gather -> (packed: model unpack), plus ``exchange_overhead_s``; each step takes its slowest
rank. The model root also sends its note to the workers before its data (to each of up to 16
workers, else to one leader per group of about sqrt(workers), who passes it on).

``shm`` moves the routes between ranks of one node as copies through shared memory (who copies:
:func:`_shm_onnode`) and its other routes as ``datatype`` does, in the same step: the step takes
the slower of the two. ``pipelined`` cuts each message into chunks and overlaps the pack of one
chunk with the transfer of the one before (:func:`_pipelined`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ..protocol.wire import note_group
from .machine import Machine
from .traffic import Messages, Traffic

STRATEGIES = ("shm", "packed", "datatype", "pipelined")  # the default first
PIPELINE_CHUNK = 1 << 20  # bytes per message of ``pipelined`` (the transport's default chunk)
SHM_STAGE_BYTES = 1 << 20  # bytes of rows ``shm`` stages per step (the transport's default)


@dataclass
class Prediction:
    """Predicted seconds of each step of one exchange, and the step time of the coupled model."""

    strategy: str
    phases: dict            # name -> seconds (the slowest rank of that step)
    exchange_s: float       # the whole exchange, inference included (lag 0)
    model_cpu_s: float      # what the model ranks spend themselves (their copies and messages)
    step_lag0_s: float | None
    step_lag1_s: float | None

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "phases_s": self.phases, "exchange_s": self.exchange_s,
                "model_cpu_s": self.model_cpu_s, "step_lag0_s": self.step_lag0_s,
                "step_lag1_s": self.step_lag1_s}


def _per_node(nodes: np.ndarray, n_nodes: int) -> np.ndarray:
    return np.bincount(nodes, minlength=n_nodes).astype(np.float64)


class _Nodes:
    """Per node: ranks of each side, core sharing, the copy bandwidth a rank gets."""

    def __init__(self, t: Traffic, m: Machine):
        self.model = _per_node(t.model_node, t.n_nodes)
        self.workers = _per_node(t.worker_node, t.n_nodes)
        self.stretch = np.maximum(1.0, (self.model + self.workers) / m.cores_per_node)
        self.n_nodes = t.n_nodes
        self.m = m

    def share(self, ranks_copying: np.ndarray) -> np.ndarray:
        """Bytes/s of memory bandwidth one rank gets on each node while ``ranks_copying`` copy
        together."""
        return self.m.node_memory_bandwidth / np.maximum(ranks_copying, 1.0)

    def copy_rate(self, per_field: np.ndarray, node_of: np.ndarray,
                  copying: np.ndarray) -> np.ndarray:
        """Bytes/s of each rank's copies of ``per_field`` bytes (one field) on node ``node_of``
        while ``copying`` ranks of each node copy."""
        return np.minimum(self.m.bandwidth("copy_bandwidth", per_field),
                          self.share(copying)[node_of])

    def copying(self, ranks: np.ndarray, node_of: np.ndarray) -> np.ndarray:
        """Per node, how many of ``ranks`` (distinct rank numbers) run there."""
        return _per_node(node_of[np.unique(ranks)], self.n_nodes)


@dataclass
class _Side:
    """One direction's ranks: how many on each side and their nodes."""

    n_send: int
    n_recv: int
    send_node: np.ndarray
    recv_node: np.ndarray


def _subset(msg: Messages, keep: np.ndarray) -> Messages:
    return Messages(**{f.name: getattr(msg, f.name)[keep] for f in fields(Messages)})


def _direction(msg: Messages, nf: int, n_send: int, n_recv: int, send_node: np.ndarray,
               recv_node: np.ndarray, nodes: _Nodes, m: Machine, datatype: bool,
               n_nodes: int, loads: bool = False):
    """Seconds for ``nf`` fields' messages of one direction (all posted together); with
    ``loads``, also each sender's and receiver's seconds of work (``(seconds, send, recv)``)."""
    if len(msg) == 0 or nf == 0:
        return (0.0, np.zeros(n_send), np.zeros(n_recv)) if loads else 0.0
    b = msg.nbytes * nf
    o = m.message_overhead_s * nf
    # each field is its own message: bandwidths by the size of one
    dt_bw = m.bandwidth("datatype_bandwidth", msg.nbytes)
    # a message walks a datatype where it is not contiguous (datatype strategy only)
    nc_send = ~msg.contig_send if datatype else np.zeros(len(msg), bool)
    nc_recv = ~msg.contig_recv if datatype else np.zeros(len(msg), bool)
    send = (np.bincount(msg.sender, minlength=n_send) * o
            + np.bincount(msg.sender, weights=b * nc_send / dt_bw, minlength=n_send))
    send *= nodes.stretch[send_node]
    # on-node: the receiver's copy, at the datatype rate when either end is not contiguous;
    # network: the receiver's share of the link, plus unpacking a non-contiguous datatype
    on = msg.onnode
    slow = nc_send | nc_recv
    receivers_on_node = np.bincount(recv_node[np.unique(msg.receiver[on])],
                                    minlength=n_nodes).astype(np.float64)
    share = nodes.share(receivers_on_node)[recv_node[msg.receiver]]
    onnode_rate = np.minimum(m.bandwidth("onnode_bandwidth", msg.nbytes), share)
    per_msg = np.where(on, b / np.where(slow, np.minimum(dt_bw, onnode_rate), onnode_rate),
                       b / m.bandwidth("network_bandwidth", msg.nbytes) + b * nc_recv / dt_bw)
    cpu = np.where(on, per_msg, b * nc_recv / dt_bw)
    recv = (np.bincount(msg.receiver, minlength=n_recv) * o
            + np.bincount(msg.receiver, weights=cpu, minlength=n_recv))
    recv *= nodes.stretch[recv_node]
    recv += np.bincount(msg.receiver, weights=per_msg - cpu, minlength=n_recv)  # link time
    nic = _nic(msg, b, send_node, recv_node, n_nodes, m)
    latency = m.network_latency_s if (~on).any() else m.latency_s
    seconds = float(latency + max(send.max(initial=0.0), recv.max(initial=0.0), nic))
    return (seconds, send, recv) if loads else seconds


def _nic(msg: Messages, b: np.ndarray, send_node, recv_node, n_nodes: int, m: Machine) -> float:
    """Seconds of the busiest network interface (bytes out, or bytes in, of one node)."""
    off = ~msg.onnode
    if not off.any():
        return 0.0
    out_b = np.bincount(send_node[msg.sender[off]], weights=b[off], minlength=n_nodes)
    in_b = np.bincount(recv_node[msg.receiver[off]], weights=b[off], minlength=n_nodes)
    return float(max(out_b.max(), in_b.max()) / m.nic_bandwidth)


def _copies(msg: Messages, nf: int, side: str, n: int, node_of: np.ndarray, nodes: _Nodes,
            copying: np.ndarray) -> float:
    """Seconds of the slowest rank of ``side`` packing or unpacking its messages (packed)."""
    if len(msg) == 0 or nf == 0:
        return 0.0
    per_field = np.bincount(getattr(msg, side), weights=msg.nbytes, minlength=n)
    rate = nodes.copy_rate(per_field, node_of, copying)
    return float(np.max(per_field * nf / rate * nodes.stretch[node_of]))


def _shm_onnode(msg: Messages, nf: int, side: _Side, nodes: _Nodes, m: Machine, mode: str,
                stage_bytes: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Seconds of the on-node routes of one direction of ``shm``, and the CPU seconds of each
    sender and receiver. Who copies (``mode``):

    - ``push``: each sender copies its share straight into its receivers' memory, all senders
      at once (the model ranks' put into the workers' batches; a worker's get-side write into
      a model rank's ``Coupler.buffer``);
    - ``pull``: each receiver copies out of its senders' windows (a put of a ``Coupler.buffer``:
      the worker copies);
    - ``staged``: each sender copies everything it sends into its window ``stage_bytes`` of rows
      at a time while its receivers read theirs along (the default get: two copies overlapped,
      the reads one step behind).

    Tokens: a READY from the receiver and a DONE from the sender per peer and field (``staged``:
    a DONE per step), each ``message_overhead_s`` at both ends; their latencies (READY, then
    DONE) are in the step's time once."""
    zeros_s, zeros_r = np.zeros(side.n_send), np.zeros(side.n_recv)
    on = msg.onnode
    if not on.any() or nf == 0:
        return 0.0, zeros_s, zeros_r
    o = m.message_overhead_s * nf
    snd, rcv, b = msg.sender[on], msg.receiver[on], msg.nbytes[on]
    peers_s = np.bincount(snd, minlength=side.n_send)
    peers_r = np.bincount(rcv, minlength=side.n_recv)
    bytes_s = np.bincount(snd, weights=b, minlength=side.n_send)
    bytes_r = np.bincount(rcv, weights=b, minlength=side.n_recv)
    st_s, st_r = nodes.stretch[side.send_node], nodes.stretch[side.recv_node]
    lag = 0.0
    if mode == "push":
        rate = nodes.copy_rate(bytes_s, side.send_node, nodes.copying(snd, side.send_node))
        send = (bytes_s * nf / rate + 2 * peers_s * o) * st_s
        recv = 2 * peers_r * o * st_r
    elif mode == "pull":
        rate = nodes.copy_rate(bytes_r, side.recv_node, nodes.copying(rcv, side.recv_node))
        recv = (bytes_r * nf / rate + 2 * peers_r * o) * st_r
        send = 2 * peers_s * o * st_s
    elif mode == "staged":
        # a sender with an on-node reader stages all it sends (its tiles' own boxes)
        staged = np.bincount(msg.sender, weights=msg.nbytes, minlength=side.n_send)
        staged *= peers_s > 0
        copying = (nodes.copying(snd, side.send_node) + nodes.copying(rcv, side.recv_node))
        rate_s = nodes.copy_rate(staged, side.send_node, copying)
        rate_r = nodes.copy_rate(bytes_r, side.recv_node, copying)
        steps = np.ceil(staged / stage_bytes)
        send = (staged * nf / rate_s + (1 + steps) * peers_s * o) * st_s
        tokens_r = np.bincount(rcv, weights=1 + steps[snd], minlength=side.n_recv)
        recv = (bytes_r * nf / rate_r + tokens_r * o) * st_r
        lag = float(np.max(np.minimum(staged, stage_bytes) / rate_s * st_s))
    else:
        raise ValueError(f"shm copies: unknown mode {mode!r}")
    seconds = 2 * m.latency_s + max(send.max(initial=0.0), recv.max(initial=0.0)) + lag
    return float(seconds), send, recv


def _shm(msg: Messages, nf: int, side: _Side, nodes: _Nodes, m: Machine, mode: str,
         stage_bytes: int) -> tuple[float, np.ndarray, np.ndarray]:
    """One direction of ``shm``: its on-node routes through the windows, the others as
    ``datatype``, in the same step. A rank does both parts one after the other (it posts its
    MPI messages, then copies; it reads its peers' windows and unpacks its datatypes in one
    loop), so the step takes the slowest rank's sum, or either part alone if that is longer;
    CPU seconds per sender and receiver (copies, tokens, posting the MPI messages)."""
    seconds, send, recv = _shm_onnode(msg, nf, side, nodes, m, mode, stage_bytes)
    off = _subset(msg, ~msg.onnode)
    far, far_send, far_recv = _direction(off, nf, side.n_send, side.n_recv, side.send_node,
                                         side.recv_node, nodes, m, True, nodes.n_nodes,
                                         loads=True)
    both = 0.0
    if len(off) and msg.onnode.any():
        latency = m.network_latency_s if len(off) else m.latency_s
        both = latency + max((send + far_send).max(initial=0.0),
                             (recv + far_recv).max(initial=0.0))
    o = m.message_overhead_s * nf
    send = send + np.bincount(off.sender, minlength=side.n_send) * o
    recv = recv + np.bincount(off.receiver, minlength=side.n_recv) * o
    return max(seconds, far, both), send, recv


def _pipelined(msg: Messages, nf: int, side: _Side, nodes: _Nodes, m: Machine, chunk: int,
               copying_send: np.ndarray, copying_recv: np.ndarray
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """One direction of ``pipelined``: every message cut into ``ceil(bytes / chunk)`` chunks,
    each its own message (``message_overhead_s`` at both ends, bandwidths by the chunk's size).
    A sender packs its chunks one after the other (none where its end of the message is
    contiguous: sent in place) while the earlier ones travel; a receiver unpacks each chunk as
    it arrives (none where contiguous). Seconds = latency + the slowest sender's first chunk's
    pack + the busiest resource's load for the rest (a sender's other packs; a receiver's
    on-node transfers and other unpacks on its CPU, or its network transfers, whichever is
    longer; a network interface) + the slowest receiver's last chunk's unpack. On a node the
    chunks move at the hot-cache bandwidth (``onnode_bandwidth_hot``: each was just packed).
    With one chunk per message and a machine whose two on-node tables agree this is
    ``packed``'s pack + transfer + unpack."""
    zeros_s, zeros_r = np.zeros(side.n_send), np.zeros(side.n_recv)
    if len(msg) == 0 or nf == 0:
        return 0.0, zeros_s, zeros_r
    b = msg.nbytes
    chunks = np.maximum(1.0, np.ceil(b / chunk))
    one = b / chunks  # bytes of one chunk
    o = m.message_overhead_s
    rate_s = nodes.copy_rate(np.bincount(msg.sender, weights=b, minlength=side.n_send),
                             side.send_node, copying_send)[msg.sender]
    rate_r = nodes.copy_rate(np.bincount(msg.receiver, weights=b, minlength=side.n_recv),
                             side.recv_node, copying_recv)[msg.receiver]
    pack, unpack = ~msg.contig_send / rate_s, ~msg.contig_recv / rate_r  # seconds per byte
    first = np.zeros(side.n_send)
    np.maximum.at(first, msg.sender, one * pack)
    last = np.zeros(side.n_recv)
    np.maximum.at(last, msg.receiver, one * unpack)
    st_s, st_r = nodes.stretch[side.send_node], nodes.stretch[side.recv_node]
    send_cpu = np.bincount(msg.sender, weights=nf * (chunks * o + b * pack),
                           minlength=side.n_send) * st_s
    on = msg.onnode
    share = nodes.share(nodes.copying(msg.receiver[on], side.recv_node))[
        side.recv_node[msg.receiver]]
    # a chunk is sent right after its pack and unpacked as it arrives: it stays in the caches
    transfer = nf * b / np.where(on, np.minimum(m.bandwidth("onnode_bandwidth_hot", one), share),
                                 m.bandwidth("network_bandwidth", one))
    recv_cpu = np.bincount(msg.receiver, weights=nf * (chunks * o + b * unpack)
                           + np.where(on, transfer, 0.0), minlength=side.n_recv) * st_r
    link = np.bincount(msg.receiver, weights=np.where(on, 0.0, transfer), minlength=side.n_recv)
    load = max((send_cpu - first * st_s).max(initial=0.0),
               np.maximum(recv_cpu - last * st_r, link).max(initial=0.0),
               _nic(msg, nf * b, side.send_node, side.recv_node, nodes.n_nodes, m))
    latency = m.network_latency_s if (~on).any() else m.latency_s
    seconds = latency + float(np.max(first * st_s)) + load + float(np.max(last * st_r))
    return seconds, send_cpu, recv_cpu


def _note_s(t: Traffic, m: Machine, nodes: _Nodes) -> tuple[float, float]:
    """``(seconds until the last worker has the note, the model root's share of them)``: the
    root sends it to the group leaders (one message each), the slowest leader passes it on to
    the rest of its group."""
    group = note_group(t.n_workers)
    leaders = np.arange(0, t.n_workers, group)
    root = float(len(leaders) * m.message_overhead_s * nodes.stretch[t.model_node[0]])
    if group == 1:
        return root, root
    lat = m.network_latency_s if (t.worker_node[leaders] != t.model_node[0]).any() else m.latency_s
    members = np.minimum(leaders + group, t.n_workers) - leaders - 1
    # a group with a member on another node than its leader pays the network's latency
    group_of = np.arange(t.n_workers) // group
    apart = np.bincount(group_of, weights=t.worker_node != t.worker_node[group_of * group],
                        minlength=len(leaders)) > 0
    passing = members * m.message_overhead_s * nodes.stretch[t.worker_node[leaders]]
    hop = np.where(apart, m.network_latency_s, m.latency_s)
    return float(root + lat + np.max(passing + hop)), root


def predict(t: Traffic, m: Machine, strategy: str, fields_in: int = 1, fields_out: int = 1,
            inference_s: float = 0.0, model_step_s: float | None = None,
            chunk: int | None = None, shm_buffers: bool = False,
            stage_bytes: int = SHM_STAGE_BYTES) -> Prediction:
    """Predicted exchange for ``strategy``; ``inference_s`` is the slowest worker's model call
    (its tiles), ``model_step_s`` the model's own step without coupling (for the step times).
    ``chunk``: bytes per message of ``pipelined`` (default :data:`PIPELINE_CHUNK`);
    ``shm_buffers``: the model puts from and gets into ``Coupler.buffer`` arrays (``shm``: the
    workers make the copies on a node); ``stage_bytes``: rows ``shm`` stages per step."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    for name, value in (("chunk", chunk), ("stage_bytes", stage_bytes)):
        if value is not None and not value >= 1:
            raise ValueError(f"{name} must be at least 1 byte, got {value!r}")
    nodes = _Nodes(t, m)
    dt = strategy == "datatype"
    args = dict(nodes=nodes, m=m, datatype=dt, n_nodes=t.n_nodes)
    note, note_root = _note_s(t, m, nodes)
    if strategy in ("shm", "pipelined"):
        out = _Side(t.n_model, t.n_workers, t.model_node, t.worker_node)
        back = _Side(t.n_workers, t.n_model, t.worker_node, t.model_node)
        if strategy == "shm":
            scatter, model_out, _ = _shm(t.scatter, fields_in, out, nodes, m,
                                         "pull" if shm_buffers else "push", stage_bytes)
            gather, _, model_back = _shm(t.gather, fields_out, back, nodes, m,
                                         "push" if shm_buffers else "staged", stage_bytes)
        else:
            size = PIPELINE_CHUNK if chunk is None else int(chunk)
            scatter, model_out, _ = _pipelined(t.scatter, fields_in, out, nodes, m, size,
                                               nodes.model, nodes.workers)
            gather, _, model_back = _pipelined(t.gather, fields_out, back, nodes, m, size,
                                               nodes.workers, nodes.model)
        phases = {"note": note, "scatter": scatter, "inference": float(inference_s),
                  "gather": gather, "overhead": m.exchange_overhead_s}
        model_cpu = float(np.max(model_out + model_back, initial=0.0)) + note_root
        return _finish(strategy, phases, model_cpu, model_step_s)
    scatter = _direction(t.scatter, fields_in, t.n_model, t.n_workers, t.model_node,
                         t.worker_node, **args)
    gather = _direction(t.gather, fields_out, t.n_workers, t.n_model, t.worker_node,
                        t.model_node, **args)
    phases = {"note": note, "scatter": scatter, "inference": float(inference_s),
              "gather": gather, "overhead": m.exchange_overhead_s}
    if not dt:
        phases["model_pack"] = _copies(t.scatter, fields_in, "sender", t.n_model, t.model_node,
                                       nodes, nodes.model)
        phases["worker_unpack"] = _copies(t.scatter, fields_in, "receiver", t.n_workers,
                                          t.worker_node, nodes, nodes.workers)
        phases["worker_pack"] = _copies(t.gather, fields_out, "sender", t.n_workers,
                                        t.worker_node, nodes, nodes.workers)
        phases["model_unpack"] = _copies(t.gather, fields_out, "receiver", t.n_model,
                                         t.model_node, nodes, nodes.model)
    # what the model ranks do themselves: their copies and posting their messages
    sm = np.bincount(t.scatter.sender, minlength=t.n_model) * fields_in
    gm = np.bincount(t.gather.receiver, minlength=t.n_model) * fields_out
    model_cpu = (phases.get("model_pack", 0.0) + phases.get("model_unpack", 0.0)
                 + float(np.max(sm + gm, initial=0)) * m.message_overhead_s + note_root)
    return _finish(strategy, phases, model_cpu, model_step_s)


def _finish(strategy: str, phases: dict, model_cpu: float,
            model_step_s: float | None) -> Prediction:
    """The exchange from its steps (one after the other), and the model's step at lag 0 and 1."""
    # the scatter cannot end before the last note has gone out
    first = max(phases["note"], phases.get("model_pack", 0.0) + phases["scatter"])
    exchange = (first + phases.get("worker_unpack", 0.0) + phases["inference"]
                + phases.get("worker_pack", 0.0) + phases["gather"]
                + phases.get("model_unpack", 0.0) + phases["overhead"])
    lag0 = lag1 = None
    if model_step_s is not None:
        lag0 = model_step_s + exchange
        # lag 1: the model sends early in its step and receives late, so the whole exchange
        # hides behind the step unless it takes longer than the step
        lag1 = max(model_step_s + model_cpu, exchange)
    return Prediction(strategy, {k: float(v) for k, v in phases.items()}, float(exchange),
                      float(model_cpu), lag0, lag1)
