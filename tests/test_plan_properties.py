"""Property-based checks: every plan and backend reproduces the reference semantics bit for bit."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eophis_hpc as eh
from eophis_hpc.transport.local import gather_local, scatter_local
from eophis_hpc.reference import reference_tile, source_points

from strategies import BACKENDS, decompositions, grids, halos, random_pieces

SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def cases(draw):
    g = draw(grids())
    src = draw(decompositions(g))
    dst = draw(decompositions(g))
    halo = draw(halos(g))
    tile_shape = None
    if draw(st.booleans()):
        mh, mw = dst.max_shape()
        tile_shape = (mh + draw(st.integers(0, 1)), mw + draw(st.integers(0, 1)))
        try:
            eh.Plan(g, eh.Decomposition.auto(g, 1), dst, halo=halo, tile_shape=tile_shape)
        except ValueError:  # the enlarged tiles would reach past the fold's limit
            tile_shape = None
    return g, src, dst, halo, tile_shape


@SETTINGS
@given(case=cases(), nz=st.integers(1, 5), dtype=st.sampled_from((np.float32, np.float64)),
       backend=st.sampled_from(BACKENDS), sign=st.sampled_from((1.0, -1.0)),
       fill=st.sampled_from((0.0, 7.5)), seed=st.integers(0, 2**31))
def test_scatter_matches_reference_and_gather_inverts(case, nz, dtype, backend, sign, fill, seed):
    g, src, dst, halo, tile_shape = case
    glb, pieces, owned = random_pieces(np.random.default_rng(seed), src, nz, dtype)
    plan = eh.Plan(g, src, dst, halo=halo, tile_shape=tile_shape)
    tiles = scatter_local(plan, pieces, backend=backend, sign=sign, fill=fill)
    for d, tile in enumerate(tiles):
        expected = reference_tile(glb, g, plan.read_boxes[d], halo, sign, fill, owned)
        assert tile.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(tile, expected, err_msg=f"tile {d} of {plan}")
    # strip the halo (and the tile_shape enlargement): each tile's own box only
    stripped = [np.ascontiguousarray(t[:, halo:halo + b.j1 - b.j0, halo:halo + b.i1 - b.i0])
                for t, b in zip(tiles, dst.boxes)]
    back = gather_local(plan, stripped, backend=backend, fill=fill)
    dst_owned = dst.owner_map() >= 0
    for s, (b, piece) in enumerate(zip(src.boxes, pieces)):
        want = np.where(dst_owned[b.j0:b.j1, b.i0:b.i1], piece, np.asarray(fill, dtype=dtype))
        np.testing.assert_array_equal(back[s], want, err_msg=f"source box {s}")


@SETTINGS
@given(case=cases(), backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**31))
def test_gather_accepts_outputs_with_halo(case, backend, seed):
    g, src, dst, halo, tile_shape = case
    _, pieces, _ = random_pieces(np.random.default_rng(seed), src, 2, np.float64)
    plan = eh.Plan(g, src, dst, halo=halo, tile_shape=tile_shape)
    tiles = scatter_local(plan, pieces, backend=backend)
    with_halo = gather_local(plan, tiles, backend=backend)
    stripped = gather_local(plan, 
        [np.ascontiguousarray(t[:, halo:t.shape[1] - halo, halo:t.shape[2] - halo]) for t in tiles],
        backend=backend)
    for a, b in zip(with_halo, stripped):
        np.testing.assert_array_equal(a, b)


@SETTINGS
@given(case=cases(), seed=st.integers(0, 2**31))
def test_cast_in_unpack_matches_cast_of_reference(case, seed):
    """float64 pieces -> float32 tiles: one rounding, in the kernel, equal to a cast afterwards."""
    g, src, dst, halo, tile_shape = case
    glb, pieces, owned = random_pieces(np.random.default_rng(seed), src, 2, np.float64)
    plan = eh.Plan(g, src, dst, halo=halo, tile_shape=tile_shape)
    for backend in BACKENDS:
        tiles = scatter_local(plan, pieces, backend=backend, sign=-1.0, dtype=np.float32)
        for d, tile in enumerate(tiles):
            ref = reference_tile(glb, g, plan.read_boxes[d], halo, -1.0, 0.0, owned)
            np.testing.assert_array_equal(tile, ref.astype(np.float32))


@SETTINGS
@given(case=cases())
def test_serialised_plan_is_identical(case):
    g, src, dst, halo, tile_shape = case
    plan = eh.Plan(g, src, dst, halo=halo, tile_shape=tile_shape)
    again = eh.Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    np.testing.assert_array_equal(again.blocks, plan.blocks)
    np.testing.assert_array_equal(again.fills, plan.fills)
    np.testing.assert_array_equal(again.back_blocks, plan.back_blocks)
    assert again.pairs == plan.pairs and again.read_boxes == plan.read_boxes
    for s in range(plan.n_src):
        sent = sum(np.prod(again.pack_runs(s, d)[:, 2:4], axis=1).sum()
                   for (ss, d) in again.pairs if ss == s)
        assert sent == sum(plan.message_cells(s, d) for (ss, d) in plan.pairs if ss == s)


@SETTINGS
@given(g=grids(), data=st.data())
def test_blocks_cover_each_halo_cell_exactly_once(g, data):
    """Blocks and fill rects of the plan partition every tile (no fills when nothing is a hole)."""
    src = data.draw(decompositions(g, allow_holes=False))
    dst = data.draw(decompositions(g))
    plan = eh.Plan(g, src, dst, halo=data.draw(halos(g)))
    for d in range(plan.n_dst):
        count = np.zeros(plan.tile_shape_of(d), dtype=np.int64)
        for dj, di, nj, ni in plan.fill_rects(d).tolist():
            count[dj:dj + nj, di:di + ni] += 1
        for s in range(plan.n_src):
            for dj, di, nj, ni, _ in plan.unpack_runs(s, d).tolist():
                count[dj:dj + nj, di:di + ni] += 1
        assert np.all(count == 1), f"tile {d}: cells written {count.min()}..{count.max()} times"


def test_fold_formula_by_hand():
    """Spot values of the fold table of docs/architecture.md, independent of source_points' vector code."""
    for pivot, table in (("T", {"T": (1, 1), "U": (1, 0), "V": (2, 1), "F": (2, 0)}),
                         ("F", {"T": (0, 0), "U": (0, -1), "V": (1, 0), "F": (1, -1)})):
        for point, (a, b) in table.items():
            g = eh.Grid(nx=10, ny=8, east_west="cyclic", north="fold", pivot=pivot, point=point)
            for k in range(3):
                for i in (-2, 0, 3, 9, 11):
                    sj, si, kind = source_points(g, np.array(8 + k), np.array(i))
                    assert (int(sj), int(si), int(kind)) == (8 - 1 - a - k, (10 - 1 - i % 10 + b) % 10, 2)


def test_orca2_plan_example_from_issue():
    g = eh.Grid(nx=180, ny=148, east_west="cyclic", south="closed", north="fold", pivot="T",
                point="T")
    assert (g.nx, g.ny) == (180, 148)
    src = eh.Decomposition.blocks(g, px=4, py=3)
    assert [tuple(b) for b in src.boxes[:2]] == [(0, 50, 0, 45), (0, 50, 45, 90)]
    dst = eh.Decomposition.auto(g, n=2)
    plan = eh.Plan(g, src, dst, halo=3)
    rng = np.random.default_rng(1)
    glb, pieces, owned = random_pieces(rng, src, 3, np.float32)
    tiles = scatter_local(plan, pieces, backend="cython", sign=1.0, fill=0.0)
    assert [t.shape for t in tiles] == [(3, 148 + 6, 90 + 6)] * 2
    for d, t in enumerate(tiles):
        np.testing.assert_array_equal(t, reference_tile(glb, g, dst.boxes[d], 3))
    back = gather_local(plan, tiles, backend="cython")
    for a, b in zip(back, pieces):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name,shape", [("ORCA2", (148, 180)), ("eORCA025", (1206, 1440)),
                                        ("eORCA05", (603, 720)), ("ORCA1", (331, 360)),
                                        ("DINO", (199, 62))])
def test_presets(name, shape):
    g = eh.Grid.preset(name, point="V")
    assert g.shape == shape and g.point == "V"


def test_nemo_decomposition_drops_land_blocks():
    g = eh.Grid.preset("ORCA2")
    mask = np.ones(g.shape, dtype=bool)
    mask[:60, :50] = False  # a continent covering block (0, 0) of 4x3
    dec = eh.Decomposition.nemo(g, 4, 3, mask=mask)
    assert len(dec.boxes) == 11 and dec.holes
    assert eh.Box(0, 50, 0, 45) not in dec.boxes
    assert len(eh.Decomposition.nemo(g, 4, 3).boxes) == 12


def test_traffic_counts_neighbours():
    g = eh.Grid.preset("ORCA2")
    plan = eh.Plan(g, eh.Decomposition.blocks(g, 6, 4), eh.Decomposition.blocks(g, 3, 2), halo=2)
    t = plan.traffic(nz=2, itemsize=4)
    total_recv = sum(t["scatter"]["recv_bytes"].values())
    filled = sum(int(np.sum(r[:, 2] * r[:, 3])) for r in map(plan.fill_rects, range(plan.n_dst)))
    cells = sum(int(np.prod(plan.tile_shape_of(d))) for d in range(plan.n_dst))
    assert filled > 0  # the closed south edge
    assert total_recv == (cells - filled) * 2 * 4
    assert max(t["scatter"]["send_messages"].values()) <= 4


@SETTINGS
@given(case=cases(), dtype=st.sampled_from((np.float32, np.float64)), seed=st.integers(0, 2**31))
def test_streaming_store_unpack_matches_reference(case, dtype, seed):
    """The Cython unpack's streaming-store path (used above a size threshold) gives the same
    tiles; the threshold is forced to 0 so small cases take it."""
    from eophis_hpc._ext import _copy_kernels

    g, src, dst, halo, tile_shape = case
    glb, pieces, owned = random_pieces(np.random.default_rng(seed), src, 3, dtype)
    plan = eh.Plan(g, src, dst, halo=halo, tile_shape=tile_shape)
    old = _copy_kernels.set_stream_bytes(0, 0)
    try:
        tiles = scatter_local(plan, pieces, backend="cython", sign=-1.0)
    finally:
        _copy_kernels.set_stream_bytes(*old)
    for d, tile in enumerate(tiles):
        np.testing.assert_array_equal(
            tile, reference_tile(glb, g, plan.read_boxes[d], halo, -1.0, 0.0, owned))
