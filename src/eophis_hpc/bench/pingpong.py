"""Raw MPI bandwidth between two ranks for given message sizes: the raw-MPI line of
``eophis-hpc bench``'s bandwidth plot (the same byte counts as the pack/unpack jobs).

Usage: ``mpiexec -n 2 python -m eophis_hpc.bench.pingpong CONFIG.json`` with CONFIG keys
``sizes`` (bytes), ``out`` (the JSON record rank 0 writes), optional ``min_rounds`` (5),
``max_time`` (seconds per size, 0.2) and ``time_limit`` (watchdog, 600 s).

Per size: rank 0 ``Send``s a buffer that rank 1 ``Recv``s and sends back; one round trip after a
warm-up one is timed on rank 0, repeated at least ``min_rounds`` times and for about
``max_time`` seconds; the one-way time is half the median round trip. The returned bytes are
checked against those sent.
"""
from __future__ import annotations

import json
import sys
import time
import traceback

import numpy as np

from ..errors import release_exit_guard
from .roundtrip import mpi, watchdog

TAG = 9201


def measure(comm, nbytes: int, min_rounds: int, max_time: float) -> list[float]:
    """Round-trip seconds of ``nbytes`` between ranks 0 and 1 (on rank 0; [] on rank 1)."""
    buf = np.full(nbytes, 7, dtype=np.uint8)
    back = np.zeros(nbytes, dtype=np.uint8)
    samples: list[float] = []
    go = np.ones(1, dtype=np.int8)
    while True:
        comm.Bcast(go, root=0)  # rank 0 decides when to stop
        if not go[0]:
            break
        if comm.rank == 0:
            t0 = time.perf_counter()
            comm.Send(buf, dest=1, tag=TAG)
            comm.Recv(back, source=1, tag=TAG)
            samples.append(time.perf_counter() - t0)
            enough = len(samples) > min_rounds  # the first is the warm-up
            go[0] = not (enough and (sum(samples[1:]) > max_time or len(samples) > 10000))
        else:
            comm.Recv(back, source=0, tag=TAG)
            comm.Send(back, dest=0, tag=TAG)
    if comm.rank == 0 and not np.array_equal(back, buf):
        raise RuntimeError(f"ping-pong of {nbytes} bytes: different bytes came back")
    return samples[1:]


def main(argv) -> None:
    if len(argv) != 2:
        sys.exit("usage: mpiexec -n 2 python -m eophis_hpc.bench.pingpong CONFIG.json")
    with open(argv[1]) as fh:
        cfg = json.load(fh)
    release_exit_guard()  # raw MPI only: this program never couples, by design
    world = mpi().COMM_WORLD
    dog = watchdog(float(cfg.get("time_limit", 600)), world)
    try:
        if world.size != 2:
            raise RuntimeError(f"launched with {world.size} ranks, the ping-pong needs 2")
        out = {"sizes": [], "one_way_samples": [], "one_way_median_s": []}
        for nbytes in cfg["sizes"]:
            samples = measure(world, int(nbytes), int(cfg.get("min_rounds", 5)),
                              float(cfg.get("max_time", 0.2)))
            if world.rank == 0:
                one_way = [s / 2 for s in samples]
                out["sizes"].append(int(nbytes))
                out["one_way_samples"].append(one_way)
                out["one_way_median_s"].append(float(np.median(one_way)))
        if world.rank == 0:
            with open(cfg["out"], "w") as fh:
                json.dump(out, fh)
    except BaseException:
        print(f"pingpong: rank {world.rank}:\n{traceback.format_exc()}", file=sys.stderr,
              flush=True)
        world.Abort(1)
    dog.cancel()


if __name__ == "__main__":
    main(sys.argv)
