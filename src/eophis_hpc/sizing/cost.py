"""The cost model (pure): predicted time of one exchange (fields out to the workers, inference,
fields back) per transport strategy, from the messages of :mod:`.traffic` and a :class:`Machine`.

One direction of an exchange takes a latency plus its slowest resource, each loaded with what
it must do for every field of the direction:

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
rank. The model root also sends one note per worker before its data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .machine import Machine
from .traffic import Messages, Traffic

STRATEGIES = ("packed", "datatype")


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
        self.m = m

    def share(self, ranks_copying: np.ndarray) -> np.ndarray:
        """Bytes/s of memory bandwidth one rank gets on each node while ``ranks_copying`` copy
        together."""
        return self.m.node_memory_bandwidth / np.maximum(ranks_copying, 1.0)


def _direction(msg: Messages, nf: int, n_send: int, n_recv: int, send_node: np.ndarray,
               recv_node: np.ndarray, nodes: _Nodes, m: Machine, datatype: bool,
               n_nodes: int) -> float:
    """Seconds for ``nf`` fields' messages of one direction (all posted together)."""
    if len(msg) == 0 or nf == 0:
        return 0.0
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
    off = ~on
    nic = 0.0
    if off.any():
        out_b = np.bincount(send_node[msg.sender[off]], weights=b[off], minlength=n_nodes)
        in_b = np.bincount(recv_node[msg.receiver[off]], weights=b[off], minlength=n_nodes)
        nic = max(out_b.max(), in_b.max()) / m.nic_bandwidth
    latency = m.network_latency_s if off.any() else m.latency_s
    return float(latency + max(send.max(initial=0.0), recv.max(initial=0.0), nic))


def _copies(msg: Messages, nf: int, side: str, n: int, node_of: np.ndarray, nodes: _Nodes,
            copying: np.ndarray) -> float:
    """Seconds of the slowest rank of ``side`` packing or unpacking its messages (packed)."""
    if len(msg) == 0 or nf == 0:
        return 0.0
    per_field = np.bincount(getattr(msg, side), weights=msg.nbytes, minlength=n)
    rate = np.minimum(nodes.m.bandwidth("copy_bandwidth", per_field), nodes.share(copying)[node_of])
    return float(np.max(per_field * nf / rate * nodes.stretch[node_of]))


def predict(t: Traffic, m: Machine, strategy: str, fields_in: int = 1, fields_out: int = 1,
            inference_s: float = 0.0, model_step_s: float | None = None) -> Prediction:
    """Predicted exchange for ``strategy``; ``inference_s`` is the slowest worker's model call
    (its tiles), ``model_step_s`` the model's own step without coupling (for the step times)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    nodes = _Nodes(t, m)
    dt = strategy == "datatype"
    args = dict(nodes=nodes, m=m, datatype=dt, n_nodes=t.n_nodes)
    scatter = _direction(t.scatter, fields_in, t.n_model, t.n_workers, t.model_node,
                         t.worker_node, **args)
    gather = _direction(t.gather, fields_out, t.n_workers, t.n_model, t.worker_node,
                        t.model_node, **args)
    # the model root sends one note per worker before its data
    note = t.n_workers * m.message_overhead_s * nodes.stretch[t.model_node[0]]
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
    # the scatter cannot end before the last note has gone out
    first = max(phases["note"], phases.get("model_pack", 0.0) + scatter)
    exchange = (first + phases.get("worker_unpack", 0.0) + phases["inference"]
                + phases.get("worker_pack", 0.0) + gather + phases.get("model_unpack", 0.0)
                + phases["overhead"])
    # what the model ranks do themselves: their copies and posting their messages
    sm = np.bincount(t.scatter.sender, minlength=t.n_model) * fields_in
    gm = np.bincount(t.gather.receiver, minlength=t.n_model) * fields_out
    model_cpu = (phases.get("model_pack", 0.0) + phases.get("model_unpack", 0.0)
                 + float(np.max(sm + gm, initial=0)) * m.message_overhead_s + note)
    lag0 = lag1 = None
    if model_step_s is not None:
        lag0 = model_step_s + exchange
        # lag 1: the model sends early in its step and receives late, so the whole exchange
        # hides behind the step unless it takes longer than the step
        lag1 = max(model_step_s + model_cpu, exchange)
    return Prediction(strategy, {k: float(v) for k, v in phases.items()}, float(exchange),
                      float(model_cpu), lag0, lag1)
