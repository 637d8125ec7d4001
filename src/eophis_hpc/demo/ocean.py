"""The demo's ocean: a wind-driven slab of ``levels`` layers with viscosity, drag and Coriolis
rotation, on an ORCA-like grid (cyclic east-west, north fold; u and v flip sign across it),
plus a subgrid forcing (Su, Sv) from the CNN. The same ``advance`` serves the MPI model ranks
(on their boxes) and the single-process reference (on the global array).

Run as a model rank: ``python -m eophis_hpc.demo.ocean OUT_DIR CONFIG_JSON`` (under mpiexec).
"""
from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

DT, NU, DRAG, F0, TAU0 = 1.0, 0.2, 0.02, 0.3, 0.02
TIMELINE_STEPS = 20  # steps of model rank 0 (and worker 0) kept for the timeline figure


def coriolis(grid, j0: int, j1: int) -> np.ndarray:
    """Rotation rate of rows ``[j0, j1)`` (a latitude from -80 to 90 degrees)."""
    lat = np.deg2rad(-80.0 + 170.0 * (np.arange(j0, j1) + 0.5) / grid.ny)
    return (F0 * np.sin(lat))[:, None]


def wind(grid, box, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Wind stress on ``box``: zonal jets with a wave, decaying with depth."""
    j = (np.arange(box.j0, box.j1) + 0.5)[:, None] / grid.ny
    i = (np.arange(box.i0, box.i1) + 0.5)[None, :] / grid.nx
    decay = np.exp(-np.arange(levels) / 2.0)[:, None, None]
    tx = TAU0 * np.cos(3 * np.pi * j) * (1 + 0.3 * np.sin(4 * np.pi * i))
    ty = TAU0 * 0.3 * np.sin(2 * np.pi * i) * np.sin(np.pi * j)
    return decay * tx, decay * ty


def initial_state(grid, levels: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Global (u, v) at step 0: smooth eddies plus a little noise."""
    rng = np.random.default_rng(seed)
    jj, ii = np.meshgrid(np.arange(grid.ny) / grid.ny, np.arange(grid.nx) / grid.nx, indexing="ij")
    u = 0.1 * np.sin(6 * np.pi * jj) * np.cos(4 * np.pi * ii)
    v = 0.1 * np.cos(5 * np.pi * jj) * np.sin(6 * np.pi * ii)
    u = np.repeat(u[None], levels, axis=0) + 0.01 * rng.standard_normal((levels,) + grid.shape)
    v = np.repeat(v[None], levels, axis=0) + 0.01 * rng.standard_normal((levels,) + grid.shape)
    return u, v


def advance(u_ext, v_ext, su, sv, f, tx, ty):
    """One step for arrays with a halo of 1 ``(nz, J + 2, I + 2)``; returns the new interiors.
    Forward Euler for stress, drag, viscosity and forcing, then an exact Coriolis rotation."""
    def lap(a):
        return (a[:, 2:, 1:-1] + a[:, :-2, 1:-1] + a[:, 1:-1, 2:] + a[:, 1:-1, :-2]
                - 4.0 * a[:, 1:-1, 1:-1])
    u, v = u_ext[:, 1:-1, 1:-1], v_ext[:, 1:-1, 1:-1]
    un = u + DT * (tx - DRAG * u + NU * lap(u_ext) + su)
    vn = v + DT * (ty - DRAG * v + NU * lap(v_ext) + sv)
    c, s = np.cos(f * DT), np.sin(f * DT)
    return c * un + s * vn, c * vn - s * un


def run_model_rank(out_dir: Path, cfg: dict) -> None:
    """One model rank of the coupled demo: put u, v; get Su, Sv; step; report timings. With a
    lagged exchange (``--lag L``) the same calls get the forcing of step ``n - L``."""
    import eophis_hpc as eh
    from eophis_hpc.decomposition import best_factors
    from eophis_hpc.halo import HaloExchange

    grid = eh.Grid.preset(cfg["grid"])
    nz, steps = cfg["levels"], cfg["steps"]
    n_model = cfg["model_ranks"]
    dec = eh.Decomposition.blocks(grid, *best_factors(n_model, grid.nx, grid.ny))
    cpl = eh.connect(grid, dec, strategy=cfg["strategy"], backend=cfg["backend"])
    box = cpl.box
    comm, rank = cpl.comm, cpl.comm.rank
    halo = HaloExchange(comm, grid, dec, 1, nz=nz, sign=-1.0, backend=cfg["backend"])
    u0, v0 = initial_state(grid, nz)
    u = np.zeros((nz,) + tuple(s + 2 for s in box.shape))
    v = np.zeros_like(u)
    u[:, 1:-1, 1:-1] = u0[:, box.j0:box.j1, box.i0:box.i1]
    v[:, 1:-1, 1:-1] = v0[:, box.j0:box.j1, box.i0:box.i1]
    su = np.empty((nz,) + box.shape)
    sv = np.empty_like(su)
    f = coriolis(grid, box.j0, box.j1)
    tx, ty = wind(grid, box, nz)
    t_cpl, t_model = [], []
    spans = deque(maxlen=2 * TIMELINE_STEPS)  # rank 0's last steps, for the timeline figure
    comm.Barrier()
    t_start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        cpl.put("u", u, step, offset=(1, 1))
        cpl.put("v", v, step, offset=(1, 1))
        cpl.get("su", step, out=su)
        cpl.get("sv", step, out=sv)
        t1 = time.perf_counter()
        halo(u)
        halo(v)
        u[:, 1:-1, 1:-1], v[:, 1:-1, 1:-1] = advance(u, v, su, sv, f, tx, ty)
        t2 = time.perf_counter()
        t_cpl.append(t1 - t0)
        t_model.append(t2 - t1)
        spans.append(("coupling", t0, t1))
        spans.append(("compute", t1, t2))
        if rank == 0 and cfg.get("progress", True) and ((step + 1) % max(1, steps // 10) == 0):
            print(f"  step {step + 1}/{steps}  ({time.perf_counter() - t_start:.1f} s)", flush=True)
    wall = time.perf_counter() - t_start
    halo.close()
    final = {name: comm.gather(np.ascontiguousarray(a), root=0)
             for name, a in (("u", u[:, 1:-1, 1:-1]), ("v", v[:, 1:-1, 1:-1]), ("su", su), ("sv", sv))}
    stats = comm.gather({"coupling": t_cpl, "model": t_model, "bytes": cpl.timings.bytes}, root=0)
    cpl.close()
    if rank == 0:
        glb = {}
        for name, pieces in final.items():
            arr = np.empty((nz,) + grid.shape)
            for b, p in zip(dec.boxes, pieces):
                arr[:, b.j0:b.j1, b.i0:b.i1] = p
            glb[name] = arr
        np.savez(out_dir / "coupled.npz", **glb)
        bytes_per_step = sum(sum(s["bytes"].values()) for s in stats) / steps
        summary = {"wall": wall, "bytes_per_step": bytes_per_step,
                   "coupling_median": float(np.median([np.median(s["coupling"]) for s in stats])),
                   "model_median": float(np.median([np.median(s["model"]) for s in stats])),
                   "spans": [list(s) for s in spans]}
        (out_dir / "model_timings.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    run_model_rank(out, json.loads(Path(sys.argv[2]).read_text()))
