"""Python side of the Fortran/C client tests (tests/fortran/): the workers check every tile they
receive against the reference semantics bit for bit and return a halo-using stencil; ``model``
runs the Python-client twin of toy_model.F90, writing the same result files, so the two clients
can be compared byte for byte against the same workers.

Usage: python fortran_workers.py worker|model config.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import eophis_hpc as eh
from coupled_check import stencil  # ((north - south) + 2 (east - west)) + centre, as the Fortran toy
from eophis_hpc.reference import reference_tile

JUNK_IN, JUNK_OUT = -777.0, -555.0
OFFSETS = {"u": 0, "v": 3}  # as in toy_model.F90
INITIAL = {"u": 0.5, "v": -2.0}  # the first lagged results, as INITIAL_U / INITIAL_V there


def value(grid: eh.Grid, name: str, step: int, levels: int, dtype) -> np.ndarray:
    """The global field (levels, ny, nx): integers, exact in float32 too (toy_model.F90's)."""
    k, j, i = np.meshgrid(np.arange(levels), np.arange(grid.ny), np.arange(grid.nx), indexing="ij")
    return (i + 200 * j + 40000 * k + 7 * step + OFFSETS[name]).astype(dtype)


def exchanges(cfg) -> list:
    lag_u, lag_v = cfg.get("lag_u", 0), cfg.get("lag_v", 0)
    return [eh.Exchange(inputs="u", outputs="su", levels=cfg["levels"], dtype=cfg["dtype"],
                        lag=lag_u, initial=INITIAL["u"]),
            eh.Exchange(inputs="v", outputs="sv", levels=cfg["levels"], dtype=cfg["dtype"],
                        every=cfg["every_v"], point="V", signs={"v": -1}, lag=lag_v,
                        initial=INITIAL["v"])][:cfg.get("n_exchanges", 2)]


def run_worker(cfg) -> None:
    grid = eh.Grid(**cfg["grid"])
    h = cfg["halo"]
    tunnel = eh.Tunnel(grid, halo=h, exchanges=exchanges(cfg), tiles=cfg.get("tiles"),
                       strategy=cfg.get("strategy"), verbose=False)
    calls = {"n": 0}

    @tunnel.model
    def closure(step, **inputs):
        if cfg.get("stall_at") == step:  # alive but silent: the model side must time out
            import time
            time.sleep(3600)
        out = {}
        for name, batch in inputs.items():
            spec = tunnel.schedule.fields[name]
            glb = value(grid, name, step, spec.levels, spec.dtype)
            plan = tunnel.layout.plan(spec.point)
            for k, d in enumerate(tunnel.layout.tiles_of[tunnel.rank]):
                want = reference_tile(glb, grid.with_point(spec.point), plan.read_boxes[d], h,
                                      spec.sign)
                if not np.array_equal(batch[k], want):
                    bad = np.argwhere(batch[k] != want)[0].tolist()
                    raise AssertionError(f"worker {tunnel.rank}: tile {d} of {name} at step "
                                         f"{step} differs from the reference at {bad}")
            out["s" + name] = stencil(batch, h)
        calls["n"] += 1
        return out

    tunnel.run()
    print(f"worker {tunnel.rank}: my tiles {tunnel.layout.tiles_of[tunnel.rank]}", flush=True)
    print(f"worker {tunnel.rank}: OK after {calls['n']} calls", flush=True)


def run_model(cfg) -> None:
    """The Python client doing what toy_model.F90 does (same boxes, halos, steps, files)."""
    grid = eh.Grid(**cfg["grid"])
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.rank
    px, py = cfg["px"], cfg["py"]
    pi, pj = rank % px, rank // px
    i0, i1 = pi * grid.nx // px, (pi + 1) * grid.nx // px
    j0, j1 = pj * grid.ny // py, (pj + 1) * grid.ny // py
    hm, nz, dt = cfg["model_halo"], cfg["levels"], np.dtype(cfg["dtype"])
    cpl = eh.connect(grid, eh.Box(j0, j1, i0, i1), restart=cfg.get("restart_in"))
    shape = (nz, j1 - j0 + 2 * hm, i1 - i0 + 2 * hm)
    inner = (slice(None), slice(hm, hm + j1 - j0), slice(hm, hm + i1 - i0))
    su, sv = np.full(shape, JUNK_OUT, dt), np.full(shape, JUNK_OUT, dt)
    start = cfg.get("start", 0)
    for step in range(start, start + cfg["steps"]):
        for name in ("u", "v"):
            arr = np.full(shape, JUNK_IN, dt)
            arr[inner] = value(grid, name, step, nz, dt)[:, j0:j1, i0:i1]
            cpl.put(name, arr, step, offset=(hm, hm))
        su.fill(JUNK_OUT)
        sv.fill(JUNK_OUT)
        cpl.get("su", step, out=su, offset=(hm, hm))
        cpl.get("sv", step, out=sv, offset=(hm, hm))
    cpl.close(restart=cfg.get("restart_out"))
    with open(Path(cfg["outdir"]) / f"python_rank{rank}.bin", "wb") as fh:
        fh.write(np.ascontiguousarray(su[inner]).tobytes())
        fh.write(np.ascontiguousarray(sv[inner]).tobytes())
    print(f"python model rank {rank}: done", flush=True)


if __name__ == "__main__":
    role, path = sys.argv[1], sys.argv[2]
    with open(path) as fh:
        config = json.load(fh)
    (run_model if role == "model" else run_worker)(config)
