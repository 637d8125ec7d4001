"""A coupled job to size (pure): the grid and fields, the model's decomposition, where ranks run,
and the evaluation of one worker count (plan, placement, traffic, memory, predicted times) or a
sweep of them with the plateau: the worker count beyond which more workers no longer shorten the
model's step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..decomposition import Decomposition, best_factors
from ..grid import Grid
from ..plan import Plan
from . import cost, memory, placement, traffic
from .machine import Machine

PLACEMENTS = ("separate", "shared")


@dataclass
class Job:
    """What is sized. ``model`` is the model's decomposition (one box per model rank).

    Ranks run ``model_per_node`` model ranks and ``workers_per_node`` workers to a node:
    ``separate`` puts the workers on nodes of their own after the model's (an MPMD launch by
    blocks), ``shared`` gives node ``k`` model ranks ``[k*m, (k+1)*m)`` and workers
    ``[k*w, (k+1)*w)``. ``model_nodes``/``worker_nodes`` (node names, one per rank) override both.
    ``inference_s_per_tile`` is the model call's time for one tile of the layout with
    ``reference_workers`` workers; other tile sizes scale it by their cells. ``chunk`` is the
    ``pipelined`` strategy's bytes per message (None: its default), ``shm_buffers`` says the
    model puts from and gets into ``Coupler.buffer`` arrays (``shm``: the workers copy).
    """

    grid: Grid
    model: Decomposition
    levels: int = 1
    itemsize: int = 8
    halo: int = 0
    fields_in: int = 1
    fields_out: int = 1
    tiles_per_worker: int = 1
    model_per_node: int = 1
    workers_per_node: int = 1
    placement: str = "separate"
    model_halo: int = 0
    model_nodes: list | None = None
    worker_nodes: list | None = None
    inference_s_per_tile: float | None = None
    reference_workers: int | None = None
    model_step_s: float | None = None
    strategies: tuple = cost.STRATEGIES
    chunk: int | None = None
    shm_buffers: bool = False
    _ref_cells: dict = field(default_factory=dict, repr=False)

    @property
    def n_model(self) -> int:
        return len(self.model.boxes)

    def tiles_for(self, n_workers: int) -> Decomposition:
        return Decomposition.auto(self.grid, n_workers * self.tiles_per_worker)

    def nodes(self, n_workers: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Node index of each model rank and each worker, and the node names."""
        if self.model_nodes is not None or self.worker_nodes is not None:
            names = list(self.model_nodes or []) + list(self.worker_nodes or [])
            order = list(dict.fromkeys(names))
            index = {n: k for k, n in enumerate(order)}
            if self.model_nodes is None or len(self.model_nodes) != self.n_model:
                raise ValueError(f"node names: {len(self.model_nodes or [])} for the model side, "
                                 f"the model has {self.n_model} ranks")
            if self.worker_nodes is None or len(self.worker_nodes) != n_workers:
                raise ValueError(f"node names: {len(self.worker_nodes or [])} for the workers, "
                                 f"the job has {n_workers} workers")
            return (np.array([index[n] for n in self.model_nodes]),
                    np.array([index[n] for n in self.worker_nodes]), order)
        m, w = self.model_per_node, self.workers_per_node
        model_node = np.arange(self.n_model) // m
        if self.placement == "shared":
            worker_node = np.arange(n_workers) // w
        else:
            worker_node = math.ceil(self.n_model / m) + np.arange(n_workers) // w
        n = int(max(model_node.max(), worker_node.max())) + 1
        return model_node, worker_node, [f"node{k}" for k in range(n)]

    def inference_per_tile(self, plan: Plan) -> float:
        """The model call's seconds for one tile of ``plan`` (scaled by cells from the
        reference layout); 0 when no inference time was given."""
        if not self.inference_s_per_tile:
            return 0.0
        ref = self.reference_workers
        if ref not in self._ref_cells:
            tiles = self.tiles_for(ref)
            h, w = tiles.max_shape()
            self._ref_cells[ref] = (h + 2 * self.halo) * (w + 2 * self.halo)
        hh, ww = plan.tile_shape_of(0)
        return self.inference_s_per_tile * (hh * ww) / self._ref_cells[ref]


def evaluate(job: Job, machine: Machine, n_workers: int, node_aware: bool = True,
             tiles: Decomposition | None = None) -> dict:
    """Plan, placement, traffic, memory and predicted times for ``n_workers`` workers."""
    dst = tiles if tiles is not None else job.tiles_for(n_workers)
    plan = Plan(job.grid, job.model, dst, job.halo, tile_shape=dst.max_shape())
    model_node, worker_node, names = job.nodes(n_workers)
    weights = placement.tile_node_bytes(plan, model_node, n_nodes=len(names))
    today = placement.default_owner(plan.n_dst, n_workers)
    placed = (placement.place(weights, worker_node) if node_aware
              else placement.Placement(today, *(2 * [placement.onnode_share(weights, today,
                                                                           worker_node)])))
    out = {"workers": n_workers, "tiles": plan.n_dst, "tile_grid": _tile_grid(dst),
           "nodes": len(names), "placement": placed.to_dict(), "plan_blocks": len(plan.blocks),
           "predictions": {}}
    t_infer = job.inference_per_tile(plan) * int(np.bincount(placed.owner).max())
    for label, owner in (("today", today), ("placed", placed.owner)):
        if label == "placed" and placed.moved == 0:
            out["predictions"]["placed"] = out["predictions"]["today"]
            continue
        t = traffic.messages(plan, job.levels, job.itemsize, owner, model_node, worker_node,
                             model_halo=job.model_halo)
        preds = {s: cost.predict(t, machine, s, job.fields_in, job.fields_out, t_infer,
                                 job.model_step_s, chunk=job.chunk,
                                 shm_buffers=job.shm_buffers).to_dict()
                 for s in job.strategies}
        out["predictions"][label] = preds
        if label == "placed" or placed.moved == 0:
            out["traffic"] = traffic.summary(t, job.fields_in, job.fields_out)
            out["memory"] = memory.estimate(plan, t, owner, job.levels, job.itemsize,
                                            job.fields_in, job.fields_out)
    out["inference_s"] = t_infer
    return out


def _tile_grid(dst: Decomposition) -> str:
    arr = dst.as_array()
    return f"{len(np.unique(arr[:, 2]))}x{len(np.unique(arr[:, 0]))}"


def tile_candidates(grid: Grid, n_tiles: int, count: int = 4) -> list[Decomposition]:
    """``auto``'s px x py blocks and the next ``count - 1`` factorisations by aspect ratio."""
    px0, py0 = best_factors(n_tiles, grid.nx, grid.ny)
    pairs = [(px, n_tiles // px) for px in range(1, n_tiles + 1)
             if n_tiles % px == 0 and px <= grid.nx and n_tiles // px <= grid.ny]
    pairs.sort(key=lambda p: abs(math.log((p[0] / p[1]) / (grid.nx / grid.ny))))
    pairs.remove((px0, py0))
    return [Decomposition.blocks(grid, px, py) for px, py in [(px0, py0)] + pairs[:count - 1]]


def best_time(result: dict, key: str = "exchange_s") -> tuple[str, float]:
    """The strategy with the lowest ``key`` among a result's node-aware predictions."""
    preds = result["predictions"]["placed"]
    s = min(preds, key=lambda k: preds[k][key])
    return s, preds[s][key]


def sweep_counts(job: Job, target: int, upto: int | None = None) -> list[int]:
    """Powers of two from 1 to at least twice ``target`` (or ``upto``), plus ``target``, kept
    where the grid splits into that many tiles."""
    top = upto or max(2 * target, 4)
    counts = sorted({2 ** k for k in range(int(math.log2(top)) + 1)} | {target})
    ok = []
    for q in counts:
        try:
            best_factors(q * job.tiles_per_worker, job.grid.nx, job.grid.ny)
        except ValueError:
            continue
        ok.append(q)
    return ok


def plateau(counts: list[int], times: list[float | None], tolerance: float) -> int | None:
    """The smallest count whose time is within ``tolerance`` of the best time of the sweep."""
    pts = [(q, t) for q, t in zip(counts, times) if t is not None]
    if not pts:
        return None
    best = min(t for _, t in pts)
    return min(q for q, t in pts if t <= best * (1 + tolerance))
