"""Driver of the MPI round-trip benchmark (issue 3): launches ``eophis_hpc.measure.roundtrip`` for each
configuration as an MPMD job with this Python's own ``mpiexec``, collects the records, writes a
pytest-benchmark-compatible JSON file and prints the table of medians and ratios.

Usage::

    python benchmarks/run_roundtrip.py [--quick] [--out DIR] [--filter TEXT] [--repeat N]

The full matrix (66 configurations, the one-level ones run in two passes) takes about 11 minutes
on an idle 2-core machine; ``--quick`` (10 configurations) under a minute.

Files written in ``DIR`` (default ``bench-report-roundtrip``, where the jobs also run):
``config-*.json`` and ``record-*.json`` (one per job), ``roundtrip-records.json`` (one merged
record per configuration), ``roundtrip-bench.json`` (pytest-benchmark's JSON layout, for
``pytest-benchmark compare``) and ``roundtrip-table.md``.

Every job has a hard time limit: the program's own watchdog aborts it, and past ``--timeout``
the driver kills the job's process group; a failed job is retried once, then reported, never
skipped silently. The machine may be shared: the driver waits (briefly) for idle cores before a
job and records the CPU other processes used during it (``!`` in the table above 0.25 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from eophis_hpc.bench import records, runner
from eophis_hpc.bench.records import cfg_id, field_bytes, make, merge, steps_for

GRIDS = ("eORCA05", "eORCA025")


# --------------------------------------------------------------------------- configurations
def matrix(quick: bool) -> list[dict]:
    pqs = ((1, 1), (2, 1), (2, 2))
    if quick:
        out = [make("eORCA05", 1, "float64", pq, h, "packed") for pq in pqs for h in (0, 10)]
        out += [make("eORCA05", 1, "float64", (2, 1), h, "datatype") for h in (0, 10)]
        out += [make("eORCA05", 75, "float32", (1, 1), 10, s) for s in ("packed", "datatype")]
        return out
    out = [make(g, nz, dt, pq, h, "packed") for g in GRIDS for nz in (1, 75)
           for dt in ("float32", "float64") for pq in pqs for h in (0, 10)]
    # datatype strategy on a subset: float64; every P:Q and halo at one level; 1:1 and 2:2 at
    # 75 levels (both halos for 720x603, halo 10 only for 1440x1206, the costliest jobs)
    out += [make(g, 1, "float64", pq, h, "datatype") for g in GRIDS for pq in pqs
            for h in (0, 10)]
    out += [make("eORCA05", 75, "float64", pq, h, "datatype") for pq in ((1, 1), (2, 2))
            for h in (0, 10)]
    out += [make("eORCA025", 75, "float64", pq, 10, "datatype") for pq in ((1, 1), (2, 2))]
    return out


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset (about 1-2 minutes)")
    ap.add_argument("--out", default="bench-report-roundtrip", help="output folder")
    ap.add_argument("--filter", default="", help="only configurations whose id contains TEXT")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per job")
    ap.add_argument("--repeat", type=int, default=None,
                    help="jobs per one-level (small, fast) configuration, run as separate passes "
                         "over the matrix so that the machine's slow periods spread over them "
                         "(default 2, 1 with --quick); bigger fields run once")
    ap.add_argument("--quiet-wait", type=float, default=5.0,
                    help="before each job, wait up to this many seconds for other processes to "
                         "leave the cores idle (0: do not wait)")
    ap.add_argument("--retries", type=int, default=1, choices=(0, 1),
                    help="run a failed job once more before reporting it")
    args = ap.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 2)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    configs = [c for c in matrix(args.quick) if args.filter in cfg_id(c)]
    jobs = [(c, 0) for c in configs]
    jobs += [(c, k) for k in range(1, repeat) for c in configs if field_bytes(c) < 20e6]
    jobs = [(dict(c, **steps_for(c, args.quick)), k) for c, k in jobs]
    t_start = time.perf_counter()
    done, failed = runner.run_matrix(jobs, outdir, args.timeout, args.quiet_wait, args.retries,
                                     log=lambda line: print(line, flush=True))
    total = time.perf_counter() - t_start
    recs = [merge(done[cfg_id(c)]) for c in configs if cfg_id(c) in done]
    (outdir / "roundtrip-records.json").write_text(json.dumps(recs, indent=1))
    (outdir / "roundtrip-bench.json").write_text(json.dumps(records.bench_json(recs), indent=1))
    text = records.table(recs, failed)
    (outdir / "roundtrip-table.md").write_text(text + "\n\n" + records.summary(recs) + "\n")
    print()
    print(text)
    print()
    print(records.summary(recs))
    print(f"\n{len(recs)} configurations, {len(jobs)} jobs, {len(failed)} failed, "
          f"{total:.0f} s; * = more ranks than "
          f"cores ({os.cpu_count()}), MPICH busy-polls; ! = other processes used more than "
          f"{records.DISTURBED_CORES} cores during a job; files in {outdir}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
