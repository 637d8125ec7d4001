"""Raw MPI between two ranks: one-way time for given message sizes (the raw-MPI line of
``eophis-hpc bench``'s bandwidth plot), the same through a strided derived datatype, and the
cost of one small message (the cost model's calibration).

Usage: ``mpiexec -n 2 python -m eophis_hpc.measure.pingpong CONFIG.json`` with CONFIG keys
``sizes`` (bytes), ``out`` (the JSON record rank 0 writes), optional ``min_rounds`` (5),
``max_time`` (seconds per size, 0.2), ``time_limit`` (watchdog, 600 s), ``strided`` (false; true
adds ``strided_one_way_median_s``: the same bytes as rows of ``row_bytes`` (8192) in rows
``row_pad`` (640) bytes longer, a subarray datatype at both ends, or with ``strided_ends``
"one" a subarray at rank 1 only, as a halo-extended tile receives and sends), ``messages`` (0;
N > 0 adds ``message_overhead_s``: N 8-byte messages each way, posted together, per message and
end) and ``working_set`` (0; bytes > 0: each round trip of 64 KiB or more uses the next of as
many buffers as it takes to fill that many bytes, so a message smaller than the caches arrives
cold, as between the exchanges of a coupled run; with ``hot_too`` the contiguous sizes are
measured again through one buffer, ``one_way_hot_median_s``).

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


def _loop(comm, sends, recvs, min_rounds: int, max_time: float) -> list[float]:
    """Round trips of ``sends[k]`` (rank 0) / ``recvs[k]`` (both), ``k`` cycling over the
    buffers, until rank 0 has enough samples."""
    samples: list[float] = []
    go = np.ones(1, dtype=np.int8)
    k = -1
    while True:
        comm.Bcast(go, root=0)  # rank 0 decides when to stop
        if not go[0]:
            break
        k = (k + 1) % len(recvs)
        send, recv = sends[k], recvs[k]
        if comm.rank == 0:
            t0 = time.perf_counter()
            comm.Send(send, dest=1, tag=TAG)
            comm.Recv(recv, source=1, tag=TAG)
            samples.append(time.perf_counter() - t0)
            enough = len(samples) > min_rounds  # the first is the warm-up
            go[0] = not (enough and (sum(samples[1:]) > max_time or len(samples) > 10000))
        else:
            comm.Recv(recv, source=0, tag=TAG)
            comm.Send(recv, dest=0, tag=TAG)
    return samples[1:]


COLD_MIN_BYTES = 64 << 10  # smaller messages (latency, small-message cost) stay in one buffer
COLD_MAX_BUFFERS = 1024


def copies(nbytes: int, working_set: int) -> int:
    """Buffers of ``nbytes`` that fill ``working_set`` bytes (at least one, at most
    ``COLD_MAX_BUFFERS``; one for messages under ``COLD_MIN_BYTES``, whose time is latency)."""
    if working_set <= 0 or nbytes < COLD_MIN_BYTES:
        return 1
    return min(COLD_MAX_BUFFERS, max(1, -(-working_set // nbytes)))


def measure(comm, nbytes: int, min_rounds: int, max_time: float,
            working_set: int = 0) -> list[float]:
    """Round-trip seconds of ``nbytes`` between ranks 0 and 1 (on rank 0; [] on rank 1)."""
    n = copies(nbytes, working_set)
    bufs = [np.full(nbytes, 7, dtype=np.uint8) for _ in range(n)]
    backs = [np.zeros(nbytes, dtype=np.uint8) for _ in range(n)]
    samples = _loop(comm, bufs, backs, min_rounds, max_time)
    used = min(n, len(samples) + 1)  # the buffers the round trips went through
    if comm.rank == 0 and not all(np.array_equal(b, a) for a, b in zip(bufs[:used],
                                                                      backs[:used])):
        raise RuntimeError(f"ping-pong of {nbytes} bytes: different bytes came back")
    return samples


def measure_strided(comm, nbytes: int, row: int, pad: int, min_rounds: int,
                    max_time: float, ends: str = "both", working_set: int = 0) -> list[float]:
    """As :func:`measure`, the bytes as rows of ``row`` bytes in an array of rows ``row + pad``
    bytes long, described by a subarray datatype at both ends (``ends="both"``) or at rank 1
    only (``"one"``: each way has one contiguous and one strided end)."""
    if ends not in ("both", "one"):
        raise ValueError(f"strided_ends must be 'both' or 'one', got {ends!r}")
    MPI = mpi()
    rows = max(1, nbytes // row)
    shape = [rows, row + pad]
    dt = MPI.BYTE.Create_subarray(shape, [rows, row], [0, 0]).Commit()
    n = copies(rows * (row + pad), working_set)
    if ends == "one" and comm.rank == 0:  # rank 0's rows are one contiguous piece
        bufs = [np.full((rows, row), 7, dtype=np.uint8) for _ in range(n)]
        backs = [np.zeros((rows, row), dtype=np.uint8) for _ in range(n)]
        sends, recvs = bufs, backs
    else:
        bufs = [np.full(shape, 7, dtype=np.uint8) for _ in range(n)]
        backs = [np.zeros(shape, dtype=np.uint8) for _ in range(n)]
        sends, recvs = [[b, 1, dt] for b in bufs], [[b, 1, dt] for b in backs]
    try:
        samples = _loop(comm, sends, recvs, min_rounds, max_time)
    finally:
        dt.Free()
    used = min(n, len(samples) + 1)
    if comm.rank == 0 and not all(np.array_equal(b[:, :row], a[:, :row])
                                  for a, b in zip(bufs[:used], backs[:used])):
        raise RuntimeError(f"strided ping-pong of {nbytes} bytes: different bytes came back")
    return samples


def message_overhead(comm, n: int, rounds: int = 30) -> float:
    """Seconds per small message and end: ``n`` 8-byte messages each way, all posted, then one
    Waitall (median over ``rounds``; on both ranks)."""
    MPI = mpi()
    peer = 1 - comm.rank
    out = np.zeros((n, 1), dtype=np.float64)
    inn = np.zeros((n, 1), dtype=np.float64)
    times = []
    for _ in range(rounds + 1):
        comm.Barrier()
        t0 = time.perf_counter()
        reqs = [comm.Irecv(inn[k], source=peer, tag=TAG + 1) for k in range(n)]
        reqs += [comm.Isend(out[k], dest=peer, tag=TAG + 1) for k in range(n)]
        MPI.Request.Waitall(reqs)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:])) / (2 * n)


def run_two_rank_probe(argv, module: str, body, defaults=None, time_limit: float = 600) -> None:
    """The ``main`` of a raw-MPI probe between 2 ranks: read the JSON config named by
    ``argv[1]`` (over ``defaults``), run ``body(world, cfg) -> dict`` under a watchdog, write
    the dict to ``cfg["out"]`` on rank 0; any error prints with its rank and aborts the job."""
    if len(argv) != 2:
        sys.exit(f"usage: mpiexec -n 2 python -m {module} CONFIG.json")
    with open(argv[1]) as fh:
        cfg = {**(defaults or {}), **json.load(fh)}
    release_exit_guard()  # raw MPI only: this program never couples, by design
    world = mpi().COMM_WORLD
    dog = watchdog(float(cfg.get("time_limit", time_limit)), world)
    try:
        if world.size != 2:
            raise RuntimeError(f"launched with {world.size} ranks, {module} needs 2")
        out = body(world, cfg)
        if world.rank == 0:
            with open(cfg["out"], "w") as fh:
                json.dump(out, fh)
    except BaseException:
        print(f"{module}: rank {world.rank}:\n{traceback.format_exc()}", file=sys.stderr,
              flush=True)
        world.Abort(1)
    dog.cancel()


def probe(world, cfg) -> dict:
    """One-way times per message size (contiguous, strided) and the per-message overhead."""
    out = {"sizes": [], "one_way_samples": [], "one_way_median_s": []}
    rounds, max_time = int(cfg.get("min_rounds", 5)), float(cfg.get("max_time", 0.2))
    working_set = int(cfg.get("working_set", 0))
    out["working_set"] = working_set
    for nbytes in cfg["sizes"]:
        samples = measure(world, int(nbytes), rounds, max_time, working_set)
        if world.rank == 0:
            one_way = [s / 2 for s in samples]
            out["sizes"].append(int(nbytes))
            out["one_way_samples"].append(one_way)
            out["one_way_median_s"].append(float(np.median(one_way)))
    if working_set > 0 and cfg.get("hot_too"):  # the same sizes through one buffer
        out["one_way_hot_median_s"] = []
        for nbytes in cfg["sizes"]:
            samples = measure(world, int(nbytes), rounds, max_time)
            if world.rank == 0:
                out["one_way_hot_median_s"].append(float(np.median(samples)) / 2)
    if cfg.get("strided"):
        row, pad = int(cfg.get("row_bytes", 8192)), int(cfg.get("row_pad", 640))
        ends = str(cfg.get("strided_ends", "both"))
        out["strided_row_bytes"], out["strided_row_pad"] = row, pad
        out["strided_ends"] = ends
        out["strided_one_way_median_s"] = []
        for nbytes in cfg["sizes"]:
            samples = measure_strided(world, int(nbytes), row, pad, rounds, max_time, ends,
                                      working_set)
            if world.rank == 0:
                out["strided_one_way_median_s"].append(float(np.median(samples)) / 2)
    if int(cfg.get("messages", 0)) > 0:
        out["message_overhead_s"] = message_overhead(world, int(cfg["messages"]))
    return out


def main(argv) -> None:
    run_two_rank_probe(argv, "eophis_hpc.measure.pingpong", probe)


if __name__ == "__main__":
    main(sys.argv)
