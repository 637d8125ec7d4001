"""Driver of the MPI round-trip benchmark (issue 3): launches ``eophis_hpc.bench.roundtrip`` for each
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
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from eophis_hpc.bench import runner


GRIDS = {"eORCA05": "720x603", "eORCA025": "1440x1206"}
# Published pyoasis figures (Eophis through OASIS3-MCT, 2 model ranks to 1 Python rank, 2-core
# machine, one float64 field, one level presumably): seconds per round trip.
OASIS_S = {"eORCA05": 0.014, "eORCA025": 0.047}
# Targets of issue 3.
MAX_RAW_RATIO = {0: 1.5, 10: 2.0}  # by halo
MIN_OASIS_SPEEDUP = 5.0
PATHS = ("eophis", "raw", "naive")


# --------------------------------------------------------------------------- configurations
def cfg_id(c: dict) -> str:
    dt = {"float32": "f32", "float64": "f64"}[c["dtype"]]
    return (f"{c['grid']}-nz{c['levels']}-{dt}-h{c['halo']}-{c['strategy']}-"
            f"P{c['P']}Q{c['Q']}")


def field_bytes(c: dict) -> int:
    nx, ny = (int(v) for v in GRIDS[c["grid"]].split("x"))
    return nx * ny * c["levels"] * (4 if c["dtype"] == "float32" else 8)


def steps_for(c: dict, quick: bool) -> dict:
    """Warm-up and timed steps: many for small fields, few for the GB-sized ones (where the
    naive path, seconds per step, runs fewer still)."""
    nbytes = field_bytes(c)
    if nbytes < 20e6:
        return {"warmup": 3, "steps": 20 if quick else 40}
    if nbytes < 300e6:
        return {"warmup": 2, "steps": 5 if quick else 8}
    return {"warmup": 1, "steps": 3, "naive_warmup": 1, "naive_steps": 1}


def make(grid, levels, dtype, pq, halo, strategy) -> dict:
    return {"grid": grid, "levels": levels, "dtype": dtype, "halo": halo, "strategy": strategy,
            "P": pq[0], "Q": pq[1]}


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


# --------------------------------------------------------------------------- running
def run_job(c: dict, outdir: Path, timeout: float, tag: str = "") -> tuple[dict | None, str]:
    """Run one configuration; returns (record or None, error text)."""
    return runner.run_job(c, outdir, timeout, cfg_id(c) + tag)


def _busy_seconds() -> tuple[float, float] | None:
    """(busy, elapsed) CPU seconds of the whole machine so far, from Linux ``/proc/stat``."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = v[3] + v[4]
    return (sum(v) - idle) / tick, sum(v) / tick


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class LoadProbe:
    """CPU used by *other* processes during a job (the machine is shared): the machine's busy
    time minus the job's own CPU time (mpiexec and its ranks, reaped children), in cores."""

    def __enter__(self):
        self.t0, self.b0, self.c0 = time.perf_counter(), _busy_seconds(), _children_cpu()
        return self

    def __exit__(self, *exc):
        b1 = _busy_seconds()
        wall = time.perf_counter() - self.t0
        self.others = None
        if self.b0 is not None and b1 is not None and wall > 0:
            mine = _children_cpu() - self.c0
            self.others = max(0.0, (b1[0] - self.b0[0] - mine) / wall)


def wait_quiet(max_wait: float, cores: float = 0.25) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``cores`` cores; returns
    the load seen last."""
    deadline = time.perf_counter() + max_wait
    load = 0.0
    while True:
        b0, t0 = _busy_seconds(), time.perf_counter()
        time.sleep(0.5)
        b1 = _busy_seconds()
        if b0 is None or b1 is None:
            return 0.0
        load = (b1[0] - b0[0]) / (time.perf_counter() - t0)
        if load < cores or time.perf_counter() > deadline:
            return load


def merge(records: list[dict]) -> dict:
    """One record from the jobs (passes) of a configuration: the timed samples are pooled, so
    the medians are over every timed step of every pass; ``passes`` keeps each job's medians."""
    out = json.loads(json.dumps(records[0]))
    for path in PATHS:
        samples = [x for r in records for x in r["paths"][path]["samples"]]
        warm = [x for r in records for x in r["paths"][path]["warmup_samples"]]
        out["paths"][path] = {"median": statistics.median(samples), "min": min(samples),
                              "max": max(samples), "mean": statistics.mean(samples),
                              "rounds": len(samples), "samples": samples, "warmup_samples": warm}
    out["passes"] = [{"eophis_s": r["paths"]["eophis"]["median"],
                      "raw_s": r["paths"]["raw"]["median"],
                      "naive_s": r["paths"]["naive"]["median"],
                      "ratio_to_raw": r["paths"]["eophis"]["median"] / r["paths"]["raw"]["median"],
                      "other_load_cores": r.get("other_load_cores"),
                      "job_seconds": r.get("job_seconds")} for r in records]
    out["worker_phases"] = [r["worker_phases"] for r in records]
    out["model_phases_median_s"] = [r["model_phases_median_s"] for r in records]
    out["job_seconds"] = sum(r.get("job_seconds", 0.0) for r in records)
    return out


# --------------------------------------------------------------------------- figures
def figures(rec: dict) -> dict:
    """Medians, ratios and targets of one record."""
    c, p = rec["config"], rec["paths"]
    eo, raw, naive = (p[k]["median"] for k in PATHS)
    f = {"eophis_s": eo, "raw_s": raw, "naive_s": naive, "ratio_to_raw": eo / raw,
         "speedup_vs_naive": naive / eo, "raw_target": MAX_RAW_RATIO.get(c["halo"])}
    f["raw_target_met"] = None if f["raw_target"] is None else f["ratio_to_raw"] <= f["raw_target"]
    f["naive_target_met"] = (naive > eo) if c["Q"] >= 2 else None
    oasis = OASIS_S.get(c["grid"])
    if oasis and c["levels"] == 1 and c["dtype"] == "float64" and (c["P"], c["Q"]) == (2, 1):
        f["oasis_s"] = oasis
        f["speedup_vs_oasis"] = oasis / eo
        f["oasis_target_met"] = f["speedup_vs_oasis"] >= MIN_OASIS_SPEEDUP
    f["oversubscribed"] = c["P"] + c["Q"] > (os.cpu_count() or 1)
    return f


def _stats(samples: list[float]) -> dict:
    """The statistics pytest-benchmark stores (its own class when it is installed)."""
    try:
        from pytest_benchmark.stats import Stats
    except ImportError:
        Stats = None
    if Stats is not None:
        s = Stats()
        for x in samples:
            s.update(x)
        d = s.as_dict()
    else:  # the same fields, computed here
        data = sorted(samples)
        n = len(data)
        q1, _, q3 = statistics.quantiles(data, n=4) if n > 1 else (data[0],) * 3
        iqr = q3 - q1
        mean = statistics.mean(data)
        sd = statistics.stdev(data) if n > 1 else 0.0
        lo = next(x for x in data if x >= q1 - 1.5 * iqr)
        hi = next(x for x in reversed(data) if x <= q3 + 1.5 * iqr)
        d = {"min": data[0], "max": data[-1], "mean": mean, "stddev": sd, "rounds": n,
             "median": statistics.median(data), "iqr": iqr, "q1": q1, "q3": q3,
             "iqr_outliers": sum(x < lo or x > hi for x in data),
             "stddev_outliers": sum(abs(x - mean) > sd for x in data),
             "outliers": f"{sum(abs(x - mean) > sd for x in data)};"
                         f"{sum(x < lo or x > hi for x in data)}",
             "ld15iqr": lo, "hd15iqr": hi, "ops": 1 / mean, "total": sum(data)}
    d["data"] = list(samples)
    d["iterations"] = 1
    return d


def _machine_commit() -> tuple[dict, dict]:
    try:
        from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
        from pytest_benchmark.utils import get_commit_info
        return pytest_benchmark_generate_machine_info(), get_commit_info()
    except Exception as exc:  # not installed, or no git: the file stays readable
        import platform
        return ({"node": platform.node(), "machine": platform.machine(),
                 "python_version": platform.python_version(), "system": platform.system(),
                 "note": f"pytest-benchmark machine info unavailable: {exc}"}, {})


def bench_json(records: list[dict]) -> dict:
    """The pytest-benchmark JSON layout: one benchmark per (configuration, path)."""
    try:
        from pytest_benchmark import __version__ as pb_version
    except ImportError:
        pb_version = "5.1.0"
    machine, commit = _machine_commit()
    benches = []
    for rec in records:
        c = rec["config"]
        ident = cfg_id(c)
        figs = figures(rec)
        for path in PATHS:
            p = rec["paths"][path]
            name = f"test_roundtrip[{ident}-{path}]"
            keys = ("grid", "levels", "dtype", "halo", "strategy", "P", "Q")
            extra = {"path": path, "config": {k: c[k] for k in keys},
                     "bytes_per_round_trip": rec["bytes"][path],
                     "field_bytes": rec["bytes"]["field"],
                     "warmup_samples": p["warmup_samples"],
                     "oversubscribed": figs["oversubscribed"]}
            if path == "eophis":
                extra.update({k: v for k, v in figs.items() if k not in ("eophis_s", "raw_s",
                                                                         "naive_s")})
                extra["runtime"] = rec.get("runtime")
                extra["passes"] = rec.get("passes")
                extra["worker_phases"] = rec["worker_phases"]
                extra["model_phases_median_s"] = rec["model_phases_median_s"]
            benches.append({
                "group": ident, "name": name,
                "fullname": f"eophis_hpc/bench/roundtrip.py::{name}",
                "params": {"config": ident, "path": path}, "param": f"{ident}-{path}",
                "extra_info": extra,
                "options": {"disable_gc": False, "timer": "perf_counter",
                            "min_rounds": p["rounds"], "max_time": 0.0, "min_time": 0.0,
                            "warmup": len(p["warmup_samples"])},
                "stats": _stats(p["samples"])})
    return {"machine_info": machine, "commit_info": commit, "benchmarks": benches,
            "datetime": datetime.now(timezone.utc).isoformat(), "version": pb_version}


DISTURBED_CORES = 0.25


def disturbed(rec: dict) -> bool:
    """Whether other processes used more than ``DISTURBED_CORES`` during one of its jobs."""
    loads = [p.get("other_load_cores") for p in rec.get("passes", [rec])]
    return any(x is not None and x > DISTURBED_CORES for x in loads)


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g}" if s < 1 else f"{s * 1e3:.0f}"


def _mark(met) -> str:
    return "" if met is None else ("" if met else " (miss)")


def table(records: list[dict], failed: list[tuple[str, str]]) -> str:
    """Markdown table of the run (medians in ms, ratios within the same job)."""
    head = ("| config | P:Q | MB/trip | eophis_hpc ms | raw MPI ms | ratio | naive ms | x naive "
            "| x OASIS |")
    lines = [head, "|" + "---|" * 2 + "---:|" * 7]
    for rec in records:
        c, f = rec["config"], figures(rec)
        dt = {"float32": "f32", "float64": "f64"}[c["dtype"]]
        name = f"{GRIDS[c['grid']]} nz{c['levels']} {dt} h{c['halo']} {c['strategy']}"
        pq = f"{c['P']}:{c['Q']}" + ("*" if f["oversubscribed"] else "")
        pq += "!" if disturbed(rec) else ""
        oasis = (f"{f['speedup_vs_oasis']:.1f}{_mark(f['oasis_target_met'])}"
                 if "speedup_vs_oasis" in f else "")
        lines.append(
            f"| {name} | {pq} | {rec['bytes']['eophis'] / 1e6:.1f} | {_ms(f['eophis_s'])} "
            f"| {_ms(f['raw_s'])} | {f['ratio_to_raw']:.2f}{_mark(f['raw_target_met'])} "
            f"| {_ms(f['naive_s'])} | {f['speedup_vs_naive']:.2f}{_mark(f['naive_target_met'])} "
            f"| {oasis} |")
    for ident, why in failed:
        lines.append(f"| {ident} | FAILED | {why.splitlines()[0]} | | | | | | |")
    return "\n".join(lines)


def summary(records: list[dict]) -> str:
    """How many configurations met each target."""
    figs = [(rec["config"], figures(rec)) for rec in records]
    out = []
    for label, key in (("ratio to raw MPI", "raw_target_met"), ("faster than naive (Q >= 2)",
                                                                "naive_target_met"),
                       (f">= {MIN_OASIS_SPEEDUP:g}x OASIS", "oasis_target_met")):
        for strategy in ("packed", "datatype"):
            vals = [f[key] for c, f in figs if c["strategy"] == strategy and f.get(key) is not None]
            if vals:
                out.append(f"{label}, {strategy}: met in {sum(vals)} of {len(vals)}")
    return "\n".join(out)


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
    done: dict[str, list] = {}
    failed = []
    t_start = time.perf_counter()
    for n, (c, k) in enumerate(jobs, 1):
        c = dict(c)
        c.update(steps_for(c, args.quick))
        ident = cfg_id(c)
        before = wait_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
        t0 = time.perf_counter()
        with LoadProbe() as probe:
            rec, err = run_job(c, outdir, args.timeout, tag=f"-pass{k + 1}")
        if rec is None and args.retries > 0:  # e.g. the package was being reinstalled
            print(f"[{n}/{len(jobs)}] {ident}: failed, trying once more: "
                  f"{err.splitlines()[0]}", flush=True)
            time.sleep(10)
            t0 = time.perf_counter()
            with LoadProbe() as probe:
                rec, err = run_job(c, outdir, args.timeout, tag=f"-pass{k + 1}")
        took, others = time.perf_counter() - t0, probe.others
        if rec is None:
            failed.append((f"{ident} pass {k + 1}", err))
            print(f"[{n}/{len(jobs)}] {ident}: FAILED ({took:.0f} s): {err}", flush=True)
            continue
        rec["job_seconds"] = took
        rec["other_load_cores"] = others
        rec["other_load_before_cores"] = before
        done.setdefault(ident, []).append(rec)
        f = figures(rec)
        load = "" if others is None else f", others {others:.2f} cores"
        print(f"[{n}/{len(jobs)}] {ident} pass {k + 1}: eophis {_ms(f['eophis_s'])} ms, raw "
              f"{_ms(f['raw_s'])} ms (x{f['ratio_to_raw']:.2f}), naive {_ms(f['naive_s'])} ms "
              f"(x{f['speedup_vs_naive']:.2f}) [{took:.0f} s{load}]", flush=True)
    total = time.perf_counter() - t_start
    records = [merge(done[cfg_id(c)]) for c in configs if cfg_id(c) in done]
    (outdir / "roundtrip-records.json").write_text(json.dumps(records, indent=1))
    (outdir / "roundtrip-bench.json").write_text(json.dumps(bench_json(records), indent=1))
    text = table(records, failed)
    (outdir / "roundtrip-table.md").write_text(text + "\n\n" + summary(records) + "\n")
    print()
    print(text)
    print()
    print(summary(records))
    print(f"\n{len(records)} configurations, {len(jobs)} jobs, {len(failed)} failed, "
          f"{total:.0f} s; * = more ranks than "
          f"cores ({os.cpu_count()}), MPICH busy-polls; ! = other processes used more than "
          f"{DISTURBED_CORES} cores during a job; files in {outdir}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
