"""The cost model against round trips measured here (``eophis-hpc plan --validate``).

Each configuration runs the round-trip probe (:mod:`eophis_hpc.measure.roundtrip`: one field to
the workers with its halo, identity model, back) ``repeats`` times as its own MPI job; the
figure is the median of the jobs' medians, next to the prediction for the same layout with all
ranks on this node, the probe's raw MPI exchange of the same boxes in the same jobs (what the
transport itself did then), and the most CPU other processes used during one of the jobs.
"""
from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
from pathlib import Path

from ..decomposition import Decomposition
from ..grid import Grid
from . import job as jobmod
from .machine import Machine

GRID = "eORCA05"  # 720x603, cyclic, F-pivot fold
PQ = ((1, 1), (2, 1), (1, 2), (2, 2))
EVERYWHERE = ("packed", "datatype")   # measured at every P:Q
ONE_TO_ONE = ("shm", "pipelined")     # measured at 1:1 only (more ranks than cores: noise)


def matrix(grid: str = GRID, levels=(1, 75), halos=(0, 10), pq=PQ,
           strategies=EVERYWHERE + ONE_TO_ONE, one_to_one_only=ONE_TO_ONE) -> list[dict]:
    """Round-trip configurations (keys of the probe), float64, one tile per worker; the
    strategies of ``one_to_one_only`` only where ``P = Q = 1``."""
    out = []
    for nz, h, (p, q), s in itertools.product(levels, halos, pq, strategies):
        if s in one_to_one_only and (p, q) != (1, 1):
            continue
        steps = {"warmup": 3, "steps": 30} if nz == 1 else {"warmup": 2, "steps": 6}
        out.append({"grid": grid, "levels": nz, "dtype": "float64", "halo": h, "P": p, "Q": q,
                    "strategy": s, "backend": None, "tiles": q, "naive": False, **steps})
    return out


def predict_roundtrip(machine: Machine, cfg: dict) -> float:
    """Predicted seconds of one probe round trip: every rank on one node, identity model."""
    g = Grid.preset(cfg["grid"])
    p, q = cfg["P"], cfg["Q"]
    job = jobmod.Job(g, Decomposition.auto(g, p), levels=cfg["levels"],
                     itemsize=8 if cfg["dtype"] == "float64" else 4, halo=cfg["halo"],
                     tiles_per_worker=max(1, cfg.get("tiles", q) // q), model_per_node=p,
                     workers_per_node=q, placement="shared", strategies=(cfg["strategy"],),
                     chunk=cfg.get("chunk"), shm_buffers=bool(cfg.get("buffers")))
    res = jobmod.evaluate(job, machine, q, node_aware=False)
    return res["predictions"]["today"][cfg["strategy"]]["exchange_s"]


def label(cfg: dict) -> str:
    g = Grid.preset(cfg["grid"])
    return (f"{g.nx}x{g.ny} nz{cfg['levels']} h{cfg['halo']} {cfg['strategy']} "
            f"{cfg['P']}:{cfg['Q']}")


def validate(machine: Machine, configs: list[dict] | None = None, repeats: int = 3,
             progress: bool = True, workdir: Path | None = None, timeout: float = 300,
             quiet_wait: float = 20.0, quiet_cores: float = 0.5) -> list:
    """Measured and predicted round trip of each configuration; raises RuntimeError when a job
    fails twice. Before each job, waits up to ``quiet_wait`` s for the other processes to leave
    the cores (a shared machine)."""
    from ..measure import jobs
    configs = matrix() if configs is None else configs
    rows = []
    with tempfile.TemporaryDirectory(prefix="eophis-validate-") as tmp:
        wd = Path(workdir or tmp)
        for n, cfg in enumerate(configs, 1):
            got, raw, loads = [], [], []
            for k in range(repeats):
                for attempt in (0, 1):
                    if quiet_wait > 0:
                        jobs.wait_quiet(quiet_wait, quiet_cores)
                    with jobs.LoadProbe() as probe:
                        rec, err = jobs.run_roundtrip(cfg, wd, timeout, f"validate-{n}-{k}")
                    if rec is not None:
                        break
                if rec is None:
                    raise RuntimeError(f"{label(cfg)}: {err.splitlines()[0] if err else ''}")
                got.append(rec["paths"]["eophis"]["median"])
                raw.append(rec["paths"]["raw"]["median"])
                loads.append(probe.others)
            measured = statistics.median(got)
            predicted = predict_roundtrip(machine, cfg)
            row = {"config": label(cfg), "cfg": cfg, "P": cfg["P"], "Q": cfg["Q"],
                   "levels": cfg["levels"],
                   "halo": cfg["halo"], "strategy": cfg["strategy"], "measured_s": measured,
                   "measured_runs_s": got, "predicted_s": predicted,
                   "raw_mpi_s": statistics.median(raw),
                   "error": (predicted - measured) / measured,
                   "error_vs_fastest": (predicted - min(got)) / min(got),
                   "others_load_cores": max((x for x in loads if x is not None), default=None)}
            rows.append(row)
            if progress:
                print(f"[{n}/{len(configs)}] {row['config']}: measured {measured * 1e3:.3g} ms, "
                      f"predicted {predicted * 1e3:.3g} ms ({row['error']:+.0%})",
                      file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of :func:`validate`'s rows."""
    out = ["| configuration | measured (median; runs) | raw MPI, same jobs | predicted | error | "
           "error vs the fastest run | others' load |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        runs = ", ".join(f"{x * 1e3:.3g}" for x in r["measured_runs_s"])
        load = "-" if r["others_load_cores"] is None else f"{r['others_load_cores']:.2f}"
        out.append(f"| {r['config']} | {r['measured_s'] * 1e3:.3g} ms ({runs}) | "
                   f"{r['raw_mpi_s'] * 1e3:.3g} ms | {r['predicted_s'] * 1e3:.3g} ms | "
                   f"{r['error']:+.0%} | {r['error_vs_fastest']:+.0%} | {load} |")
    return "\n".join(out)
