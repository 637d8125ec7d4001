"""In-process checks of what the chunked and shared-memory strategies copy, without MPI: the
pipelined strategy's chunks cut the same way on both sides and, packed on the model side and
unpacked on the worker side, rebuild the reference tiles bit for bit; the shared strategy's
direct block copies do the same in one copy; and back again to the model boxes."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from eophis_hpc import kernels
from eophis_hpc.protocol.layout import Layout
from eophis_hpc.reference import reference_tile
from eophis_hpc.transport.mpi.pipelined import blocks_of, chunk_messages
from eophis_hpc.transport.mpi.shared import block_table, copy_pairs, pair_blocks

from strategies import BACKENDS, decompositions, grids, halos, random_pieces

SETTINGS = settings(max_examples=120, deadline=None)


@st.composite
def cases(draw):
    g = draw(grids(max_n=20))
    src = draw(decompositions(g, allow_holes=False))
    n_workers = draw(st.integers(1, 3))
    halo = draw(halos(g, cap=4))
    n_tiles = draw(st.integers(n_workers, n_workers + 2))
    try:
        layout = Layout(g, [tuple(b) for b in src.boxes], n_workers, halo, n_tiles=n_tiles)
        layout.plan(g.point)
    except ValueError:  # too many tiles for the grid, or stacked tiles reaching past the fold
        layout = Layout(g, [tuple(b) for b in src.boxes], 1, halo)
    return g, src, layout


def _pairs(layout, point):
    """``(model rank, worker, model route, worker route)`` of every pair that exchanges data."""
    for s in range(len(layout.src.boxes)):
        for mr in layout.model_send_routes(point, s):
            wr = next(r for r in layout.worker_recv_routes(point, mr.peer) if r.peer == s)
            yield s, mr.peer, mr, wr


@SETTINGS
@given(case=cases(), nz=st.integers(1, 4), dtype=st.sampled_from((np.float32, np.float64)),
       chunk=st.sampled_from((8, 64, 200, 1000, 1 << 20)), sign=st.sampled_from((1.0, -1.0)),
       backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**31))
def test_chunks_rebuild_the_reference_tiles(case, nz, dtype, chunk, sign, backend, seed):
    g, src, layout = case
    kern = kernels.get(backend)
    glb, pieces, _ = random_pieces(np.random.default_rng(seed), src, nz, dtype)
    item = np.dtype(dtype).itemsize
    batches = [np.full((len(layout.tiles_of[w]), nz) + layout.batch_shape, np.nan, dtype=dtype)
               for w in range(layout.n_workers)]
    for w, batch in enumerate(batches):
        for k, rects in layout.worker_fills(g.point, w).items():
            if len(rects):
                kern.fill(batch[k], np.ascontiguousarray(rects, dtype=np.int64), 0.0)
    for s, w, mr, wr in _pairs(layout, g.point):
        sent = chunk_messages(blocks_of(mr), nz, item, chunk)
        got = chunk_messages(blocks_of(wr), nz, item, chunk)
        sizes = [sum((p[2] - p[1]) * p[5] * p[6] for p in m) for m in sent]
        assert sizes == [sum((p[2] - p[1]) * p[5] * p[6] for p in m) for m in got]
        assert sum(sizes) == mr.cells * nz
        for m, size in zip(sent, sizes):  # a message is one chunk, or whole rows of one block
            assert size * item <= chunk or len(m) == 1
        for ms, md, size in zip(sent, got, sizes):
            buf = np.empty(size, dtype=dtype)
            pos = 0
            for k, k0, k1, j, i, nj, ni, _ in ms:
                n = (k1 - k0) * nj * ni
                kern.pack(pieces[s][k0:k1], np.array([[j, i, nj, ni]], dtype=np.int64),
                          buf[pos:pos + n])
                pos += n
            pos = 0
            for k, k0, k1, j, i, nj, ni, fold in md:
                n = (k1 - k0) * nj * ni
                kern.unpack(buf[pos:pos + n], batches[w][k][k0:k1],
                            np.array([[j, i, nj, ni, fold]], dtype=np.int64), sign)
                pos += n
    plan = layout.plan(g.point)
    for w, batch in enumerate(batches):
        for k, d in enumerate(layout.tiles_of[w]):
            want = reference_tile(glb, g, plan.read_boxes[d], layout.halo, sign)
            np.testing.assert_array_equal(batch[k], want, err_msg=f"worker {w} tile {d}")


@SETTINGS
@given(case=cases(), nz=st.integers(1, 3), dtype=st.sampled_from((np.float32, np.float64)),
       sign=st.sampled_from((1.0, -1.0)), backend=st.sampled_from(BACKENDS),
       stream=st.booleans(), seed=st.integers(0, 2**31))
def test_direct_block_copies_go_there_and_back(case, nz, dtype, sign, backend, stream, seed):
    """shm's one copy per direction, with each backend's copy kernel: the model boxes' blocks
    land in the workers' batches as the reference tiles, and the tiles' own boxes come back."""
    copy = kernels.get(backend).copy
    g, src, layout = case
    glb, pieces, _ = random_pieces(np.random.default_rng(seed), src, nz, dtype)
    batches = [np.zeros((len(layout.tiles_of[w]), nz) + layout.batch_shape, dtype=dtype)
               for w in range(layout.n_workers)]
    for s, w, mr, wr in _pairs(layout, g.point):  # put: model box -> worker batch, one copy
        copy_pairs(copy, pieces[s][None], batches[w],
                   pair_blocks(block_table(mr), (0, 0), block_table(wr), (0, 0)), sign, stream)
    plan = layout.plan(g.point)
    h = layout.halo
    for w, batch in enumerate(batches):
        for k, d in enumerate(layout.tiles_of[w]):
            np.testing.assert_array_equal(
                batch[k], reference_tile(glb, g, plan.read_boxes[d], h, sign))
    # get: the tiles' own boxes (read at offset h in the batch) -> the model boxes
    back = [np.full((1, nz) + b.shape, np.nan, dtype=dtype) for b in src.boxes]
    for w in range(layout.n_workers):
        for wr in layout.worker_send_routes(g.point, w):
            mr = next(r for r in layout.model_recv_routes(g.point, wr.peer) if r.peer == w)
            copy_pairs(copy, batches[w], back[wr.peer],
                       pair_blocks(block_table(wr), (h, h), block_table(mr), (0, 0)), 1.0, stream)
    for s, piece in enumerate(pieces):
        np.testing.assert_array_equal(back[s][0], piece, err_msg=f"model box {s}")


@SETTINGS
@given(case=cases(), nz=st.integers(1, 3), dtype=st.sampled_from((np.float32, np.float64)),
       stage=st.sampled_from((8, 64, 1000)), seed=st.integers(0, 2**31))
def test_rows_read_as_they_are_staged(case, nz, dtype, stage, seed):
    """get under shm: the worker stages its tiles' own boxes a few rows at a time; each model
    rank copies only rows already staged (the rest are NaN) and ends with its box."""
    import eophis_hpc.transport.mpi.shared as shm
    g, src, layout = case
    glb, pieces, _ = random_pieces(np.random.default_rng(seed), src, nz, dtype)
    item = np.dtype(dtype).itemsize
    old = shm.STAGE_BYTES
    shm.STAGE_BYTES = stage
    try:
        back = [np.full((1, nz) + b.shape, np.nan, dtype=dtype) for b in src.boxes]
        h = layout.halo
        for w in range(layout.n_workers):
            tiles = layout.tiles_of[w]
            full = np.full((len(tiles), nz) + tuple(layout.tile_shape), np.nan, dtype=dtype)
            for k, d in enumerate(tiles):  # the tiles' own boxes (as the worker stages them)
                b = layout.dst.boxes[d]
                full[k][:, :b.j1 - b.j0, :b.i1 - b.i0] = glb[:, b.j0:b.j1, b.i0:b.i1]
            seg = np.full_like(full, np.nan)
            flat_full = full.reshape(-1, full.shape[-1])
            flat_seg = seg.reshape(-1, seg.shape[-1])
            step = shm.stage_rows(seg.shape, item)
            routes = layout.worker_send_routes(g.point, w)
            todo = {}
            for wr in routes:
                mr = next(r for r in layout.model_recv_routes(g.point, wr.peer) if r.peer == w)
                todo[wr.peer] = [shm.read_pieces(block_table(wr), seg.shape,
                                                 block_table(mr), item), 0]
            rows, prev = flat_seg.shape[0], 0
            for done in list(range(step, rows, step)) + [rows]:
                flat_seg[prev:done] = flat_full[prev:done]
                prev = done
                for s, (plist, k) in todo.items():
                    while k < len(plist) and plist[k][0] <= done:
                        _, ks, lev, row, n, si, ni, kd, dj, di, fold = plist[k]
                        part = seg[ks][lev, row:row + n, si:si + ni]
                        assert not np.isnan(part).any(), "read a row before it was staged"
                        back[s][kd][lev, dj:dj + n, di:di + ni] = part
                        k += 1
                    todo[s][1] = k
            assert all(k == len(plist) for plist, k in todo.values())
        for s, piece in enumerate(pieces):
            np.testing.assert_array_equal(back[s][0], piece, err_msg=f"model box {s}")
    finally:
        shm.STAGE_BYTES = old
