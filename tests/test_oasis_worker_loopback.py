"""The OASIS worker loop (runtime/oasis_worker.py) driven through an in-process stand-in of
eophis_hpc's own OASIS transport interface (``transport.oasis.Component``/``Variable``).

This is NOT OASIS and not pyoasis: the stand-in answers ``get`` with the points of the
variable's partition taken from a global field, in the partition's order, as a Fortran
``(points, bundle)`` array (what OASIS3-MCT documents), and records ``put``. It checks what the
loop itself does: partitions and variable names (M_IN_n/M_OUT_n), dates ``it * dt``, due
exchanges, static fields at date 0, router and per-exchange models, the reorder into batches
and the packing of outputs (including the copy-free paths), for 1-3 workers. The real OASIS
exchange is tested in test_oasis_transport.py where pyoasis is installed.
"""
from __future__ import annotations

import numpy as np
import pytest

import eophis_hpc as eh
from eophis_hpc.reference import extend, reference_tile
from eophis_hpc.oasis import engine as oasis_worker

GRID = eh.Grid(16, 10, "cyclic", north="fold", pivot="T", point="T")
DT = 600


def field(alias: str, date: int, levels: int) -> np.ndarray:
    seed = 1000 * date + sum(map(ord, alias))
    return np.random.default_rng(seed).standard_normal((levels, GRID.ny, GRID.nx))


class _Comm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


class LoopbackComponent:
    """Stand-in for transport.oasis.Component (see the module docstring)."""

    def __init__(self, rank, size, log):
        self.localcomm = _Comm(rank, size)
        self.log = log
        self.defined = False

    def orange_partition(self, offsets, sizes, global_size):
        assert all(isinstance(v, (int, np.integer)) for v in list(offsets) + list(sizes))
        return np.concatenate([np.arange(o, o + s) for o, s in zip(offsets, sizes)])

    def box_partition(self, offset, nx_loc, ny_loc, nx_glb, global_size=-1):
        self.log.setdefault("boxes", []).append((offset, nx_loc, ny_loc, nx_glb))
        return (offset + np.arange(ny_loc)[:, None] * nx_glb + np.arange(nx_loc)[None, :]).ravel()

    def variable(self, name, points, direction, bundle):
        assert not self.defined
        return LoopbackVariable(self.log, name, points, direction, bundle)

    def enddef(self):
        self.defined = True

    def terminate(self):
        pass


class LoopbackVariable:
    def __init__(self, log, name, points, direction, bundle):
        self.log, self.name, self.points, self.direction, self.bundle = \
            log, name, points, direction, bundle
        self.active = True
        log.setdefault("vars", []).append((name, direction, bundle))

    def periods(self):
        return []

    def get(self, date, buf):
        assert buf.flags.f_contiguous and buf.shape == (self.points.size, self.bundle)
        glb = field(self.name, date, self.bundle).reshape(self.bundle, -1)
        buf[...] = glb[:, self.points].T
        self.log.setdefault("gets", []).append((self.name, date))

    def put(self, date, buf):
        assert buf.flags.f_contiguous and buf.shape == (self.points.size, self.bundle)
        out = self.log.setdefault("puts", {}).setdefault(
            (self.name, date), np.full((self.bundle, GRID.nx * GRID.ny), np.nan))
        assert np.all(np.isnan(out[:, self.points])), "a point was sent twice"
        out[:, self.points] = buf.T
        self.log.setdefault("put_buffers", []).append(buf)


def stencil(x, h):
    core = x[..., h:x.shape[-2] - h, h:x.shape[-1] - h]
    north = x[..., h + 1:x.shape[-2] - h + 1, h:x.shape[-1] - h]
    east = x[..., h:x.shape[-2] - h, h + 1:x.shape[-1] - h + 1]
    return (north - core) + 2 * (east - core)


def make_tunnel(halo, tiles, router):
    ex = [eh.Exchange(inputs=["u"], outputs=["fu"], levels=3, signs={"u": -1}, point="V"),
          eh.Exchange(inputs=["t"], outputs=["ft"], every=2),
          eh.Exchange(inputs=["mask"], static=True)]
    tunnel = eh.Tunnel(GRID, halo, ex, dt=DT, tiles=tiles, transport="oasis", verbose=False)
    seen = {"calls": 0, "steps": []}

    def closure(step, **inputs):
        seen["calls"] += 1
        seen["steps"].append(step)
        ep = tunnel.engine
        out = {}
        for name, batch in inputs.items():
            if batch is None or name == "mask":
                continue
            spec = tunnel.schedule.fields[name]
            alias = {"u": "M_IN_0", "t": "M_IN_1"}[name]
            glb = field(alias, step * DT, spec.levels)
            gp = GRID.with_point(spec.point)
            for k, rb in enumerate(ep.recv_parts[spec.point].read_boxes):
                np.testing.assert_array_equal(batch[k], reference_tile(glb, gp, rb, halo, spec.sign))
            # fu: the core only (or the batch itself without halo); ft: with the halo
            out["f" + name] = (stencil(batch, halo) if halo else batch) if name == "u" else batch
        return out

    if router:
        tunnel.router(closure)
    else:
        tunnel.model(closure)
    return tunnel, seen


@pytest.mark.parametrize("workers,tiles,halo,router", [
    (1, None, 1, True), (2, None, 2, False), (3, None, 1, True), (1, 2, 1, False), (2, 4, 1, True), (2, None, 0, False)])
def test_worker_loop_through_a_loopback(monkeypatch, workers, tiles, halo, router):
    log: dict = {}
    steps = 5
    for rank in range(workers):  # every worker rank in turn: the loopback never blocks
        monkeypatch.setattr(oasis_worker.oasis, "Component",
                            lambda name, comm, r=rank: LoopbackComponent(r, workers, log))
        tunnel, seen = make_tunnel(halo, tiles, router)
        session = oasis_worker.OasisSession([tunnel])
        mask = tunnel.receive("mask")  # static: date 0, before the loop
        ep = tunnel.engine
        np.testing.assert_array_equal(
            mask[0], reference_tile(field("M_IN_2", 0, 1), GRID, ep.recv_parts["T"].read_boxes[0], halo))
        ep.run_steps(steps)
        session.close()
        if halo == 0 and tiles is None:  # nothing to reorder or pack: OASIS' memory is the batch's
            assert all(ep.direct.values())
            assert any(np.shares_memory(b, tunnel.engine.batches["t"]) for b in log["put_buffers"])
        # router: one call per step where something is due; models: one per due exchange
        assert seen["calls"] == (steps if router else steps + 3)
    names = [v for v in log["vars"][:5]]
    assert names == [("M_IN_0", "in", 3), ("M_OUT_0", "out", 3), ("M_IN_1", "in", 1),
                     ("M_OUT_1", "out", 1), ("M_IN_2", "in", 1)]
    assert ("M_IN_2", 0) in log["gets"] and sum(1 for g in log["gets"] if g[0] == "M_IN_2") == workers
    if tiles is None:  # one tile per worker: box partitions, Eophis-style
        assert len(log["boxes"]) == workers
    # what reached the model side: the stencil of the global field with its halo, every point once
    for it in range(steps):
        date = it * DT
        got = log["puts"][("M_OUT_0", date)].reshape(3, GRID.ny, GRID.nx)
        want = extend(field("M_IN_0", date, 3), GRID.with_point("V"), halo, -1.0)
        want = stencil(want, halo) if halo else want
        np.testing.assert_array_equal(got, want)
        if it % 2 == 0:
            got = log["puts"][("M_OUT_1", date)].reshape(1, GRID.ny, GRID.nx)
            np.testing.assert_array_equal(got, field("M_IN_1", date, 1))
        else:
            assert ("M_OUT_1", date) not in log["puts"]


def test_oasis_run_needs_steps_and_dt(monkeypatch):
    monkeypatch.setattr(oasis_worker.oasis, "Component",
                        lambda name, comm: LoopbackComponent(0, 1, {}))
    t = eh.Tunnel(GRID, 1, [eh.Exchange(inputs=["a"], every=1)], transport="oasis")
    with pytest.raises(ValueError, match="needs dt"):
        oasis_worker.OasisSession([t])
    t = eh.Tunnel(GRID, 1, [eh.Exchange(inputs=["a"], every=1)], dt=60, transport="oasis")
    with pytest.raises(ValueError, match="run\\(steps=N\\)"):
        t.run()


def test_compat_script_over_the_oasis_loop(monkeypatch, tmp_path):
    """An Eophis script's calls with set_transport('oasis'), one worker, through the loopback."""
    import eophis_hpc.compat as eophis
    from eophis_hpc.compat import Freqs

    monkeypatch.chdir(tmp_path)
    eophis.reset()
    log: dict = {}
    monkeypatch.setattr(oasis_worker.oasis, "Component",
                        lambda name, comm: LoopbackComponent(0, 1, log))
    cfg = [{"label": "TO_EARTH",
            "grids": {"g": {"npts": (GRID.nx, GRID.ny), "halos": 1, "bnd": ("cyclic", "NFold"),
                            "folding": ("T", "T")}},
            "exchs": [{"freq": Freqs.HOURLY, "grd": "g", "lvl": 2, "in": ["sst"], "out": ["sst_var"]},
                      {"freq": Freqs.STATIC, "grd": "g", "lvl": 1, "in": ["msk"], "out": []}]}]
    step, niter = 1200, 7
    try:
        eophis.set_mode("preprod")
        eophis.register_tunnels(cfg)
        eophis.write_coupling_namelist(simulation_time=step * niter)
        eophis.reset()
        eophis.set_mode("prod")
        eophis.set_transport("oasis")
        earth, = eophis.register_tunnels(cfg)  # checks the namcouple just written
        eophis.open_tunnels()
        msk = earth.receive("msk")
        assert msk.shape == (GRID.nx + 2, GRID.ny + 2, 1)

        @eophis.all_in_all_out(geo_model=earth, step=step, niter=niter)
        def loop_core(**inputs):
            sst = inputs["sst"]
            return {"sst_var": None if sst is None else sst + 100.0 * msk}

        eophis.starter(loop_core)
        assert earth.calls == 3  # dates 0, 3600, 7200
        eophis.close_tunnels()
    finally:
        eophis.reset()
    m = extend(field("M_IN_1", 0, 1), GRID, 1)[:, 1:-1, 1:-1]
    for date in (0, 3600, 7200):
        got = log["puts"][("M_OUT_0", date)].reshape(2, GRID.ny, GRID.nx)
        np.testing.assert_array_equal(got, field("M_IN_0", date, 2) + 100.0 * m)
    assert sorted(d for (n, d) in log["puts"]) == [0, 3600, 7200]


@pytest.mark.parametrize("workers,tiles,framework,chunks,stack,land", [
    (1, 4, "torch", 2, True, True), (2, 4, "numpy", 2, False, True),
    (2, None, "torch", 1, True, False), (3, 6, "numpy", 3, True, False)])
def test_oasis_engine_feeds_the_model_like_the_mpi_engine(monkeypatch, workers, tiles, framework,
                                                           chunks, stack, land):
    """Over OASIS the model is called through the same Feed as over MPI: the framework's
    tensors, chunks, stacked inputs, land tiles left out (their outputs go back as the fill
    value), and the ``tiles``/``step`` keywords, each batch row the reference tile it claims."""
    if framework == "torch":
        torch = pytest.importorskip("torch")
    from eophis_hpc.oasis.partition import worker_tiles
    halo = 1
    every = [b for w in worker_tiles(GRID, workers, tiles) for b in w]
    land_box = every[0]
    base = field

    def fields(alias, date, levels):
        if alias == "M_IN_2":  # the mask: zero over the first tile's box when land is on
            mask = np.ones((levels, GRID.ny, GRID.nx))
            if land:
                mask[:, land_box.j0:land_box.j1, land_box.i0:land_box.i1] = 0.0
            return mask
        return base(alias, date, levels)

    monkeypatch.setattr(__import__("sys").modules[__name__], "field", fields)
    steps, log, seen = 3, {}, {"rows": [], "chunks": []}
    for rank in range(workers):
        monkeypatch.setattr(oasis_worker.oasis, "Component",
                            lambda name, comm, r=rank: LoopbackComponent(r, workers, log))
        ex = [eh.Exchange(inputs=["u", "v"], outputs=["fu"], levels=2),
              eh.Exchange(inputs=["mask"], static=True)]
        tunnel = eh.Tunnel(GRID, halo, ex, dt=DT, tiles=tiles, transport="oasis", verbose=False,
                           framework=framework, chunks=chunks, stack=stack,
                           land="mask" if land else None)

        @tunnel.model
        def closure(tiles, step, **batches):
            date = step * DT
            x = batches["u_v"] if stack else None
            u = x[:, :2] if stack else batches["u"]
            v = x[:, 2:] if stack else batches["v"]
            if framework == "torch":
                assert isinstance(u, torch.Tensor)
                u, v = u.numpy(), v.numpy()
            ep = tunnel.engine
            seen["chunks"].append(len(tiles))
            for r, d in enumerate(np.asarray(tiles).tolist()):
                assert not (land and every[d] == land_box), "a land tile reached the model"
                seen["rows"].append(d)
                rb = ep.recv_parts["T"].read_boxes[ep.feed.tiles.index(d)]
                np.testing.assert_array_equal(u[r], reference_tile(field("M_IN_0", date, 2),
                                                                   GRID, rb, halo))
                np.testing.assert_array_equal(v[r], reference_tile(field("M_IN_1", date, 2),
                                                                   GRID, rb, halo))
            core = (u + 2 * v)[:, :, halo:-halo, halo:-halo]
            return {"fu": torch.from_numpy(np.ascontiguousarray(core))
                    if framework == "torch" else core}

        session = oasis_worker.OasisSession([tunnel])
        tunnel.run(steps)
        session.close()
        assert "packed" not in tunnel.describe() and "OASIS" in tunnel.describe()
    n_sea = len(every) - (1 if land else 0)
    assert sorted(set(seen["rows"])) == [d for d, b in enumerate(every)
                                         if not (land and b == land_box)]
    assert len(seen["rows"]) == steps * n_sea
    assert max(seen["chunks"]) <= -(-n_sea // chunks) + 1
    for it in range(steps):
        date = it * DT
        got = log["puts"][("M_OUT_0", date)].reshape(2, GRID.ny, GRID.nx)
        want = field("M_IN_0", date, 2) + 2 * field("M_IN_1", date, 2)
        if land:
            want[:, land_box.j0:land_box.j1, land_box.i0:land_box.i1] = 0.0
        np.testing.assert_array_equal(got, want)
