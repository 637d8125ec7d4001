"""Round-trip records and what is computed from them: identifiers, the merge of several jobs
(passes) of one configuration, the figures (medians, same-run ratios, targets), Markdown tables,
and pytest-benchmark's JSON layout (so ``pytest-benchmark compare`` reads our files).

Shared by ``benchmarks/run_roundtrip.py``, ``eophis-hpc bench`` and ``eophis-hpc tune``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import datetime, timezone

from ..grid import Grid

# Targets of issue 3 (round trips) and issue 2 (kernels, plans). OASIS is compared in the same
# run by ``eophis-hpc bench --only oasis`` (bench/oasis_probe.py), never with published figures.
MAX_RAW_RATIO = {0: 1.5, 10: 2.0}  # eophis_hpc / raw MPI, by halo
MIN_COPYTO_RATIO = 0.7  # compiled (Cython) pack/unpack bandwidth / numpy.copyto
MIN_FANCY_SPEEDUP = 3.0  # compiled pack/unpack speed-up over NumPy fancy indexing
PATHS = ("eophis", "raw", "naive")
DISTURBED_CORES = 0.25  # other processes above this during a job: the figure is marked "!"


# --------------------------------------------------------------------------- configurations
def make(grid, levels, dtype, pq, halo, strategy) -> dict:
    """A round-trip configuration (keys of ``eophis_hpc.measure.roundtrip``)."""
    return {"grid": grid, "levels": levels, "dtype": dtype, "halo": halo, "strategy": strategy,
            "P": pq[0], "Q": pq[1]}


def cfg_id(c: dict) -> str:
    dt = {"float32": "f32", "float64": "f64"}[c["dtype"]]
    return (f"{c['grid']}-nz{c['levels']}-{dt}-h{c['halo']}-{c['strategy']}-"
            f"P{c['P']}Q{c['Q']}")


def grid_size(c: dict) -> str:
    g = Grid.preset(c["grid"])
    return f"{g.nx}x{g.ny}"


def field_bytes(c: dict) -> int:
    g = Grid.preset(c["grid"])
    return g.nx * g.ny * c["levels"] * (4 if c["dtype"] == "float32" else 8)


def steps_for(c: dict, quick: bool) -> dict:
    """Warm-up and timed steps: many for small fields, few for the GB-sized ones (where the
    naive path, seconds per step, runs fewer still)."""
    nbytes = field_bytes(c)
    if nbytes < 20e6:
        return {"warmup": 3, "steps": 20 if quick else 40}
    if nbytes < 300e6:
        return {"warmup": 2, "steps": 5 if quick else 8}
    return {"warmup": 1, "steps": 3, "naive_warmup": 1, "naive_steps": 1}


def paths_of(rec: dict) -> tuple[str, ...]:
    """The paths a record measured (``naive`` is None when the job skipped it)."""
    return tuple(p for p in PATHS if rec["paths"].get(p) is not None)


# --------------------------------------------------------------------------- merging
def _pooled(samples: list[float], warm: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "mean": statistics.mean(samples), "rounds": len(samples), "samples": samples,
            "warmup_samples": warm}


def merge(records: list[dict]) -> dict:
    """One record from the jobs (passes) of a configuration: the timed samples are pooled, so
    the medians are over every timed step of every pass; ``passes`` keeps each job's medians;
    ``worker_phases`` and ``model_phases_median_s`` become lists with one entry per pass."""
    out = json.loads(json.dumps(records[0]))
    for path in PATHS:
        if any(r["paths"].get(path) is None for r in records):
            out["paths"][path] = None
            continue
        out["paths"][path] = _pooled([x for r in records for x in r["paths"][path]["samples"]],
                                     [x for r in records for x in
                                      r["paths"][path]["warmup_samples"]])

    def med(r, path):
        return None if r["paths"].get(path) is None else r["paths"][path]["median"]

    out["passes"] = [{"eophis_s": med(r, "eophis"), "raw_s": med(r, "raw"),
                      "naive_s": med(r, "naive"),
                      "ratio_to_raw": med(r, "eophis") / med(r, "raw"),
                      "other_load_cores": r.get("other_load_cores"),
                      "job_seconds": r.get("job_seconds")} for r in records]
    out["worker_phases"] = [r["worker_phases"] for r in records]
    out["model_phases_median_s"] = [r["model_phases_median_s"] for r in records]
    out["job_seconds"] = sum(r.get("job_seconds", 0.0) for r in records)
    return out


# --------------------------------------------------------------------------- figures
def figures(rec: dict) -> dict:
    """Medians, same-job ratios and targets of one record (naive figures are None when the job
    skipped the naive path)."""
    c, p = rec["config"], rec["paths"]
    eo, raw = p["eophis"]["median"], p["raw"]["median"]
    naive = p["naive"]["median"] if p.get("naive") else None
    f = {"eophis_s": eo, "raw_s": raw, "naive_s": naive, "ratio_to_raw": eo / raw,
         "speedup_vs_naive": None if naive is None else naive / eo,
         "raw_target": MAX_RAW_RATIO.get(c["halo"])}
    f["raw_target_met"] = None if f["raw_target"] is None else f["ratio_to_raw"] <= f["raw_target"]
    f["naive_target_met"] = (naive > eo) if c["Q"] >= 2 and naive is not None else None
    f["oversubscribed"] = c["P"] + c["Q"] > (os.cpu_count() or 1)
    return f


def worker_split(rec: dict) -> dict:
    """Seconds per step on the workers of the eophis_hpc path, from their phase timings:
    exchange (wait for the model's note + recv + send), staging (h2d + d2h; 0 on a CPU) and
    inference (the model call). Each phase is the median over the steps of the slowest worker,
    then the median over the passes."""
    passes = rec["worker_phases"]
    if passes and isinstance(passes[0], dict):  # an unmerged record: one list of workers
        passes = [passes]

    def phase(name):
        vals = [max((w.get(name, {}).get("median_s", 0.0) for w in workers), default=0.0)
                for workers in passes]
        return statistics.median(vals) if vals else 0.0

    return {"exchange": phase("wait") + phase("recv") + phase("send"),
            "staging": phase("h2d") + phase("d2h"), "inference": phase("model")}


# --------------------------------------------------------------------------- pytest-benchmark
def stats(samples: list[float]) -> dict:
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


def machine_commit() -> tuple[dict, dict]:
    """pytest-benchmark's machine and commit descriptions (a smaller machine description and no
    commit when it is not installed or this is not a git checkout)."""
    try:
        from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
        from pytest_benchmark.utils import get_commit_info
        return pytest_benchmark_generate_machine_info(), get_commit_info()
    except Exception as exc:  # not installed, or no git: the file stays readable
        return ({"node": platform.node(), "machine": platform.machine(),
                 "processor": platform.processor(), "cpu_count": os.cpu_count(),
                 "python_version": platform.python_version(), "system": platform.system(),
                 "release": platform.release(),
                 "note": f"pytest-benchmark machine info unavailable: {exc}"}, {})


def entry(name: str, group: str, fullname: str, params: dict, extra: dict,
          samples: list[float], warmup: int = 0) -> dict:
    """One benchmark of pytest-benchmark's JSON layout, from the timed samples (seconds)."""
    return {"group": group, "name": name, "fullname": fullname, "params": params,
            "param": "-".join(str(v) for v in params.values()), "extra_info": extra,
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": len(samples),
                        "max_time": 0.0, "min_time": 0.0, "warmup": warmup},
            "stats": stats(samples)}


def document(entries: list[dict], machine: dict | None = None, commit: dict | None = None) -> dict:
    """pytest-benchmark's JSON file around ``entries``."""
    try:
        from pytest_benchmark import __version__ as pb_version
    except ImportError:
        pb_version = "5.1.0"
    if machine is None or commit is None:
        machine, commit = machine_commit()
    return {"machine_info": machine, "commit_info": commit, "benchmarks": entries,
            "datetime": datetime.now(timezone.utc).isoformat(), "version": pb_version}


def roundtrip_entries(records: list[dict]) -> list[dict]:
    """One benchmark per (configuration, path), the configuration as the group."""
    out = []
    keys = ("grid", "levels", "dtype", "halo", "strategy", "P", "Q")
    for rec in records:
        c = rec["config"]
        ident = cfg_id(c)
        figs = figures(rec)
        for path in paths_of(rec):
            p = rec["paths"][path]
            name = f"test_roundtrip[{ident}-{path}]"
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
            out.append(entry(name, ident, f"eophis_hpc/measure/roundtrip.py::{name}",
                             {"config": ident, "path": path}, extra, p["samples"],
                             len(p["warmup_samples"])))
    return out


def bench_json(records: list[dict]) -> dict:
    """The pytest-benchmark JSON file of round-trip records."""
    return document(roundtrip_entries(records))


# --------------------------------------------------------------------------- tables
def disturbed(rec: dict) -> bool:
    """Whether other processes used more than ``DISTURBED_CORES`` during one of its jobs."""
    loads = [p.get("other_load_cores") for p in rec.get("passes", [rec])]
    return any(x is not None and x > DISTURBED_CORES for x in loads)


def ms(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.3g}" if s < 1 else f"{s * 1e3:.0f}"


def mark(met) -> str:
    return "" if met is None else ("" if met else " (miss)")


def table(records: list[dict], failed: list[tuple[str, str]]) -> str:
    """Markdown table of round trips (medians in ms, ratios within the same job)."""
    head = "| config | P:Q | MB/trip | eophis_hpc ms | raw MPI ms | ratio | naive ms | x naive |"
    lines = [head, "|" + "---|" * 2 + "---:|" * 6]
    for rec in records:
        c, f = rec["config"], figures(rec)
        dt = {"float32": "f32", "float64": "f64"}[c["dtype"]]
        name = f"{grid_size(c)} nz{c['levels']} {dt} h{c['halo']} {c['strategy']}"
        pq = f"{c['P']}:{c['Q']}" + ("*" if f["oversubscribed"] else "")
        pq += "!" if disturbed(rec) else ""
        naive = ("-" if f["speedup_vs_naive"] is None else
                 f"{f['speedup_vs_naive']:.2f}{mark(f['naive_target_met'])}")
        lines.append(
            f"| {name} | {pq} | {rec['bytes']['eophis'] / 1e6:.1f} | {ms(f['eophis_s'])} "
            f"| {ms(f['raw_s'])} | {f['ratio_to_raw']:.2f}{mark(f['raw_target_met'])} "
            f"| {ms(f['naive_s'])} | {naive} |")
    for ident, why in failed:
        lines.append(f"| {ident} | FAILED | {why.splitlines()[0]} | | | | | |")
    return "\n".join(lines)


def target_counts(records: list[dict]) -> list[tuple[str, str, int, int]]:
    """``(target, strategy, met, measured)`` for each round-trip target and strategy."""
    figs = [(rec["config"], figures(rec)) for rec in records]
    out = []
    for label, key in (("round trip <= 1.5x raw MPI at halo 0, <= 2x at halo 10",
                        "raw_target_met"),
                       ("faster than naive gather/pad/scatter (Q >= 2)", "naive_target_met")):
        for strategy in ("packed", "datatype"):
            vals = [f[key] for c, f in figs if c["strategy"] == strategy and f.get(key) is not None]
            if vals:
                out.append((label, strategy, sum(vals), len(vals)))
    return out


def summary(records: list[dict]) -> str:
    """How many configurations met each target."""
    return "\n".join(f"{label}, {strategy}: met in {met} of {n}"
                     for label, strategy, met, n in target_counts(records))
