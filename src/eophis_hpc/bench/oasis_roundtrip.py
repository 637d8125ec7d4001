"""OASIS3-MCT round-trip job of ``eophis-hpc bench --only oasis``: one path per job, since a
process initialises OASIS once.

Usage (MPMD, model ranks first, in a folder holding the namcouple)::

    mpiexec -n P python -m eophis_hpc.bench.oasis_roundtrip model CONFIG.json \
          : -n Q python -m eophis_hpc.bench.oasis_roundtrip worker CONFIG.json

CONFIG: ``grid`` (a preset), ``levels``, ``halo``, ``P``, ``Q``, ``warmup``, ``steps``, ``dt``
(seconds between coupling dates), ``path``, ``out`` (the record, written by model rank 0) and
``time_limit``. Per step, at date ``step * dt``, one float64 field of ``levels`` goes from the
model to the workers and back. The model side is plain pyoasis in both paths (component
``ocean``, one ``BoxPartition`` per rank, ``E_OUT_0`` out and ``E_IN_0`` back, as NEMO's OASIS
interface); the workers (component ``eophis``) are:

- ``pyoasis``: plain pyoasis, a ``BoxPartition`` of the worker's tile (Eophis' decomposition),
  ``get`` into a buffer and ``put`` of that buffer: what OASIS itself costs for these bytes;
- ``pyoasis_halo``: plain pyoasis with the partitions eophis_hpc defines: ``get`` through the
  orange partition of the tile with its halo, ``put`` of the tile's box (its values known in
  advance): the OASIS share of the ``eophis`` path, without its reorder and model call;
- ``eophis``: ``eh.Tunnel(transport="oasis")`` with an identity model: orange partition with the
  halo, reorder into the batch, the model call, the tile's box sent back.

A step's time is taken on every model rank between a model-side ``Barrier`` and the end of its
``get``; the step's figure is the maximum over the model ranks and the path's figure the median
over the timed steps. The field that comes back must equal what went out, and the eophis path
checks its first batch against the reference semantics (``eophis_hpc.reference``). A watchdog
aborts the job after ``time_limit`` seconds; any exception aborts it too.
"""
from __future__ import annotations

import json
import sys
import time
import traceback

import numpy as np

import eophis_hpc as eh
from eophis_hpc.oasis.partition import RecvPartition, worker_tiles
from eophis_hpc.measure.roundtrip import watchdog
from eophis_hpc.reference import reference_tile

PATHS = ("pyoasis", "pyoasis_halo", "eophis")
MODEL_COMPONENT, WORKER_COMPONENT = "ocean", "eophis"
FIELD_IN, FIELD_OUT = "u", "fu"  # the namcouple's E_OUT_0 -> M_IN_0 and M_OUT_0 -> E_IN_0


def namcouple_tunnel(cfg: dict) -> dict:
    """The job's tunnel as the dictionary :func:`eophis_hpc.oasis.namcouple.coupling_fields`
    reads (one exchange every ``dt`` seconds)."""
    g = eh.Grid.preset(cfg["grid"])
    return {"label": "BENCH", "grids": {cfg["grid"]: {"npts": (g.nx, g.ny)}},
            "exchs": [{"freq": cfg["dt"], "grd": cfg["grid"], "in": [FIELD_IN],
                       "out": [FIELD_OUT]}]}


def field_box(g: eh.Grid, box, levels) -> np.ndarray:
    """The test field on ``box`` (``levels`` a count or a list of level indices), ``(z, y, x)``:
    the same values whichever rank computes them."""
    jj = np.arange(box.j0, box.j1, dtype=np.int64)[:, None]
    ii = np.arange(box.i0, box.i1, dtype=np.int64)[None, :]
    base = ((jj * g.nx + ii) % 65521).astype(np.float64) / 65521.0
    ks = range(levels) if isinstance(levels, int) else levels
    return np.stack([base + k for k in ks])


def as_points(arr: np.ndarray):
    """``(z, y, x)`` -> the Fortran-ordered ``(points, z)`` array OASIS moves."""
    import pyoasis
    return pyoasis.asarray(arr.reshape(arr.shape[0], -1).T)


def _params(pyoasis):
    return getattr(pyoasis, "OASIS", None) or pyoasis.OasisParameters


def _terminate(comp) -> None:
    term = getattr(comp, "terminate", None)
    if term is not None:  # pyoasis >= 5 finalises in the destructor otherwise
        term()



# --------------------------------------------------------------------------- model side
def model_main(cfg: dict) -> None:
    import pyoasis
    from mpi4py import MPI
    eh.errors.release_exit_guard()  # plain pyoasis: this side never joins eophis_hpc
    g = eh.Grid.preset(cfg["grid"])
    nz, P, Q = cfg["levels"], cfg["P"], cfg["Q"]
    nsteps = cfg["warmup"] + cfg["steps"]
    comp = pyoasis.Component(MODEL_COMPONENT, True, MPI.COMM_WORLD)
    comm = comp.localcomm
    if comm.size != P or MPI.COMM_WORLD.size != P + Q:
        raise RuntimeError(f"launched with {comm.size} model ranks of {MPI.COMM_WORLD.size}, "
                           f"the configuration says P={P}, Q={Q}")
    box = eh.Decomposition.auto(g, P).boxes[comm.rank]
    bj, bi = box.shape
    part = pyoasis.BoxPartition(box.j0 * g.nx + box.i0, bi, bj, g.nx)
    params = _params(pyoasis)
    put = pyoasis.Var("E_OUT_0", part, params.OUT, bundle_size=nz)
    get = pyoasis.Var("E_IN_0", part, params.IN, bundle_size=nz)
    comp.enddef()
    arr = as_points(field_box(g, box, nz))
    out = as_points(np.zeros((nz, bj, bi)))
    samples = []
    for step in range(nsteps):
        date = int(step * cfg["dt"])
        out.fill(np.nan)
        comm.Barrier()
        t0 = time.perf_counter()
        put.put(date, arr)
        get.get(date, out)
        samples.append(time.perf_counter() - t0)
        if not np.array_equal(out, arr):
            raise RuntimeError(f"{cfg['path']} path: model rank {comm.rank} got back a different "
                               f"field at date {date}")
    local = np.asarray(samples)
    worst = np.empty_like(local) if comm.rank == 0 else None
    comm.Reduce(local, worst, op=MPI.MAX, root=0)
    nbytes = comm.reduce(2 * arr.nbytes, root=0)
    if comm.rank == 0:
        timed = worst[cfg["warmup"]:].tolist()
        record = {"config": cfg, "path": cfg["path"], "bytes": nbytes,
                  "median": float(np.median(timed)), "samples": timed,
                  "warmup_samples": worst[:cfg["warmup"]].tolist()}
        with open(cfg["out"], "w") as fh:
            json.dump(record, fh, indent=1)
    _terminate(comp)
    del comp


# --------------------------------------------------------------------------- worker side
def worker_pyoasis(cfg: dict) -> None:
    import pyoasis
    from mpi4py import MPI
    eh.errors.release_exit_guard()  # plain pyoasis: this side never joins eophis_hpc
    g = eh.Grid.preset(cfg["grid"])
    nz = cfg["levels"]
    comp = pyoasis.Component(WORKER_COMPONENT, True, MPI.COMM_WORLD)
    w = comp.localcomm.rank
    tile = worker_tiles(g, cfg["Q"])[w][0]
    tj, ti = tile.shape
    part = pyoasis.BoxPartition(tile.j0 * g.nx + tile.i0, ti, tj, g.nx)
    params = _params(pyoasis)
    want = as_points(field_box(g, tile, nz))
    if cfg["path"] == "pyoasis_halo":  # the halo's orange partition in, the box out
        rp = RecvPartition(g, [tile], cfg["halo"])
        recv = pyoasis.OrangePartition([int(v) for v in rp.offsets], [int(v) for v in rp.sizes],
                                       int(rp.global_size))
        buf = pyoasis.asarray(np.zeros((rp.n_points, nz)))
    else:
        recv, buf = part, as_points(np.zeros((nz, tj, ti)))
    get = pyoasis.Var("M_IN_0", recv, params.IN, bundle_size=nz)
    put = pyoasis.Var("M_OUT_0", part, params.OUT, bundle_size=nz)
    comp.enddef()
    back = want if cfg["path"] == "pyoasis_halo" else buf
    for step in range(cfg["warmup"] + cfg["steps"]):
        date = int(step * cfg["dt"])
        get.get(date, buf)
        if step == 0 and cfg["path"] == "pyoasis" and not np.array_equal(buf, want):
            raise RuntimeError(f"pyoasis path: worker {w} received a different field")
        put.put(date, back)
    _terminate(comp)
    del comp


def worker_eophis(cfg: dict) -> None:
    g = eh.Grid.preset(cfg["grid"])
    nz, h = cfg["levels"], cfg["halo"]
    nsteps = cfg["warmup"] + cfg["steps"]
    tunnel = eh.Tunnel(g, h, [eh.Exchange(inputs=[FIELD_IN], outputs=[FIELD_OUT], levels=nz)],
                       dt=cfg["dt"], transport="oasis", verbose=False)
    calls = {"n": 0}

    @tunnel.model
    def identity(u):
        if calls["n"] == 0:  # the first batch against the reference semantics
            tile = worker_tiles(g, cfg["Q"])[tunnel.rank][0]
            lv = sorted({0, nz - 1})
            want = reference_tile(field_box(g, eh.Box(0, g.ny, 0, g.nx), lv), g, tile, h)
            if not np.array_equal(u[0][lv], want):
                raise RuntimeError(f"eophis path: worker {tunnel.rank}: the batch differs from "
                                   "the reference")
        calls["n"] += 1
        return {FIELD_OUT: u}

    tunnel.run(nsteps)
    if calls["n"] != nsteps:
        raise RuntimeError(f"eophis path: {calls['n']} model calls for {nsteps} steps")


# --------------------------------------------------------------------------- entry point
def main(argv) -> None:
    if len(argv) != 3 or argv[1] not in ("model", "worker"):
        sys.exit("usage: python -m eophis_hpc.bench.oasis_roundtrip model|worker CONFIG.json")
    with open(argv[2]) as fh:
        cfg = json.load(fh)
    if cfg.get("path") not in PATHS:
        sys.exit(f"oasis_roundtrip: path {cfg.get('path')!r} is not one of {PATHS}")
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    dog = watchdog(float(cfg.get("time_limit", 600)), world)
    try:
        if argv[1] == "model":
            model_main(cfg)
        elif cfg["path"] in ("pyoasis", "pyoasis_halo"):
            worker_pyoasis(cfg)
        else:
            worker_eophis(cfg)
    except BaseException:
        print(f"oasis_roundtrip: world rank {world.rank} ({argv[1]}, {cfg['path']}):\n"
              f"{traceback.format_exc()}", file=sys.stderr, flush=True)
        time.sleep(0.5)
        world.Abort(1)
    dog.cancel()


if __name__ == "__main__":
    main(sys.argv)
