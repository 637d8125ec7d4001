"""OASIS partitions without OASIS: apply the orange segments to a global array numbered as OASIS
numbers it (``g = j * nx + i``, x fastest, offsets from 0), reorder with every kernel backend,
and compare with the reference tiles bit for bit; the send side packs the own boxes in the
box partition's order."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eophis_hpc as eh
from eophis_hpc.reference import FILL, reference_tile, source_points
from eophis_hpc.oasis.partition import (RecvPartition, SendPartition, eophis_factors,
                                                oasis_order, worker_tiles)

from strategies import BACKENDS, grids

GRIDS = {
    "closed": eh.Grid(13, 9),
    "cyclic_ew": eh.Grid(12, 8, "cyclic"),
    "cyclic_all": eh.Grid(11, 7, "cyclic", "cyclic", "cyclic"),
    "cyclic_ns": eh.Grid(10, 9, "closed", "cyclic", "cyclic"),
    **{f"fold_{pv}{pt}": eh.Grid(14, 10, "cyclic", north="fold", pivot=pv, point=pt)
       for pv in "TF" for pt in "TUVF"},
    "fold_closed_ew": eh.Grid(9, 8, "closed", north="fold", pivot="T", point="V"),
}


def check_segments(rp: RecvPartition) -> None:
    """Segments as OASIS wants them: 0-based, sorted, disjoint, not touching, in the grid."""
    off, size = rp.offsets, rp.sizes
    assert off.dtype == np.int64 and size.dtype == np.int64
    assert np.all(size > 0) and np.all(off >= 0)
    assert off[-1] + size[-1] <= rp.global_size
    assert np.all(off[1:] > off[:-1] + size[:-1])  # sorted and separated: maximal segments
    assert int(size.sum()) == rp.n_points


def needed_points(grid, rp: RecvPartition) -> set:
    """Every global point the tiles read (the reference's source of each non-fill cell)."""
    h = rp.halo
    pts = set()
    for rb in rp.read_boxes:
        jj = np.arange(rb.j0 - h, rb.j1 + h)[:, None]
        ii = np.arange(rb.i0 - h, rb.i1 + h)[None, :]
        sj, si, kind = source_points(grid, jj, ii)
        pts.update((sj * grid.nx + si)[kind != FILL].tolist())
    return pts


def round_trip(grid, tiles, halo, levels, backend, sign, fill, wire, dtype, seed):
    rng = np.random.default_rng(seed)
    glb = rng.standard_normal((levels, grid.ny, grid.nx)).astype(wire)
    rp = RecvPartition(grid, tiles, halo)
    check_segments(rp)
    assert set(rp.points.tolist()) == needed_points(grid, rp)
    buf = oasis_order(glb, rp.offsets, rp.sizes)          # what OASIS delivers, (points, L) F
    assert buf.flags.f_contiguous and buf.shape == (rp.n_points, levels)
    batch = rp.new_batch(levels, dtype)
    batch[...] = np.nan                                    # every cell must be written
    rp.apply(buf, batch, sign=sign, fill=fill, backend=backend)
    for t, rb in enumerate(rp.read_boxes):
        want = reference_tile(glb, grid, rb, halo, sign, fill).astype(dtype)
        np.testing.assert_array_equal(batch[t], want, err_msg=f"tile {t} {rb} of {grid.describe()}")
    # send side: the own boxes, in the partition's (box) order, from outputs with and without halo
    sp = SendPartition(grid, tiles)
    want = oasis_order(glb, sp.offsets, sp.sizes)
    for out, offset in ((batch, halo), (np.ascontiguousarray(batch[:, :, halo:batch.shape[2] - halo,
                                                                     halo:batch.shape[3] - halo]), 0)):
        sbuf = sp.new_buffer(levels, wire)
        sp.pack(out, sbuf, offset=offset, backend=backend)
        np.testing.assert_array_equal(sbuf, want.astype(dtype).astype(wire))
    if sp.box is not None:
        offset, nx_loc, ny_loc, nx_glb = sp.box
        box_points = (offset + np.arange(ny_loc)[:, None] * nx_glb + np.arange(nx_loc)[None, :])
        np.testing.assert_array_equal(box_points.reshape(-1), sp.points)


@pytest.mark.parametrize("grid", list(GRIDS.values()), ids=list(GRIDS))
@pytest.mark.parametrize("workers", [1, 2, 3, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_edge_and_fold(grid, workers, backend):
    limit = grid.max_halo()
    for halo in sorted({0, 1, 2, min(3, limit if limit is not None else 3)}):
        for w, tiles in enumerate(worker_tiles(grid, workers)):
            round_trip(grid, tiles, halo, 3, backend, -1.0, 7.5, np.float64, np.float64,
                       seed=w + 10 * halo)


@settings(max_examples=120, deadline=None)
@given(grid=grids(max_n=16), data=st.data(), levels=st.integers(1, 4),
       backend=st.sampled_from(BACKENDS), sign=st.sampled_from((1.0, -1.0)),
       fill=st.sampled_from((0.0, -3.0)), wire=st.sampled_from((np.float32, np.float64)),
       cast=st.booleans(), seed=st.integers(0, 2**31))
def test_partitions_match_reference(grid, data, levels, backend, sign, fill, wire, cast, seed):
    limit = grid.max_halo()
    halo = data.draw(st.integers(0, 4 if limit is None else min(4, limit)), label="halo")
    workers = data.draw(st.integers(1, min(4, grid.nx * grid.ny)), label="workers")
    n_tiles = data.draw(st.sampled_from([None, workers, 2 * workers]), label="tiles")
    try:
        per_worker = worker_tiles(grid, workers, n_tiles)
    except ValueError:
        per_worker = worker_tiles(grid, 1)
    w = data.draw(st.integers(0, len(per_worker) - 1), label="worker")
    dtype = np.float32 if cast else wire
    try:
        round_trip(grid, per_worker[w], halo, levels, backend, sign, fill, wire, dtype, seed)
    except ValueError as exc:  # uneven tiles stacked past the fold's reach: refused clearly
        assert "halo too wide" in str(exc)


def test_full_width_cyclic_tile_holds_each_point_once():
    g = GRIDS["fold_TT"]
    rp = RecvPartition(g, [eh.Box(0, g.ny, 0, g.nx)], halo=2)
    # every point once (the halo only repeats points the tile already holds): one segment
    assert rp.n_points == g.nx * g.ny and rp.n_segments == 1
    assert rp.runs(1).dup_cells > 0


def test_a_tile_read_in_place_is_the_identity():
    g = GRIDS["closed"]
    box = eh.Box(2, 7, 3, 11)
    rp = RecvPartition(g, [box], halo=0)
    assert rp.is_identity and rp.n_segments == box.j1 - box.j0
    # a halo inside the grid is read in place too; one past an edge needs the reorder
    assert RecvPartition(g, [box], halo=1).is_identity
    assert not RecvPartition(g, [eh.Box(0, 5, 0, 8)], halo=1).is_identity
    assert not RecvPartition(GRIDS["cyclic_ew"], [eh.Box(2, 5, 0, 8)], halo=1).is_identity
    sp = SendPartition(g, [box])
    assert sp.box == (2 * 13 + 3, 8, 5, 13)
    assert SendPartition(g, [box, eh.Box(0, 2, 0, 13)]).box is None


def test_buffer_layout_is_checked():
    g = GRIDS["closed"]
    rp = RecvPartition(g, [eh.Box(0, 4, 0, 5)], halo=1)
    batch = rp.new_batch(2)
    with pytest.raises(ValueError, match="Fortran-ordered"):
        rp.apply(np.zeros((rp.n_points, 2)), batch)          # C order: refused, not copied
    with pytest.raises(ValueError, match="points="):
        rp.apply(np.zeros((rp.n_points + 1, 2), order="F"), batch)
    with pytest.raises(ValueError, match="batch must have shape"):
        rp.apply(rp.new_buffer(2), rp.new_batch(3))


def test_bad_tiles_and_halos_are_refused():
    g = GRIDS["fold_TV"]
    with pytest.raises(ValueError, match="halo"):
        RecvPartition(g, [eh.Box(0, g.ny, 0, g.nx)], halo=g.ny)
    with pytest.raises(ValueError, match="outside"):
        RecvPartition(g, [eh.Box(0, g.ny + 1, 0, 3)])
    with pytest.raises(ValueError, match="overlap"):
        SendPartition(g, [eh.Box(0, 2, 0, 3), eh.Box(1, 3, 0, 3)])


@pytest.mark.parametrize("n,nx,ny,expected", [
    (1, 720, 603, (1, 1)), (6, 720, 603, (3, 2)), (4, 720, 603, (2, 2)),
    (128, 1440, 1206, (16, 8)), (2, 62, 199, (1, 2)), (8, 62, 199, (2, 4)), (7, 30, 20, (7, 1)),
])
def test_eophis_decomposition_rule(n, nx, ny, expected):
    assert eophis_factors(n, nx, ny) == expected
    g = eh.Grid(nx, ny)
    tiles = worker_tiles(g, n)
    assert [len(t) for t in tiles] == [1] * n
    px, py = expected
    # x fastest, remainders to the first blocks (Eophis' Grid.make_local_subdomain)
    assert tiles[1 % n][0].i0 == (0 if px == 1 else -(-nx // px))
    assert sum(t[0].size for t in tiles) == nx * ny
