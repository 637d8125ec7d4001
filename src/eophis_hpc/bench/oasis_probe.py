"""The ``oasis`` section of ``eophis-hpc bench``: OASIS3-MCT against eophis_hpc, measured in the
same run with the same field, ranks and steps.

For each configuration (a grid preset, one float64 field of ``levels``, halo, ``P`` model ranks
and ``Q`` workers) three paths run as MPMD jobs of their own, in turn, for a few passes (the
order rotates from pass to pass, so a drift of the machine's load is spread over the paths):

- ``pyoasis``: pyoasis alone, a model component putting its box and getting it back from a
  worker component that gets and puts its tile (``eophis_hpc.bench.oasis_roundtrip``);
- ``pyoasis_halo``: the same with the partitions eophis_hpc defines (the tile with its halo in,
  the tile's box out), so the OASIS share of the next path is known;
- ``eophis_oasis``: the same model component against eophis_hpc's OASIS transport (halo,
  reorder, identity model, send back);
- ``eophis_mpi``: eophis_hpc over MPI (``eophis_hpc.measure.roundtrip``, packed strategy, no naive
  path), with the raw MPI exchange of the same boxes measured in the same job.

Figures: the median round trip of each path (pooled over the passes) and the ratios between them.
The section is skipped, with the reason, where pyoasis does not import or loads another MPI
library than mpi4py (:func:`eophis_hpc.info.oasis_environment`).
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from ..grid import Grid
from ..launch import find_mpiexec
from ..measure import jobs as measure_jobs
from . import records

PATHS = ("pyoasis", "pyoasis_halo", "eophis_oasis", "eophis_mpi")
LABELS = {"pyoasis": "pyoasis alone", "pyoasis_halo": "pyoasis alone, halo partitions",
          "eophis_oasis": "eophis_hpc over OASIS", "eophis_mpi": "eophis_hpc over MPI"}
DT = 60  # seconds between coupling dates (any value: OASIS only needs whole seconds)


def configs(mode: str) -> list[dict]:
    """``(grid, levels, halo, P, Q)`` with their steps and passes, by bench mode."""
    def make(grid, levels, warmup, steps, passes):
        return {"grid": grid, "levels": levels, "dtype": "float64", "halo": 1, "P": 2, "Q": 1,
                "warmup": warmup, "steps": steps, "passes": passes}
    if mode == "smoke":
        return [make("eORCA05", 1, 1, 4, 1)]
    if mode == "quick":
        return [make("eORCA05", 1, 3, 20, 2)]
    return [make("eORCA05", 1, 3, 40, 3), make("eORCA025", 1, 2, 20, 3),
            make("eORCA05", 10, 2, 20, 3)]


def cfg_id(c: dict) -> str:
    return f"{c['grid']}-nz{c['levels']}-f64-h{c['halo']}-P{c['P']}Q{c['Q']}"


def _oasis_job(c: dict, path: str, k: int, jobs: Path, timeout: float):
    """One OASIS job in a folder of its own (OASIS writes its logs in the working folder)."""
    from ..oasis import namcouple as nc
    from .oasis_roundtrip import namcouple_tunnel
    workdir = (jobs / f"oasis-{cfg_id(c)}-{path}-pass{k + 1}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = {key: c[key] for key in ("grid", "levels", "halo", "P", "Q", "warmup", "steps")}
    cfg.update(dt=DT, path="eophis" if path == "eophis_oasis" else path,
               out=str(workdir / "record.json"), time_limit=max(10.0, timeout - 5.0))
    nsteps = cfg["warmup"] + cfg["steps"]
    nc.write_namcouple(nc.coupling_fields([namcouple_tunnel(cfg)]), nsteps * DT, str(workdir))
    cfg_path = workdir / "config.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    rec_path = workdir / "record.json"
    if rec_path.exists():
        rec_path.unlink()
    prog = [sys.executable, "-m", "eophis_hpc.bench.oasis_roundtrip"]
    cmd = [find_mpiexec(), "-n", str(c["P"]), *prog, "model", str(cfg_path),
           ":", "-n", str(c["Q"]), *prog, "worker", str(cfg_path)]
    rec, err = measure_jobs.launch(cmd, workdir, rec_path, timeout)
    if rec is None:
        return None, err
    return {"samples": rec["samples"], "bytes": rec["bytes"]}, ""


def _mpi_job(c: dict, k: int, jobs: Path, timeout: float):
    cfg = records.make(c["grid"], c["levels"], c["dtype"], (c["P"], c["Q"]), c["halo"],
                       "packed")
    cfg.update(warmup=c["warmup"], steps=c["steps"], naive=False)
    rec, err = measure_jobs.run_roundtrip(cfg, jobs, timeout, f"oasis-{cfg_id(c)}-eophis_mpi-pass{k + 1}")
    if rec is None:
        return None, err
    return {"samples": rec["paths"]["eophis"]["samples"], "bytes": rec["bytes"]["eophis"],
            "raw_samples": rec["paths"]["raw"]["samples"]}, ""


def run(jobs: Path, mode: str, timeout: float, log=print) -> tuple[list[dict], str, list]:
    """Measure every configuration of ``mode``; returns ``(rows, note, failed)``: one row per
    configuration (its samples by path), a note (why the section was skipped, else ""), and
    ``(job, why)`` for the jobs that failed."""
    from ..info import oasis_environment
    env = oasis_environment()
    if env["problem"]:
        return [], f"skipped: {env['problem']}", []
    log(f"[oasis] pyoasis {env['pyoasis']} ({', '.join(env.get('liboasis') or [])}); MPI "
        f"{' '.join(env['mpi'].split())}")
    rows, failed = [], []
    for c in configs(mode):
        row = {"config": c, "samples": {p: [] for p in PATHS}, "raw_samples": [], "bytes": {}}
        for k in range(c["passes"]):
            for path in PATHS[k % len(PATHS):] + PATHS[:k % len(PATHS)]:
                ident = f"oasis {cfg_id(c)} {path} (run {k + 1})"
                got, err = (_mpi_job(c, k, jobs, timeout) if path == "eophis_mpi" else
                            _oasis_job(c, path, k, jobs, timeout))
                if got is None:
                    failed.append((ident, err))
                    log(f"[oasis] {ident}: FAILED: {err.splitlines()[0] if err else ''}")
                    continue
                row["samples"][path] += got["samples"]
                row["raw_samples"] += got.get("raw_samples", [])
                row["bytes"][path] = got["bytes"]
                log(f"[oasis] {ident}: {records.ms(statistics.median(got['samples']))} ms")
        if all(row["samples"][p] for p in PATHS):
            rows.append(row)
    return rows, "", failed


def figures(row: dict) -> dict:
    """Medians (seconds) by path and the ratios between them."""
    med = {p: statistics.median(row["samples"][p]) for p in PATHS}
    raw = statistics.median(row["raw_samples"]) if row["raw_samples"] else None
    return {"median_s": med, "raw_mpi_s": raw,
            "oasis_over_pyoasis": med["eophis_oasis"] / med["pyoasis"],
            "oasis_over_halo": med["eophis_oasis"] / med["pyoasis_halo"],
            "pyoasis_over_mpi": med["pyoasis"] / med["eophis_mpi"],
            "oasis_over_mpi": med["eophis_oasis"] / med["eophis_mpi"]}


def markdown(rows: list[dict], note: str) -> list[str]:
    """The report's OASIS section."""
    if not rows:
        return [note or "not measured"]
    lines = ["Round trip of one float64 field (model -> workers -> model), medians in ms over every "
             "timed step of every pass, all measured in this run: `pyoasis` = pyoasis alone "
             "(model component put/get against a worker component's get/put of its tile); "
             "`pyoasis halo` = the same with eophis_hpc's partitions (the tile with its halo in, "
             "its box out); `eh OASIS` = eophis_hpc's OASIS transport against the same model "
             "component (halo, reorder, identity model, send back); `eh MPI` = eophis_hpc over "
             "MPI with the same field, ranks and steps (`raw MPI`: Isend/Irecv of the same boxes "
             "in that job). Ratios: `eh OASIS / pyoasis halo` = eophis_hpc's own cost on top of "
             "the same OASIS exchange; `pyoasis / eh MPI` = how much faster the MPI transport is "
             "than OASIS alone.", "",
             "| config | P:Q | steps x passes | pyoasis ms | pyoasis halo ms | eh OASIS ms "
             "| eh MPI ms | raw MPI ms | eh OASIS / pyoasis halo | eh OASIS / pyoasis "
             "| pyoasis / eh MPI | eh OASIS / eh MPI |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        c, f = row["config"], figures(row)
        g = Grid.preset(c["grid"])
        med = f["median_s"]
        lines.append(
            f"| {g.nx}x{g.ny} nz{c['levels']} f64 h{c['halo']} | {c['P']}:{c['Q']} "
            f"| {c['steps']} x {c['passes']} | {records.ms(med['pyoasis'])} "
            f"| {records.ms(med['pyoasis_halo'])} | {records.ms(med['eophis_oasis'])} "
            f"| {records.ms(med['eophis_mpi'])} | {records.ms(f['raw_mpi_s'])} "
            f"| {f['oasis_over_halo']:.2f} | {f['oasis_over_pyoasis']:.2f} "
            f"| {f['pyoasis_over_mpi']:.1f} | {f['oasis_over_mpi']:.1f} |")
    return lines


def log_lines(rows: list[dict]) -> list[str]:
    """One line per configuration for the end of the run."""
    out = []
    for row in rows:
        f = figures(row)
        med = f["median_s"]
        out.append(f"oasis {cfg_id(row['config'])}: pyoasis {records.ms(med['pyoasis'])} ms "
                   f"(halo partitions {records.ms(med['pyoasis_halo'])} ms), eophis_hpc OASIS "
                   f"{records.ms(med['eophis_oasis'])} ms (x{f['oasis_over_halo']:.2f} the halo "
                   f"partitions), eophis_hpc MPI "
                   f"{records.ms(med['eophis_mpi'])} ms (pyoasis / MPI {f['pyoasis_over_mpi']:.1f})")
    return out


def entries(rows: list[dict]) -> list[dict]:
    """pytest-benchmark entries: one per (configuration, path)."""
    out = []
    for row in rows:
        c, f = row["config"], figures(row)
        ident = cfg_id(c)
        for path in PATHS:
            name = f"test_oasis_roundtrip[{ident}-{path}]"
            extra = {"path": LABELS[path], "bytes_per_round_trip": row["bytes"].get(path),
                     "passes": c["passes"]}
            if path == "eophis_oasis":
                extra.update(ratio_to_pyoasis=f["oasis_over_pyoasis"],
                             ratio_to_pyoasis_halo=f["oasis_over_halo"])
            if path == "eophis_mpi":
                extra.update(pyoasis_over_mpi=f["pyoasis_over_mpi"], raw_mpi_s=f["raw_mpi_s"])
            out.append(records.entry(name, f"oasis {ident}",
                                     f"eophis_hpc/bench/oasis_probe.py::{name}",
                                     {"config": ident, "path": path}, extra,
                                     row["samples"][path], c["warmup"]))
    return out
