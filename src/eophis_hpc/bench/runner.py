"""The loop over a matrix of round-trip configurations for ``eophis-hpc bench`` and
``benchmarks/run_roundtrip.py``: one MPI job each (launched by :mod:`eophis_hpc.measure.jobs`),
one progress line per job, the load of other processes recorded with every record; and the MPI
library probe (``eophis-hpc info --probe``)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..launch import find_mpiexec
from ..measure.jobs import LoadProbe, job_files, launch, run_roundtrip, wait_quiet
from . import records


def run_probe(cfg: dict, workdir: Path, timeout: float) -> tuple[dict | None, str]:
    """The MPI library probe (``eophis_hpc.bench.mpiprobe``) between two ranks; returns
    ``(record, "")`` or ``(None, why it failed)``."""
    workdir, cfg_path, rec_path = job_files(workdir, "mpiprobe", cfg, timeout)
    cmd = [find_mpiexec(), "-n", "2", sys.executable, "-m", "eophis_hpc.bench.mpiprobe",
           str(cfg_path)]
    return launch(cmd, workdir, rec_path, timeout)


# --------------------------------------------------------------------------- a matrix
def run_matrix(jobs: list[tuple[dict, int]], outdir: Path, timeout: float, quiet_wait: float,
               retries: int, log=print) -> tuple[dict[str, list[dict]], list[tuple[str, str]]]:
    """Run ``(configuration, pass index)`` jobs in order, each with its steps already set; a
    failed job is run once more when ``retries`` > 0, then reported, never skipped silently.
    Before each job waits up to ``quiet_wait`` s for idle cores (0: no wait) and records the
    load of other processes during it. ``log`` gets one line per job with its figures and
    elapsed time. Returns ``({configuration id: [records]}, [(job, why it failed)])``."""
    done: dict[str, list[dict]] = {}
    failed = []
    for n, (c, k) in enumerate(jobs, 1):
        ident = records.cfg_id(c)
        before = wait_quiet(quiet_wait, records.DISTURBED_CORES) if quiet_wait > 0 else None
        t0 = time.perf_counter()
        with LoadProbe() as probe:
            rec, err = run_roundtrip(c, outdir, timeout, f"{ident}-pass{k + 1}")
        if rec is None and retries > 0:  # e.g. the package was being reinstalled
            log(f"[{n}/{len(jobs)}] {ident}: failed, trying once more: {err.splitlines()[0]}")
            time.sleep(10)
            t0 = time.perf_counter()
            with LoadProbe() as probe:
                rec, err = run_roundtrip(c, outdir, timeout, f"{ident}-pass{k + 1}")
        took, others = time.perf_counter() - t0, probe.others
        if rec is None:
            failed.append((f"{ident} pass {k + 1}", err))
            log(f"[{n}/{len(jobs)}] {ident}: FAILED ({took:.1f} s): {err}")
            continue
        rec["job_seconds"] = took
        rec["other_load_cores"] = others
        rec["other_load_before_cores"] = before
        done.setdefault(ident, []).append(rec)
        f = records.figures(rec)
        load = "" if others is None else f", others {others:.2f} cores"
        naive = ("" if f["naive_s"] is None else
                 f", naive {records.ms(f['naive_s'])} ms (x{f['speedup_vs_naive']:.2f})")
        log(f"[{n}/{len(jobs)}] {ident} pass {k + 1}: eophis {records.ms(f['eophis_s'])} ms, raw "
            f"{records.ms(f['raw_s'])} ms (x{f['ratio_to_raw']:.2f}){naive} [{took:.1f} s{load}]")
    return done, failed
