"""What the installed MPI library does with the transfers eophis_hpc makes, between two ranks
(``eophis-hpc info --probe``, and the measurements behind the default MPI dependency).

Usage: ``mpiexec -n 2 python -m eophis_hpc.bench.mpiprobe CONFIG.json`` with CONFIG keys
``grid`` (a preset, default eORCA025), ``levels`` (1), ``dtype`` (float64), ``halo`` (10),
``rounds`` (timed round trips per kind, 15), ``out`` (the JSON record rank 0 writes) and
``time_limit`` (watchdog, 300 s).

Rank 0 holds the whole grid as one contiguous box (a 1:1 coupling), rank 1 one tile with the
halo. Each kind is a round trip 0 -> 1 -> 0 of the same cells, timed on rank 0, median of
``rounds`` after one warm-up:

- ``contiguous``: both ranks send and receive contiguous arrays (the raw-MPI floor);
- ``inter``: the same over an intercommunicator between the two ranks (where eophis_hpc's
  Fortran client sends its data; the Python sides use one intracommunicator);
- ``subarray``: rank 1 receives into the interior of its tile (a subarray datatype) and sends
  back from it;
- ``struct``: both ranks use the ``datatype`` strategy's own struct-of-subarray datatypes of
  the plan (halo, cyclic wrap and north fold included: a few more cells than the box).

Every kind checks that what came back equals what went out.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from ..grid import Grid
from ..protocol.layout import Layout
from ..transport.mpi.datatypes import TypeCache
from ..measure.pingpong import run_two_rank_probe
from ..measure.roundtrip import mpi

TAG = 9301
KINDS = ("contiguous", "inter", "subarray", "struct")


def _round_trips(comm, send0, recv0, send1, recv1, rounds: int, link=None) -> list[float]:
    """``rounds`` + 1 round trips (rank 0 sends ``send0``, rank 1 receives ``recv1`` and sends
    ``send1`` back into ``recv0``) over ``link`` (default ``comm``; an intercommunicator: the
    peer is rank 0 of the other group); the seconds of the timed ones on rank 0."""
    MPI = mpi()
    link = comm if link is None else link
    peer = 0 if link.Is_inter() else 1 - comm.rank
    samples = []
    for _ in range(rounds + 1):
        comm.Barrier()
        if comm.rank == 0:
            t0 = time.perf_counter()
            MPI.Request.Waitall([link.Irecv(recv0, source=peer, tag=TAG),
                                 link.Isend(send0, dest=peer, tag=TAG)])
            samples.append(time.perf_counter() - t0)
        else:
            link.Recv(recv1, source=peer, tag=TAG)
            link.Send(send1, dest=peer, tag=TAG)
    return samples[1:]


def measure(comm, grid: Grid, levels: int, dtype, halo: int, rounds: int) -> dict:
    """``{kind: {"median_s", "samples"}}`` on rank 0 ({} on rank 1)."""
    MPI = mpi()
    dtype = np.dtype(dtype)
    base = MPI.DOUBLE if dtype == np.float64 else MPI.FLOAT
    layout = Layout(grid, [(0, grid.ny, 0, grid.nx)], 1, halo)
    box = np.arange(levels * grid.ny * grid.nx, dtype=dtype).reshape(levels, grid.ny, grid.nx)
    back = np.zeros_like(box)
    tile = np.zeros((1, levels) + layout.batch_shape, dtype=dtype)
    flat = np.zeros_like(box)
    out = {}
    # contiguous
    s = _round_trips(comm, box, back, flat, flat, rounds)
    out["contiguous"] = (s, np.array_equal(back, box) if comm.rank == 0 else True)
    # inter: the same contiguous arrays over an intercommunicator
    back.fill(0)
    local = comm.Split(comm.rank, 0)
    inter = local.Create_intercomm(0, comm, 1 - comm.rank, TAG)
    s = _round_trips(comm, box, back, flat, flat, rounds, link=inter)
    inter.Free()
    local.Free()
    out["inter"] = (s, np.array_equal(back, box) if comm.rank == 0 else True)
    # subarray: the interior of the tile
    back.fill(0)
    sub = base.Create_subarray([levels] + list(layout.batch_shape),
                               [levels, grid.ny, grid.nx], [0, halo, halo]).Commit()
    s = _round_trips(comm, box, back, [tile, 1, sub], [tile, 1, sub], rounds)
    sub.Free()
    out["subarray"] = (s, np.array_equal(back, box) if comm.rank == 0 else True)
    # struct: the datatype strategy's own types over the plan's runs
    back.fill(0)
    point = grid.point
    if comm.rank == 0:
        send_types = TypeCache(layout.model_send_routes(point, 0), folded_ok=False)
        recv_types = TypeCache(layout.model_recv_routes(point, 0), folded_ok=True)
        st = send_types.get(box[None], (0, 0))[0]
        rt = recv_types.get(back[None], (0, 0))[0]
        s = _round_trips(comm, [box[None], 1, st], [back[None], 1, rt], None, None, rounds)
    else:
        recv_types = TypeCache(layout.worker_recv_routes(point, 0), folded_ok=True)
        send_types = TypeCache(layout.worker_send_routes(point, 0), folded_ok=False)
        rt = recv_types.get(tile, (0, 0))[0]
        st = send_types.get(tile, (halo, halo))[0]
        s = _round_trips(comm, None, None, [tile, 1, st], [tile, 1, rt], rounds)
    send_types.free()
    recv_types.free()
    out["struct"] = (s, np.array_equal(back, box) if comm.rank == 0 else True)
    if comm.rank != 0:
        return {}
    bad = [k for k, (_, ok) in out.items() if not ok]
    if bad:
        raise RuntimeError(f"mpiprobe: different data came back for {bad}")
    return {k: {"median_s": float(np.median(v)), "samples": v} for k, (v, _) in out.items()}


def library() -> str:
    """The first line of the MPI library's own version string."""
    return mpi().Get_library_version().splitlines()[0].strip()


def summary(record: dict) -> list[str]:
    """Lines for ``eophis-hpc info``: each kind's median round trip and its ratio to contiguous."""
    res = record["results"]
    raw = res["contiguous"]["median_s"]
    cfg = record["config"]
    lib = " ".join(record["library"].split())
    lines = [f"{lib}: {cfg['grid']} {cfg['levels']} level(s) {cfg['dtype']}, halo "
             f"{cfg['halo']}, round trip between 2 ranks (median of {cfg['rounds']}):"]
    for kind in KINDS:
        t = res[kind]["median_s"]
        lines.append(f"  {kind:<10} {t * 1e3:8.2f} ms  {t / raw:5.2f}x contiguous")
    return lines


def main(argv) -> None:
    def body(world, cfg):
        res = measure(world, Grid.preset(cfg["grid"]), int(cfg["levels"]), cfg["dtype"],
                      int(cfg["halo"]), int(cfg["rounds"]))
        return {"library": library(), "config": cfg, "results": res}

    run_two_rank_probe(argv, "eophis_hpc.bench.mpiprobe", body, time_limit=300,
                       defaults={"grid": "eORCA025", "levels": 1, "dtype": "float64",
                                 "halo": 10, "rounds": 15})


if __name__ == "__main__":
    main(sys.argv)
