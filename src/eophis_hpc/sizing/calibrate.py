"""The cost model's figures measured on this machine (``eophis-hpc plan --calibrate``).

- two-rank MPI ping-pongs (:mod:`eophis_hpc.measure.pingpong`): latency (8 bytes), on-node
  bandwidth by message size (64 KiB to 256 MiB, contiguous), datatype bandwidth by size (the
  same bytes contiguous at one end, a subarray of the rows of the tiles predicted at the other:
  :func:`tile_rows`), the cost of one small message. Messages go through buffers that together
  fill twice the last-level cache (:func:`working_set`), so each arrives cold, as in a coupled
  run, where the model's step and the inference touch far more memory than the caches hold
  between two exchanges (a ping-pong of one hot buffer of 2 MiB moved 1.4-2x faster here); the
  contiguous sizes again through one buffer (``onnode_bandwidth_hot``: a pipelined chunk, sent
  right after its pack);
- the pack and unpack kernels on a plan's busiest rank (:mod:`eophis_hpc.measure.copyjobs`):
  copy bandwidth by size (1 to 64 levels);
- a tiny coupled round trip (:mod:`eophis_hpc.measure.roundtrip`, 62x199, one level, 1:1): what
  is left once its transfers are predicted is the fixed cost of an exchange.

One node cannot measure a network: the network figures are the on-node ones (the file says so)
and the node's memory bandwidth is cores x the largest copy's; edit them for a cluster.

Each figure is a median over rounds within a job, and the fastest of ``repeats`` jobs: on a
shared machine the fastest job is the least disturbed one (on a dedicated machine the jobs
agree). The tiny round trip's fixed cost is the fastest job's, less its predicted transfers.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .machine import Machine

SIZES = [64 << 10, 512 << 10, 2 << 20, 8 << 20, 32 << 20, 256 << 20]  # bytes, the tables
SMALL = 8
COPY_LEVELS = (1, 4, 16, 64)
MIN_ROUNDS = 9  # ping-pong rounds per size at least (a 256 MiB strided one takes ~0.1 s)


def tile_rows(nx: int = 720, halo: int = 10, itemsize: int = 8) -> tuple[int, int]:
    """``(row_bytes, row_pad)`` of a tile ``nx`` points wide with its halo: the rows a derived
    datatype walks at the worker's end. The default is the tile ``--validate`` checks most
    (eORCA05 at 1:1, halo 10, float64: 5,760-byte rows in 5,920-byte ones); a tile without a
    halo gets a pad of one point (its datatype would be contiguous)."""
    return nx * itemsize, max(1, 2 * halo) * itemsize


def working_set(base: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """Bytes the ping-pong's buffers fill: twice the largest cache ``sysfs`` lists under
    ``base``, between 64 MiB and 1 GiB (64 MiB where the cache size is unknown)."""
    size = 0
    for index in sorted(base.glob("index*")) if base.is_dir() else ():
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KkMmGg")
        if digits.isdigit():
            size = max(size, int(digits) * scale)
    return min(1 << 30, max(64 << 20, 2 * size))


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"calibrate: {text}", file=sys.stderr, flush=True)


def pingpong_figures(records: list[dict]) -> dict:
    """Latency, bandwidth tables by message size (contiguous and strided) and the cost of one
    message, from ping-pong records (each a median over rounds; the fastest record)."""
    lat = min(r["one_way_median_s"][r["sizes"].index(SMALL)] for r in records)
    tables = {}
    for name, key in (("onnode_bandwidth", "one_way_median_s"),
                      ("datatype_bandwidth", "strided_one_way_median_s")):
        rows = []
        for size in SIZES:  # effective bandwidth: the latency is in the time (the model adds
            times = [r[key][r["sizes"].index(size)] for r in records]  # it once per direction)
            rows.append([size, size / min(times)])
        tables[name] = rows
    if all("one_way_hot_median_s" in r for r in records):
        tables["onnode_bandwidth_hot"] = [
            [size, size / min(r["one_way_hot_median_s"][r["sizes"].index(size)]
                              for r in records)] for size in SIZES]
    return {"latency_s": lat, **tables,
            "message_overhead_s": min(r["message_overhead_s"] for r in records)}


def copy_bandwidth(repeats: int = 3) -> list:
    """Bandwidth table of the default kernel backend's pack and unpack by size: the busiest
    model box and tile of eORCA05, 2 boxes -> 1 tile, halo 10, 1 to 64 levels (repeated on the
    same arrays: what fits in the caches stays there, as a model rank's box does between
    steps)."""
    from .. import kernels
    from ..decomposition import Decomposition
    from ..grid import Grid
    from ..measure import copyjobs
    from ..plan import Plan
    g = Grid.preset("eORCA05")
    plan = Plan(g, Decomposition.auto(g, 2), Decomposition.auto(g, 1), halo=10)
    backend = kernels.get(None).name
    rows = []
    for nz in COPY_LEVELS:  # one entry per level count: the pack's and unpack's mean
        sizes, rates = [], []
        for make in (copyjobs.make_pack_job, copyjobs.make_unpack_job):
            job = make(plan, nz, np.float64)
            job.check(backend)
            secs = [copyjobs.median_time(job.call(backend), max_time=0.2)
                    for _ in range(repeats)]
            sizes.append(job.nbytes)
            rates.append(job.nbytes / min(secs))
            del job
        rows.append([statistics.mean(sizes), statistics.mean(rates)])
    return rows


QUIET = {"max_wait": 20.0, "cores": 0.5}  # before each job: wait for other processes to leave


def exchange_overhead(machine: Machine, workdir: Path, repeats: int) -> float:
    """The fixed seconds of a round trip: a tiny one measured, less its predicted transfers."""
    from ..measure import jobs
    from .validate import predict_roundtrip
    cfg = {"grid": "DINO", "levels": 1, "dtype": "float64", "halo": 0, "P": 1, "Q": 1,
           "strategy": "datatype", "backend": None, "tiles": 1, "warmup": 5, "steps": 60,
           "naive": False}
    got = []
    for k in range(repeats):
        jobs.wait_quiet(QUIET["max_wait"], QUIET["cores"])
        rec, err = jobs.run_roundtrip(cfg, workdir, 120, f"calibrate-{k}")
        if rec is None:
            raise RuntimeError(f"tiny round trip failed: {err.splitlines()[0] if err else ''}")
        got.append(rec["paths"]["eophis"]["median"])
    measured = min(got)
    predicted = predict_roundtrip(replace(machine, exchange_overhead_s=0.0), cfg)
    return max(0.0, measured - predicted)


def calibrate(repeats: int = 3, progress: bool = True, workdir: Path | None = None,
              rows: tuple[int, int] | None = None) -> Machine:
    """Measure this machine; raises RuntimeError when an MPI job fails. ``rows``: the
    ``(row_bytes, row_pad)`` of the strided ping-pong (default :func:`tile_rows`)."""
    from ..measure import jobs
    row_bytes, row_pad = rows or tile_rows()
    cold = working_set()
    with tempfile.TemporaryDirectory(prefix="eophis-calibrate-") as tmp:
        wd = Path(workdir or tmp)
        recs = []
        for k in range(repeats):
            _say(progress, f"ping-pong {k + 1}/{repeats}")
            jobs.wait_quiet(QUIET["max_wait"], QUIET["cores"])  # a shared machine
            rec, err = jobs.run_pingpong([SMALL] + SIZES, wd, 300, strided=True, messages=64,
                                         strided_ends="one", row_bytes=row_bytes,
                                         row_pad=row_pad, min_rounds=MIN_ROUNDS,
                                         working_set=cold, hot_too=True)
            if rec is None:
                raise RuntimeError(f"ping-pong failed: {err.splitlines()[0] if err else ''}")
            recs.append(rec)
        pp = pingpong_figures(recs)
        _say(progress, "pack and unpack kernels")
        jobs.wait_quiet(QUIET["max_wait"], QUIET["cores"])
        copy = copy_bandwidth(repeats)
        cores = os.cpu_count() or 1
        largest = pp["onnode_bandwidth"][-1][1]  # out of cache
        machine = Machine(
            name=f"this machine ({os.uname().nodename})", cores_per_node=cores,
            latency_s=pp["latency_s"], network_latency_s=pp["latency_s"],
            onnode_bandwidth=pp["onnode_bandwidth"], network_bandwidth=pp["onnode_bandwidth"],
            nic_bandwidth=largest, node_memory_bandwidth=copy[-1][1] * cores,
            copy_bandwidth=copy, datatype_bandwidth=pp["datatype_bandwidth"],
            message_overhead_s=pp["message_overhead_s"], exchange_overhead_s=0.0,
            datatype_row_bytes=int(row_bytes),
            onnode_bandwidth_hot=pp.get("onnode_bandwidth_hot"),
            source=(f"measured by eophis-hpc plan --calibrate, the fastest of {repeats} runs; "
                    f"messages cold (buffers over {cold >> 20} MiB); "
                    "one node: the network figures are the on-node ones and the node's memory "
                    "bandwidth is cores x one rank's largest copy (an upper bound)"))
        _say(progress, "tiny round trip (fixed cost of an exchange)")
        over = exchange_overhead(machine, wd, repeats)
    return replace(machine, exchange_overhead_s=over)
