"""Every message of one exchange, from a plan and where its ranks run (pure, vectorised).

A message is what the runtime sends between one model rank and one worker for one field: all
blocks of the pairs (box, tile) the two ranks own, merged (``Layout``'s routes). For each message
the table keeps its bytes, its number of blocks, whether both ranks share a node, and whether it
is one contiguous piece of memory at each end (otherwise MPI walks a derived datatype there).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..plan import (B_DI, B_DJ, B_DST, B_NI, B_NJ, B_SI, B_SJ, B_SRC, DI, DJ, DST, FOLD, NI, NJ,
                    SI, SJ, SRC, Plan)


@dataclass
class Messages:
    """One direction's messages for one field (``nz`` levels of ``itemsize`` bytes).

    ``sender``/``receiver`` are ranks of the sending/receiving side (model ranks for the scatter's
    senders, workers for its receivers; the reverse for the gather)."""

    sender: np.ndarray
    receiver: np.ndarray
    nbytes: np.ndarray
    blocks: np.ndarray
    onnode: np.ndarray
    contig_send: np.ndarray
    contig_recv: np.ndarray

    def __len__(self) -> int:
        return len(self.sender)

    def per_rank(self, side: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(messages, bytes)`` per rank of ``side`` ("sender" or "receiver"), ``n`` ranks."""
        ranks = getattr(self, side)
        return (np.bincount(ranks, minlength=n).astype(np.int64),
                np.bincount(ranks, weights=self.nbytes, minlength=n))


@dataclass
class Traffic:
    """Both directions of one field, and where the ranks run."""

    scatter: Messages
    gather: Messages
    n_model: int
    n_workers: int
    model_node: np.ndarray   # node index of each model rank
    worker_node: np.ndarray  # node index of each worker
    n_nodes: int

    def onnode_share(self, fields_in: int = 1, fields_out: int = 1) -> float:
        """Fraction of all bytes of an exchange (both directions) that stay on a node."""
        total = self.scatter.nbytes.sum() * fields_in + self.gather.nbytes.sum() * fields_out
        if total == 0:
            return 1.0
        on = (self.scatter.nbytes[self.scatter.onnode].sum() * fields_in
              + self.gather.nbytes[self.gather.onnode].sum() * fields_out)
        return float(on / total)

    def node_network_bytes(self) -> dict:
        """Bytes each node sends and receives over the network, per direction."""
        out = {}
        for name, msg, snode, rnode in (
                ("scatter", self.scatter, self.model_node, self.worker_node),
                ("gather", self.gather, self.worker_node, self.model_node)):
            off = ~msg.onnode
            out[name] = (np.bincount(snode[msg.sender[off]], weights=msg.nbytes[off],
                                     minlength=self.n_nodes),
                         np.bincount(rnode[msg.receiver[off]], weights=msg.nbytes[off],
                                     minlength=self.n_nodes))
        return out


def _merge(a: np.ndarray, b: np.ndarray, cells: np.ndarray, n_b: int, extra: dict):
    """Sum ``cells`` (and count blocks) per ``(a, b)`` pair; ``extra`` arrays are AND-ed."""
    key = a.astype(np.int64) * n_b + b
    uniq, inv = np.unique(key, return_inverse=True)
    sums = np.bincount(inv, weights=cells, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq))
    merged = {k: np.bincount(inv, weights=~v, minlength=len(uniq)) == 0 for k, v in extra.items()}
    return uniq // n_b, uniq % n_b, sums, counts, merged


def _whole(nj, ni, h, w, nz: int, height, width):
    """Whether a block ``nj x ni`` at ``(h, w)`` of every level of an array of ``height x width``
    points per level is one contiguous piece of it (one level: one row, or whole rows; several
    levels: whole planes)."""
    if nz == 1:
        return (nj == 1) | ((w == 0) & (ni == width))
    return (h == 0) & (w == 0) & (nj == height) & (ni == width)


def messages(plan: Plan, nz: int, itemsize: int, owner: np.ndarray, model_node: np.ndarray,
             worker_node: np.ndarray, model_rank: np.ndarray | None = None,
             model_halo: int = 0) -> Traffic:
    """The messages of one field through ``plan``: tile ``d`` lives on worker ``owner[d]``,
    box ``s`` on model rank ``model_rank[s]`` (default ``s``); ranks run on the nodes given.
    ``model_halo`` is the halo of the model's own arrays (NEMO's ``nn_hls``): the box is then
    never one contiguous piece of them."""
    owner = np.asarray(owner, dtype=np.int64)
    model_rank = (np.arange(plan.n_src, dtype=np.int64) if model_rank is None
                  else np.asarray(model_rank, dtype=np.int64))
    model_node = np.asarray(model_node, dtype=np.int64)
    worker_node = np.asarray(worker_node, dtype=np.int64)
    n_model, n_workers = len(model_node), len(worker_node)
    src_arr = plan.src.as_array()
    box_h, box_w = src_arr[:, 1] - src_arr[:, 0], src_arr[:, 3] - src_arr[:, 2]
    shapes = np.array([plan.tile_shape_of(d) for d in range(plan.n_dst)], dtype=np.int64)
    tile_h, tile_w = shapes[:, 0], shapes[:, 1]
    mh = int(model_halo)
    h = plan.halo
    cell_bytes = nz * itemsize

    blk = plan.blocks
    s, d = blk[:, SRC], blk[:, DST]
    # the model's array holds the box inside its own halo of mh points
    src_whole = _whole(blk[:, NJ], blk[:, NI], blk[:, SJ] + mh, blk[:, SI] + mh, nz,
                       box_h[s] + 2 * mh, box_w[s] + 2 * mh)
    dst_whole = _whole(blk[:, NJ], blk[:, NI], blk[:, DJ], blk[:, DI], nz, tile_h[d], tile_w[d])
    dst_whole &= blk[:, FOLD] == 0
    a, b, cells, count, flags = _merge(model_rank[s], owner[d], blk[:, NJ] * blk[:, NI],
                                       n_workers, {"send": src_whole, "recv": dst_whole})
    scatter = Messages(a, b, cells * cell_bytes, count, model_node[a] == worker_node[b],
                       flags["send"] & (count == 1), flags["recv"] & (count == 1))

    bb = plan.back_blocks
    d2, s2 = bb[:, B_DST], bb[:, B_SRC]
    # the worker sends from its output batch, with the halo around the tile
    tile_whole = _whole(bb[:, B_NJ], bb[:, B_NI], bb[:, B_DJ] + h, bb[:, B_DI] + h, nz,
                        tile_h[d2], tile_w[d2])
    box_whole = _whole(bb[:, B_NJ], bb[:, B_NI], bb[:, B_SJ] + mh, bb[:, B_SI] + mh, nz,
                       box_h[s2] + 2 * mh, box_w[s2] + 2 * mh)
    a, b, cells, count, flags = _merge(owner[d2], model_rank[s2], bb[:, B_NJ] * bb[:, B_NI],
                                       n_model, {"send": tile_whole, "recv": box_whole})
    gather = Messages(a, b, cells * cell_bytes, count, worker_node[a] == model_node[b],
                      flags["send"] & (count == 1), flags["recv"] & (count == 1))
    n_nodes = int(max(model_node.max(initial=-1), worker_node.max(initial=-1)) + 1)
    return Traffic(scatter, gather, n_model, n_workers, model_node, worker_node, n_nodes)


def summary(t: Traffic, fields_in: int, fields_out: int) -> dict:
    """Messages and bytes per rank (max / median), per node over the network and in all, for
    one exchange moving ``fields_in`` fields out and ``fields_out`` back."""
    out = {}
    for name, msg, nf in (("scatter", t.scatter, fields_in), ("gather", t.gather, fields_out)):
        n_send = t.n_model if name == "scatter" else t.n_workers
        n_recv = t.n_workers if name == "scatter" else t.n_model
        sm, sb = msg.per_rank("sender", n_send)
        rm, rb = msg.per_rank("receiver", n_recv)
        out[name] = {
            "fields": nf,
            "messages": int(len(msg) * nf),
            "bytes": float(msg.nbytes.sum() * nf),
            "onnode_bytes": float(msg.nbytes[msg.onnode].sum() * nf),
            "network_bytes": float(msg.nbytes[~msg.onnode].sum() * nf),
            "send_messages_per_rank": _mm(sm * nf),
            "send_bytes_per_rank": _mm(sb * nf),
            "recv_messages_per_rank": _mm(rm * nf),
            "recv_bytes_per_rank": _mm(rb * nf),
            "noncontiguous_messages": int(np.sum(~(msg.contig_send & msg.contig_recv)) * nf),
        }
    net = t.node_network_bytes()
    per_node_out = (net["scatter"][0] * fields_in + net["gather"][0] * fields_out)
    per_node_in = (net["scatter"][1] * fields_in + net["gather"][1] * fields_out)
    out["nodes"] = {"count": t.n_nodes,
                    "network_bytes_out_per_node": _mm(per_node_out),
                    "network_bytes_in_per_node": _mm(per_node_in)}
    out["onnode_share"] = t.onnode_share(fields_in, fields_out)
    return out


def _mm(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"max": 0.0, "median": 0.0}
    return {"max": float(v.max()), "median": float(np.median(v))}
