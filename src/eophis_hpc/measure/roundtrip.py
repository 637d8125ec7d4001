"""MPI round-trip benchmark (issue 3): one configuration, three paths, same job, same bytes.

Usage (MPMD, model ranks first; used by ``benchmarks/run_roundtrip.py``, ``eophis-hpc bench``
and ``eophis-hpc tune``)::

    mpiexec -n P python -m eophis_hpc.measure.roundtrip model CONFIG.json \
          : -n Q python -m eophis_hpc.measure.roundtrip worker CONFIG.json

Options of CONFIG besides the field (grid, levels, dtype, halo, P, Q, warmup, steps, out):
``strategy``, ``backend``, ``tiles`` (total tiles), ``naive`` (false skips path (c)),
``buffers`` (true: the model puts from and gets into ``cpl.buffer`` arrays), ``chunk``
(bytes per message of the ``pipelined`` strategy) and ``pipeline`` (false: the workers keep one
set of input batches, ``Tunnel(pipeline=False)``).

Per round trip (one field ``u`` of ``levels`` x the model's box, out and back):

(a) ``eophis``: model ``put`` -> workers receive their tiles with the halo -> identity model ->
    workers send their tiles' own boxes back -> model ``get``;
(b) ``raw``: each model rank's box (no halo) ``Isend``/``Irecv`` over ``COMM_WORLD`` to worker
    ``r % Q`` and the same bytes back (the transport's limit for these bytes on these ranks);
(c) ``naive``: ``Gatherv`` of the boxes to model rank 0, ``numpy.pad``-style halo construction
    on the global array, each worker's tile with halo sent as a contiguous copy, the tiles'
    interiors sent back, ``Scatterv`` to the model ranks (the same ``Q`` workers and tiles).

A step's time is measured on every model rank between a model-side ``Barrier`` and the end of
its own round trip; the step's figure is the maximum over model ranks (when the slowest rank has
its data back), and a path's figure is the median over the timed steps (after ``warmup`` steps;
``naive_warmup`` and ``naive_steps``, when given, apply to the naive path).
Every path is checked: the data that comes back must equal what went out, the workers' first
batch must equal the reference semantics (``eophis_hpc.reference``) on two levels, and the naive
halo construction must equal ``reference.extend`` on two levels.

A watchdog aborts the whole job after ``time_limit`` seconds, and any exception aborts it too,
so a fault never leaves ranks hanging. Model rank 0 writes the JSON record to ``cfg["out"]``.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

import numpy as np

import eophis_hpc as eh
from eophis_hpc import kernels
from eophis_hpc.reference import extend, reference_tile

TAG_RAW = 9101
TAG_NAIVE = 9102
TAG_REPORT = 9103


# --------------------------------------------------------------------------- configuration
def grid_of(cfg) -> eh.Grid:
    return eh.Grid.preset(cfg["grid"])


def field_box(g: eh.Grid, box, levels, dtype) -> np.ndarray:
    """The global test field on ``box`` for ``levels`` (a count, or a list of level indices):
    the same values whichever rank computes them."""
    j0, j1, i0, i1 = box
    jj = np.arange(j0, j1, dtype=np.int64)[:, None]
    ii = np.arange(i0, i1, dtype=np.int64)[None, :]
    base = ((jj * g.nx + ii) % 65521).astype(np.float64) / 65521.0
    ks = range(levels) if isinstance(levels, int) else levels
    out = np.empty((len(ks), j1 - j0, i1 - i0), dtype=dtype)
    for n, k in enumerate(ks):
        out[n] = base + k
    return out


def naive_total(cfg) -> int:
    """Steps of the naive path (it may run fewer: it is the slowest by far on big fields)."""
    return cfg.get("naive_warmup", cfg["warmup"]) + cfg.get("naive_steps", cfg["steps"])


def check_levels(levels: int) -> list[int]:
    return sorted({0, levels - 1})


# --------------------------------------------------------------------------- naive halo
def pad_extend(glb: np.ndarray, g: eh.Grid, h: int, fill: float = 0.0) -> np.ndarray:
    """``numpy.pad``-style halo of width ``h`` around the global ``(nz, ny, nx)`` array, for the
    grid's boundary conditions (what a user without plans would write)."""
    if h == 0:
        return glb
    ny, nx = g.ny, g.nx
    ew = "wrap" if g.east_west == "cyclic" else "constant"
    kw = {} if ew == "wrap" else {"constant_values": fill}
    ext = np.pad(glb, ((0, 0), (0, 0), (h, h)), mode=ew, **kw)
    ext = np.pad(ext, ((0, 0), (h, h), (0, 0)), mode="constant", constant_values=fill)
    if g.south == "cyclic":
        ext[:, :h, :] = ext[:, ny:ny + h, :]
    if g.north == "cyclic":
        ext[:, h + ny:, :] = ext[:, h:2 * h, :]
    elif g.north == "fold":
        a, b = g.fold_shift
        cols = np.mod(nx - 1 - np.arange(-h, nx + h) + b, nx)
        if g.east_west != "cyclic":  # columns outside the grid stay filled
            inside = slice(h, h + nx)
            cols = cols[h:h + nx]
        else:
            inside = slice(None)
        for k in range(h):
            ext[:, h + ny + k, inside] = glb[:, ny - 1 - a - k, cols]
    return ext


# --------------------------------------------------------------------------- helpers
def watchdog(seconds: float, world) -> threading.Timer:
    def fire():
        print(f"roundtrip: world rank {world.rank}: no end after {seconds:.0f} s, aborting",
              file=sys.stderr, flush=True)
        world.Abort(3)
    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


def per_step_max(comm, samples: list[float]) -> list[float] | None:
    """Max over the ranks of ``comm`` of each step's duration (on rank 0; None elsewhere)."""
    arr = np.asarray(samples, dtype=np.float64)
    out = np.empty_like(arr) if comm.rank == 0 else None
    comm.Reduce(arr, out, op=mpi().MAX, root=0)
    return None if out is None else out.tolist()


def mpi():
    from mpi4py import MPI
    return MPI


def stats(samples: list[float], warmup: int) -> dict:
    timed = samples[warmup:]
    return {"median": float(np.median(timed)), "min": float(np.min(timed)),
            "max": float(np.max(timed)), "mean": float(np.mean(timed)), "rounds": len(timed),
            "samples": timed, "warmup_samples": samples[:warmup]}


def job_params(cfg) -> tuple:
    """``(grid, P, Q, levels, halo, dtype, steps with warm-up)`` of a job's config."""
    return (grid_of(cfg), cfg["P"], cfg["Q"], cfg["levels"], cfg["halo"], np.dtype(cfg["dtype"]),
            cfg["warmup"] + cfg["steps"])


# --------------------------------------------------------------------------- model side
def model_main(cfg, world, comm) -> None:
    MPI = mpi()
    g, P, Q, nz, h, dtype, nsteps = job_params(cfg)
    rank = comm.rank
    if comm.size != P or world.size != P + Q:
        raise RuntimeError(f"launched with {comm.size} model and {world.size - comm.size} worker "
                           f"ranks, the configuration says P={P}, Q={Q}")
    dec = eh.Decomposition.auto(g, P)
    box = dec.boxes[rank]
    arr = field_box(g, box, nz, dtype)
    out = np.empty_like(arr)
    record = {"config": cfg, "bytes": {}, "paths": {}}
    wall = {"start": time.perf_counter()}

    # (a) eophis_hpc
    cpl = eh.connect(g, box, strategy=cfg["strategy"], backend=cfg.get("backend"))
    if cpl.comm.rank != rank:
        raise RuntimeError(f"model rank {rank}: the coupler says rank {cpl.comm.rank}")
    if cfg.get("buffers"):  # the model computes in cpl.buffer arrays (shm: no copy of its own)
        put_arr, out = cpl.buffer("u"), cpl.buffer("fu")
        put_arr[...] = arr
    else:
        put_arr = arr
    samples = []
    for step in range(nsteps):
        out.fill(np.nan)
        comm.Barrier()
        t0 = time.perf_counter()
        cpl.put("u", put_arr, step)
        cpl.get("fu", step, out=out)
        samples.append(time.perf_counter() - t0)
        if step == 0 and not np.array_equal(out, arr):
            raise RuntimeError(f"eophis path: model rank {rank} got back a different field")
    if not np.array_equal(out, arr):
        raise RuntimeError(f"eophis path: model rank {rank} got back a different field")
    summ = cpl.timings.summary()
    n_put = summ["phases"]["put"]["count"]
    sent = summ["bytes"]["u"] // n_put
    got = summ["bytes"]["fu"] // summ["phases"]["get"]["count"]
    if cfg.get("buffers"):
        out = np.array(out)  # the buffers go with the coupler
    cpl.close()
    eophis_max = per_step_max(comm, samples)
    eophis_bytes = comm.reduce(sent + got, root=0)
    model_phases = comm.gather({p: v["median"] for p, v in summ["phases"].items()}, root=0)
    del cpl
    world.Barrier()
    wall["eophis"] = time.perf_counter()

    # (b) raw mpi4py: the box to worker r % Q and back, same bytes both ways
    peer = P + rank % Q
    samples = []
    for step in range(nsteps):
        out.fill(np.nan)
        comm.Barrier()
        t0 = time.perf_counter()
        MPI.Request.Waitall([world.Irecv(out, source=peer, tag=TAG_RAW),
                             world.Isend(arr, dest=peer, tag=TAG_RAW)])
        samples.append(time.perf_counter() - t0)
    if not np.array_equal(out, arr):
        raise RuntimeError(f"raw path: model rank {rank} got back a different field")
    raw_max = per_step_max(comm, samples)
    raw_bytes = comm.reduce(2 * arr.nbytes, root=0)
    world.Barrier()
    wall["raw"] = time.perf_counter()

    # (c) naive: gather to model rank 0, numpy.pad halos, tiles to workers, back, scatter
    if not cfg.get("naive", True):
        workers = world.recv(source=P, tag=TAG_REPORT) if rank == 0 else None
        if rank == 0:
            w = cfg["warmup"]
            record["paths"] = {"eophis": stats(eophis_max, w), "raw": stats(raw_max, w),
                               "naive": None}
            record["bytes"] = {"eophis": int(eophis_bytes), "raw": int(raw_bytes),
                               "field": int(nz * g.nx * g.ny * dtype.itemsize)}
            record["model_phases_median_s"] = model_phases
            record["worker_phases"] = workers
            with open(cfg["out"], "w") as fh:
                json.dump(record, fh, indent=1)
        return
    mtype = MPI.FLOAT if dtype == np.float32 else MPI.DOUBLE
    counts = [nz * b.size for b in dec.boxes]
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    tiles = eh.Decomposition.auto(g, Q).boxes
    root = rank == 0
    if root:
        gbuf = np.empty(sum(counts), dtype=dtype)
        glb = np.empty((nz, g.ny, g.nx), dtype=dtype)
        back = [np.empty((nz,) + t.shape, dtype=dtype) for t in tiles]
        check_pad(g, h, nz, dtype)
    samples, naive_bytes = [], 0
    for step in range(naive_total(cfg)):
        out.fill(np.nan)
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Gatherv(arr, [gbuf, counts, displs, mtype] if root else None, root=0)
        if root:
            for b, c, d in zip(dec.boxes, counts, displs):
                glb[:, b.j0:b.j1, b.i0:b.i1] = gbuf[d:d + c].reshape((nz,) + b.shape)
            ext = pad_extend(glb, g, h)
            reqs, naive_bytes = [], 0
            for w, t in enumerate(tiles):
                tile = np.ascontiguousarray(ext[:, t.j0:t.j1 + 2 * h, t.i0:t.i1 + 2 * h])
                reqs.append(world.Isend(tile, dest=P + w, tag=TAG_NAIVE))
                reqs.append(world.Irecv(back[w], source=P + w, tag=TAG_NAIVE))
                naive_bytes += tile.nbytes + back[w].nbytes
            MPI.Request.Waitall(reqs)
            del ext, tile
            for t, bk in zip(tiles, back):
                glb[:, t.j0:t.j1, t.i0:t.i1] = bk
            for b, c, d in zip(dec.boxes, counts, displs):
                gbuf[d:d + c].reshape((nz,) + b.shape)[...] = glb[:, b.j0:b.j1, b.i0:b.i1]
        comm.Scatterv([gbuf, counts, displs, mtype] if root else None, out, root=0)
        samples.append(time.perf_counter() - t0)
    if not np.array_equal(out, arr):
        raise RuntimeError(f"naive path: model rank {rank} got back a different field")
    naive_max = per_step_max(comm, samples)
    if root:
        naive_bytes += 2 * sum(counts[1:]) * dtype.itemsize  # gather + scatter off the root
        del gbuf, glb, back

    # the workers' phase timings of (a), from worker 0
    workers = world.recv(source=P, tag=TAG_REPORT) if root else None
    wall["naive"] = time.perf_counter()
    if root:
        w = cfg["warmup"]
        record["paths"] = {"eophis": stats(eophis_max, w), "raw": stats(raw_max, w),
                           "naive": stats(naive_max, cfg.get("naive_warmup", w))}
        record["bytes"] = {"eophis": int(eophis_bytes), "raw": int(raw_bytes),
                           "naive": int(naive_bytes),
                           "field": int(nz * g.nx * g.ny * dtype.itemsize)}
        record["model_phases_median_s"] = model_phases
        record["worker_phases"] = workers
        record["part_seconds"] = {k: wall[k] - wall[p] for p, k in
                                  (("start", "eophis"), ("eophis", "raw"), ("raw", "naive"))}
        record["runtime"] = {"backend": kernels.get(cfg.get("backend")).name,
                             "package": os.path.dirname(eh.__file__),
                             "EOPHIS_HPC_TIMEOUT": os.environ.get("EOPHIS_HPC_TIMEOUT")}
        record["ranks"] = {"P": P, "Q": Q, "oversubscribed": P + Q > (os.cpu_count() or 1)}
        with open(cfg["out"], "w") as fh:
            json.dump(record, fh, indent=1)


def check_pad(g, h, nz, dtype) -> None:
    """The naive halo construction must match the reference semantics (two levels)."""
    lv = check_levels(nz)
    glb = field_box(g, (0, g.ny, 0, g.nx), lv, dtype)
    if not np.array_equal(pad_extend(glb, g, h), extend(glb, g, h)):
        raise RuntimeError("pad_extend differs from eophis_hpc.reference.extend")


# --------------------------------------------------------------------------- worker side
def worker_main(cfg, world, comm) -> None:
    MPI = mpi()
    g, P, Q, nz, h, dtype, nsteps = job_params(cfg)
    w = comm.rank

    # (a) eophis_hpc: identity model, returned with its halo (the runtime strips it)
    tunnel = eh.Tunnel(g, halo=h, exchanges=[eh.Exchange(inputs=["u"], outputs=["fu"], levels=nz,
                                                         dtype=cfg["dtype"])],
                       strategy=cfg["strategy"], backend=cfg.get("backend"),
                       tiles=cfg.get("tiles"), verbose=False, pipeline_chunk=cfg.get("chunk"),
                       pipeline=cfg.get("pipeline"))
    calls = {"n": 0}
    lv = check_levels(nz)

    @tunnel.model
    def identity(u):
        if calls["n"] == 0:  # the first batch against the reference semantics
            glb = field_box(g, (0, g.ny, 0, g.nx), lv, dtype)
            plan = tunnel.layout.plan("T")
            for k, d in enumerate(tunnel.layout.tiles_of[w]):
                want = reference_tile(glb, g, plan.read_boxes[d], h)
                if not np.array_equal(u[k][lv], want):
                    raise RuntimeError(f"worker {w}: tile {d} differs from the reference")
        calls["n"] += 1
        return {"fu": u}

    summary = tunnel.run()
    if calls["n"] != nsteps:
        raise RuntimeError(f"worker {w}: {calls['n']} model calls for {nsteps} steps")
    phases = {p: {"median_s": v["median"], "mean_s": v["mean"], "count": v["count"]}
              for p, v in summary["phases"].items()}
    del tunnel
    world.Barrier()

    # (b) raw
    dec = eh.Decomposition.auto(g, P)
    mine = [r for r in range(P) if r % Q == w]
    bufs = [np.empty((nz,) + dec.boxes[r].shape, dtype=dtype) for r in mine]
    for step in range(nsteps):
        MPI.Request.Waitall([world.Irecv(b, source=r, tag=TAG_RAW) for r, b in zip(mine, bufs)])
        MPI.Request.Waitall([world.Isend(b, dest=r, tag=TAG_RAW) for r, b in zip(mine, bufs)])
    del bufs
    world.Barrier()

    # (c) naive
    if not cfg.get("naive", True):
        reports = comm.gather(phases, root=0)
        if w == 0:
            world.send(reports, dest=0, tag=TAG_REPORT)
        return
    t = eh.Decomposition.auto(g, Q).boxes[w]
    tile = np.empty((nz, t.shape[0] + 2 * h, t.shape[1] + 2 * h), dtype=dtype)
    for step in range(naive_total(cfg)):
        world.Recv(tile, source=0, tag=TAG_NAIVE)
        interior = np.ascontiguousarray(tile[:, h:h + t.shape[0], h:h + t.shape[1]])
        world.Send(interior, dest=0, tag=TAG_NAIVE)

    reports = comm.gather(phases, root=0)
    if w == 0:
        world.send(reports, dest=0, tag=TAG_REPORT)


# --------------------------------------------------------------------------- entry point
def main(argv) -> None:
    if len(argv) != 3 or argv[1] not in ("model", "worker"):
        sys.exit("usage: python -m eophis_hpc.measure.roundtrip model|worker CONFIG.json")
    with open(argv[2]) as fh:
        cfg = json.load(fh)
    MPI = mpi()
    world = MPI.COMM_WORLD
    dog = watchdog(float(cfg.get("time_limit", 600)), world)
    try:
        role = argv[1]
        comm = world.Split(0 if role == "model" else 1, world.rank)
        if role == "model" and world.rank != comm.rank:
            raise RuntimeError("model ranks must come first in the MPMD launch")
        (model_main if role == "model" else worker_main)(cfg, world, comm)
        comm.Free()
    except BaseException:
        print(f"roundtrip: world rank {world.rank} ({argv[1]}):\n{traceback.format_exc()}",
              file=sys.stderr, flush=True)
        world.Abort(1)
    dog.cancel()


if __name__ == "__main__":
    main(sys.argv)
