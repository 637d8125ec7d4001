"""Node-aware placement: never worse than today's assignment, the same tile count per worker,
the perfect placement found when there is one, and the bytes per node taken from the plan."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eophis_hpc as eh
from eophis_hpc.sizing import placement, traffic

from strategies import decompositions, grids, halos

SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def problems(draw):
    n_tiles = draw(st.integers(1, 24))
    n_workers = draw(st.integers(1, n_tiles))
    n_nodes = draw(st.integers(1, 5))
    weights = np.array(draw(st.lists(st.integers(0, 50), min_size=n_tiles * n_nodes,
                                     max_size=n_tiles * n_nodes)), dtype=float)
    weights = weights.reshape(n_tiles, n_nodes)
    if draw(st.booleans()):  # sparse: most tiles talk to one node or two
        weights *= np.array(draw(st.lists(st.booleans(), min_size=weights.size,
                                          max_size=weights.size))).reshape(weights.shape)
    worker_node = np.array(draw(st.lists(st.integers(0, n_nodes - 1), min_size=n_workers,
                                         max_size=n_workers)))
    return weights, worker_node


@SETTINGS
@given(prob=problems())
def test_placement_is_balanced_and_never_worse_than_today(prob):
    weights, worker_node = prob
    n_tiles, n_workers = weights.shape[0], len(worker_node)
    today = placement.default_owner(n_tiles, n_workers)
    res = placement.place(weights, worker_node)
    assert sorted(res.owner.tolist()) == sorted(today.tolist())  # same count per worker
    assert np.array_equal(np.bincount(res.owner, minlength=n_workers),
                          np.bincount(today, minlength=n_workers))
    assert res.before == pytest.approx(placement.onnode_share(weights, today, worker_node))
    assert res.after == pytest.approx(placement.onnode_share(weights, res.owner, worker_node))
    assert res.after >= res.before - 1e-12
    assert res.moved == int(np.sum(res.owner != today))
    if res.moved == 0:
        assert np.array_equal(res.owner, today)


@SETTINGS
@given(prob=problems())
def test_placement_beats_every_single_swap(prob):
    """No exchange of two tiles between nodes keeps more bytes on a node (a local optimum)."""
    weights, worker_node = prob
    res = placement.place(weights, worker_node)
    node = worker_node[res.owner]
    kept = weights[np.arange(len(node)), node].sum()
    for d in range(len(node)):
        for e in range(d + 1, len(node)):
            if node[d] == node[e]:
                continue
            swapped = kept - weights[d, node[d]] - weights[e, node[e]] \
                + weights[d, node[e]] + weights[e, node[d]]
            assert swapped <= kept + 1e-9


@settings(max_examples=40, deadline=None)
@given(px=st.integers(1, 5), py=st.integers(1, 4), per_node=st.integers(1, 4),
       reverse=st.booleans())
def test_colocated_layout_reaches_full_onnode_share(px, py, per_node, reverse):
    """Model boxes = tiles, workers sharing the model's nodes but numbered in another order:
    today's order sends tiles to other nodes, the placement keeps every byte on its node."""
    g = eh.Grid(10 * px, 6 * py)
    dec = eh.Decomposition.blocks(g, px, py)
    n = len(dec.boxes)
    plan = eh.Plan(g, dec, dec)
    model_node = np.arange(n) // per_node
    n_nodes = int(model_node.max()) + 1
    worker_node = model_node[::-1].copy() if reverse else np.roll(model_node, per_node)
    weights = placement.tile_node_bytes(plan, model_node, n_nodes=n_nodes)
    res = placement.place(weights, worker_node)
    assert res.after == pytest.approx(1.0)
    if n_nodes > 1 and not np.array_equal(worker_node, model_node):
        assert res.before < 1.0
    # the traffic of the placed layout agrees: every message stays on its node
    t = traffic.messages(plan, 1, 8, res.owner, model_node, worker_node)
    assert t.onnode_share() == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(g=grids(max_n=16), data=st.data())
def test_tile_node_bytes_sum_the_plans_cells(g, data):
    src = data.draw(decompositions(g))
    dst = data.draw(decompositions(g, allow_holes=False))
    plan = eh.Plan(g, src, dst, data.draw(halos(g, cap=3)))
    model_node = np.array(data.draw(st.lists(st.integers(0, 3), min_size=plan.n_src,
                                             max_size=plan.n_src)))
    w = placement.tile_node_bytes(plan, model_node, n_nodes=4)
    cells = np.zeros((plan.n_dst, 4))
    for (s, d), (lo, hi) in plan.pairs.items():
        cells[d, model_node[s]] += plan.message_cells(s, d)
    for (d, s) in plan.back_pairs:
        cells[d, model_node[s]] += plan.message_cells(s, d, back=True)
    assert np.array_equal(w, cells)
    # and the share it reports is the traffic's own on-node share
    q = data.draw(st.integers(1, plan.n_dst))
    worker_node = np.array(data.draw(st.lists(st.integers(0, 3), min_size=q, max_size=q)))
    res = placement.place(w, worker_node)
    t = traffic.messages(plan, 2, 8, res.owner, model_node, worker_node)
    if w.sum():
        assert t.onnode_share() == pytest.approx(res.after)


def test_more_workers_than_tiles_is_refused():
    with pytest.raises(ValueError, match="3 workers for 2 tiles"):
        placement.place(np.ones((2, 1)), np.zeros(3, int))
