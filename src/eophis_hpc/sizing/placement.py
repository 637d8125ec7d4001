"""Node-aware placement of tiles on workers (pure): keep as many bytes as possible on a node.

Every worker keeps the number of tiles today's assignment gives it (``split_balanced``: tiles in
order, the remainder to the first workers), so the batches stay as balanced as they are; only
*which* tiles a worker holds changes. A tile's bytes stay on a node when its worker runs on the
node of the model ranks it exchanges with, so the problem is to fill each node's tile slots
(the sum of its workers' counts) with the tiles that exchange most with that node's model ranks.

:func:`place` starts from two assignments, today's and a greedy one (pairs (tile, node) by
decreasing bytes, while the node has slots), improves each by swapping tiles between nodes
while a swap keeps more bytes on a node, and returns the better; it never keeps fewer bytes on
a node than today's assignment.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..decomposition import split_balanced
from ..plan import B_DST, B_NI, B_NJ, B_SRC, DST, NI, NJ, SRC, Plan


@dataclass
class Placement:
    """``owner[d]``: the worker of tile ``d``; the on-node byte shares of today's assignment
    (``before``) and of this one (``after``)."""

    owner: np.ndarray
    before: float
    after: float
    moved: int = 0  # tiles whose worker differs from today's

    def tiles_of(self, n_workers: int) -> list[list[int]]:
        return [np.flatnonzero(self.owner == w).tolist() for w in range(n_workers)]

    def to_dict(self) -> dict:
        return {"onnode_share_before": self.before, "onnode_share_after": self.after,
                "moved_tiles": self.moved}


def default_owner(n_tiles: int, n_workers: int) -> np.ndarray:
    """Today's assignment: tiles in order, ``split_balanced`` counts per worker."""
    starts = split_balanced(n_tiles, n_workers)
    return np.repeat(np.arange(n_workers), np.diff(starts))


def tile_node_bytes(plan: Plan, model_node: np.ndarray, model_rank: np.ndarray | None = None,
                    n_nodes: int | None = None) -> np.ndarray:
    """``(n_tiles, n_nodes)``: cells per level each tile exchanges (scatter + gather) with the
    model ranks of each node (box ``s`` lives on rank ``model_rank[s]``, default ``s``)."""
    model_node = np.asarray(model_node, dtype=np.int64)
    rank = (np.arange(plan.n_src) if model_rank is None
            else np.asarray(model_rank, dtype=np.int64))
    n_nodes = int(model_node.max() + 1) if n_nodes is None else n_nodes
    w = np.zeros(plan.n_dst * n_nodes, dtype=np.float64)
    for blk, s_col, d_col, nj, ni in ((plan.blocks, SRC, DST, NJ, NI),
                                      (plan.back_blocks, B_SRC, B_DST, B_NJ, B_NI)):
        key = blk[:, d_col] * n_nodes + model_node[rank[blk[:, s_col]]]
        w += np.bincount(key, weights=blk[:, nj] * blk[:, ni], minlength=w.size)
    return w.reshape(plan.n_dst, n_nodes)


def onnode_share(weights: np.ndarray, owner: np.ndarray, worker_node: np.ndarray) -> float:
    """Fraction of the bytes of ``weights`` (tiles x nodes) kept on a node by ``owner``."""
    total = weights.sum()
    if total == 0:
        return 0.0
    kept = weights[np.arange(len(owner)), np.asarray(worker_node)[owner]].sum()
    return float(kept / total)


def _score(weights: np.ndarray, tile_node: np.ndarray) -> float:
    return float(weights[np.arange(len(tile_node)), tile_node].sum())


def _greedy(weights: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Tiles to nodes by decreasing bytes while the node has slots; the rest where slots are."""
    n_tiles, n_nodes = weights.shape
    tile_node = np.full(n_tiles, -1, dtype=np.int64)
    left = slots.copy()
    flat = np.flatnonzero(weights.ravel() > 0)
    order = flat[np.argsort(-weights.ravel()[flat], kind="stable")]
    for k in order.tolist():
        d, n = divmod(k, n_nodes)
        if tile_node[d] < 0 and left[n] > 0:
            tile_node[d] = n
            left[n] -= 1
    free = np.repeat(np.arange(n_nodes), left)
    tile_node[tile_node < 0] = free[:int(np.sum(tile_node < 0))]
    return tile_node


def _improve(weights: np.ndarray, tile_node: np.ndarray, max_rounds: int = 50) -> np.ndarray:
    """Swap pairs of tiles between nodes while a swap keeps more bytes on a node (each swap
    strictly increases the kept bytes, so this ends and never loses)."""
    tile_node = tile_node.copy()
    n_tiles = len(tile_node)
    rows = np.arange(n_tiles)
    for _ in range(max_rounds):
        changed = False
        for d in range(n_tiles):
            a = tile_node[d]
            gains = weights[d] - weights[d, a]
            for b in np.flatnonzero(gains > 0).tolist():
                cand = rows[tile_node == b]
                if cand.size == 0:
                    continue
                # swap d (a -> b) with e (b -> a)
                total = gains[b] + weights[cand, a] - weights[cand, b]
                k = int(np.argmax(total))
                if total[k] > 0:
                    tile_node[d], tile_node[cand[k]] = b, a
                    changed = True
                    break
        if not changed:
            break
    return tile_node


def _owners(tile_node: np.ndarray, worker_node: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Workers for tiles already given a node: a node's tiles in order to its workers in order,
    each worker taking its count."""
    owner = np.empty(len(tile_node), dtype=np.int64)
    for n in np.unique(worker_node).tolist():
        workers = np.flatnonzero(worker_node == n)
        tiles = np.flatnonzero(tile_node == n)
        owner[tiles] = np.repeat(workers, counts[workers])
    return owner


def place(weights: np.ndarray, worker_node) -> Placement:
    """The assignment of tiles (rows of ``weights``, bytes per node in its columns) to workers
    on ``worker_node``, with today's tile count per worker, keeping the most bytes on a node."""
    weights = np.asarray(weights, dtype=np.float64)
    worker_node = np.asarray(worker_node, dtype=np.int64)
    n_tiles, n_workers = weights.shape[0], len(worker_node)
    if n_workers > n_tiles:
        raise ValueError(f"placement: {n_workers} workers for {n_tiles} tiles: every worker "
                         "needs a tile")
    n_nodes = max(weights.shape[1], int(worker_node.max()) + 1)
    if weights.shape[1] < n_nodes:  # nodes that host workers but no model rank
        weights = np.hstack([weights, np.zeros((n_tiles, n_nodes - weights.shape[1]))])
    today = default_owner(n_tiles, n_workers)
    counts = np.bincount(today, minlength=n_workers)
    slots = np.bincount(worker_node, weights=counts, minlength=n_nodes).astype(np.int64)
    # only nodes hosting workers can receive tiles
    usable = np.where(slots > 0, weights, 0.0)
    candidates = [_improve(usable, worker_node[today]), _improve(usable, _greedy(usable, slots))]
    best = max(candidates, key=lambda tn: _score(usable, tn))
    before = onnode_share(weights, today, worker_node)
    if _score(usable, best) <= _score(usable, worker_node[today]):
        return Placement(today, before, before)
    owner = _owners(best, worker_node, counts)
    return Placement(owner, before, onnode_share(weights, owner, worker_node),
                     int(np.sum(owner != today)))


def from_node_names(plan: Plan, model_nodes, worker_nodes) -> Placement | None:
    """The node-aware placement for ranks on the named nodes (one name per model rank, one per
    worker), or None when there is nothing to place: names missing, or one node for all."""
    if not model_nodes or not worker_nodes:
        return None
    names = list(dict.fromkeys(list(model_nodes) + list(worker_nodes)))
    if len(names) == 1:
        return None
    if len(model_nodes) != plan.n_src:
        raise ValueError(f"placement: {len(model_nodes)} model node names for {plan.n_src} "
                         "model boxes")
    index = {n: k for k, n in enumerate(names)}
    model_node = np.array([index[n] for n in model_nodes])
    worker_node = np.array([index[n] for n in worker_nodes])
    weights = tile_node_bytes(plan, model_node, n_nodes=len(names))
    return place(weights, worker_node)
