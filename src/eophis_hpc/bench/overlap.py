"""Overlap benchmark: does a lagged exchange hide the inference behind the model's step?

One model rank and one worker (one core each). The model's step is a synthetic computation of
``X`` ms (a busy loop); the worker's inference a busy loop of ``Y`` ms. Three placements of the
exchange in the model's step, each its own MPMD job:

- ``lag0``: put, get, compute (the synchronous coupling: ``X + Y`` + transfer per step);
- ``within``: put at the start of the step, compute, get at its end (lag 0; Morays' '-A'
  placement);
- ``lag1``: put, get, compute with ``Exchange(lag=1)``: the get returns the previous step's
  result, so the worker infers while the model computes.

plus ``transfer``: ``lag0`` with ``X = Y = 0`` (the put + get cost alone, the issue's
baseline). Figures are the model's median time per step over the timed steps.

Target (with lag 1): for ``Y <= 0.9 X`` the step takes at most ``X + transfer + 0.05 X``
(inference fully hidden); for ``Y > X`` at most ``Y + transfer + 0.05 X`` (bounded by the
inference, not ``X + Y``).

Job usage (model first)::

    mpiexec -n 1 python -m eophis_hpc.bench.overlap model CFG.json \
          : -n 1 python -m eophis_hpc.bench.overlap worker CFG.json

:func:`spawned` instead makes the calling process the model rank and spawns the worker
(``MPI_Comm_spawn``), so that pytest-benchmark times the model's steps itself
(``benchmarks/test_bench_overlap.py``).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

RATIOS = (0.25, 0.5, 0.9, 1.5)  # Y / X
MODES = ("lag0", "within", "lag1")
HIDDEN_RATIO = 0.9  # Y / X up to which the inference must be hidden
SLACK = 0.05  # of X, allowed on top of the transfer


def busy(seconds: float) -> None:
    """A synthetic computation: keep this core busy for ``seconds`` (wall clock)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def grid_of(cfg: dict):
    import eophis_hpc as eh
    return eh.Grid(nx=cfg["nx"], ny=cfg["ny"])


def exchanges(cfg: dict):
    import eophis_hpc as eh
    lag = 1 if cfg["mode"] == "lag1" else 0
    return [eh.Exchange(inputs=["u"], outputs=["fu"], levels=cfg["levels"], lag=lag)]


# --------------------------------------------------------------------------- the job
class ModelSteps:
    """The synthetic model on one rank: ``step()`` runs one step (put, get and X ms of
    computation in the configuration's order) and returns the seconds spent in put + get."""

    def __init__(self, cpl, cfg: dict):
        g = grid_of(cfg)
        self.cpl, self.x, self.within = cpl, cfg["X_ms"] / 1e3, cfg["mode"] == "within"
        self.u = np.random.default_rng(0).standard_normal((cfg["levels"], g.ny, g.nx))
        self.out = np.empty_like(self.u)
        self.n = 0

    def step(self) -> float:
        t0 = time.perf_counter()
        self.cpl.put("u", self.u, self.n)
        if self.within:
            busy(self.x)
            t1 = time.perf_counter()
            self.cpl.get("fu", self.n, out=self.out)
            coupling = (t1 - t0 - self.x) + (time.perf_counter() - t1)
        else:
            self.cpl.get("fu", self.n, out=self.out)
            coupling = time.perf_counter() - t0
            busy(self.x)
        self.n += 1
        return coupling


def run_model(cfg: dict) -> None:
    import eophis_hpc as eh
    g = grid_of(cfg)
    cpl = eh.connect(g, eh.Box(0, g.ny, 0, g.nx), timeout=cfg.get("timeout", 120))
    model = ModelSteps(cpl, cfg)
    steps, waited = [], []
    for n in range(cfg["warmup"] + cfg["steps"]):
        t0 = time.perf_counter()
        coupling = model.step()
        if n >= cfg["warmup"]:
            steps.append(time.perf_counter() - t0)
            waited.append(coupling)
    cpl.close()
    Path(cfg["out"]).write_text(json.dumps({"config": cfg, "step_samples": steps,
                                            "coupling_samples": waited}))


@contextmanager
def spawned(cfg: dict):
    """This process as the model rank of ``cfg``, its worker spawned (MPI_Comm_spawn);
    yields the :class:`ModelSteps`. MPI starts here if it has not."""
    from mpi4py import MPI

    import eophis_hpc as eh
    inter = MPI.COMM_SELF.Spawn(sys.executable, ["-m", "eophis_hpc.bench.overlap", "spawned",
                                                 json.dumps(cfg)], maxprocs=1)
    world = inter.Merge(high=False)
    g = grid_of(cfg)
    cpl = eh.connect(g, eh.Box(0, g.ny, 0, g.nx), timeout=cfg.get("timeout", 120), world=world)
    try:
        yield ModelSteps(cpl, cfg)
    finally:
        cpl.close()
        world.Free()
        inter.Disconnect()


def run_worker(cfg: dict, world=None) -> None:
    import eophis_hpc as eh
    tunnel = eh.Tunnel(grid_of(cfg), halo=0, exchanges=exchanges(cfg), verbose=False,
                       timeout=cfg.get("timeout", 120), world=world)
    y = cfg["Y_ms"] / 1e3

    @tunnel.model
    def infer(u):
        busy(y)
        return u  # the batch itself: no allocation, the timing is the busy loop's

    tunnel.run()


# --------------------------------------------------------------------------- the section
def configurations(x_ms: float, nx: int, ny: int, levels: int, steps: int, warmup: int,
                   ratios=RATIOS) -> list:
    """The jobs of one sweep: the transfer baseline, then every mode at every Y/X."""
    base = {"nx": nx, "ny": ny, "levels": levels, "steps": steps, "warmup": warmup}
    out = [dict(base, mode="lag0", X_ms=0.0, Y_ms=0.0, label="transfer")]
    for r in ratios:
        for mode in MODES:
            out.append(dict(base, mode=mode, X_ms=x_ms, Y_ms=r * x_ms, ratio=r,
                            label=f"{mode} Y/X={r:g}"))
    return out


def run_job(cfg: dict, workdir: Path, timeout: float, ident: str) -> tuple[dict | None, str]:
    """One configuration as an MPMD job of its own (the measurement API's launch and time
    limit)."""
    from ..launch import find_mpiexec
    from ..measure import jobs
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    rec_path, cfg_path = workdir / f"overlap-{ident}.json", workdir / f"overlap-cfg-{ident}.json"
    if rec_path.exists():
        rec_path.unlink()
    cfg_path.write_text(json.dumps(dict(cfg, out=str(rec_path)), indent=1))
    prog = [sys.executable, "-m", "eophis_hpc.bench.overlap"]
    cmd = [find_mpiexec(), "-n", "1", *prog, "model", str(cfg_path), ":", "-n", "1", *prog,
           "worker", str(cfg_path)]
    return jobs.launch(cmd, workdir, rec_path, timeout)


def run_sweep(workdir: Path, timeout: float, x_ms: float = 20.0, nx: int = 256, ny: int = 256,
              levels: int = 1, steps: int = 30, warmup: int = 3, ratios=RATIOS,
              log=print) -> tuple[list, list]:
    """Every configuration of a sweep; returns ``(rows, failed)``; a row is the configuration
    with the median step, the median coupling time (put + get, waits included) and the
    samples, and the load other processes put on the machine during the job."""
    from ..measure.jobs import LoadProbe
    rows, failed = [], []
    cfgs = configurations(x_ms, nx, ny, levels, steps, warmup, ratios)
    for n, cfg in enumerate(cfgs, 1):
        ident = cfg["label"].replace(" ", "-").replace("/", "").replace("=", "")
        t0 = time.perf_counter()
        with LoadProbe() as probe:
            rec, err = run_job(cfg, workdir, timeout, ident)
        if rec is None:
            failed.append((f"overlap {cfg['label']}", err))
            log(f"[overlap {n}/{len(cfgs)}] {cfg['label']}: FAILED: {err.splitlines()[0]}")
            continue
        row = dict(cfg, step_s=statistics.median(rec["step_samples"]),
                   coupling_s=statistics.median(rec["coupling_samples"]),
                   samples=rec["step_samples"], other_load_cores=probe.others)
        rows.append(row)
        load = "" if probe.others is None else f", others {probe.others:.2f} cores"
        log(f"[overlap {n}/{len(cfgs)}] {cfg['label']}: {row['step_s'] * 1e3:.2f} ms per step "
            f"(X {cfg['X_ms']:g} ms, Y {cfg['Y_ms']:g} ms) [{time.perf_counter() - t0:.1f} s"
            f"{load}]")
    return rows, failed


def transfer_s(rows: list) -> float | None:
    base = [r for r in rows if r["label"] == "transfer"]
    return base[0]["step_s"] if base else None


def bound_s(row: dict, transfer: float) -> float:
    """The issue's limit for a lag-1 step."""
    x, y = row["X_ms"] / 1e3, row["Y_ms"] / 1e3
    return (x if row["ratio"] <= HIDDEN_RATIO else max(x, y)) + transfer + SLACK * x


def table(rows: list) -> tuple[list[str], list[list[str]]]:
    """Per Y/X: the step of each placement (ms) and what lag 1 achieved."""
    transfer = transfer_s(rows)
    by = {(r.get("ratio"), r["mode"]): r for r in rows if r["label"] != "transfer"}
    head = ["Y/X", "X ms", "Y ms", "lag 0 ms", "within-step ms", "lag 1 ms", "lag 1 limit ms",
            "hidden", "verdict"]
    out = []
    for ratio in RATIOS:
        got = [by.get((ratio, m)) for m in MODES]
        if not any(got):
            continue
        ref = next(r for r in got if r)
        lag0, lag1 = got[0], got[2]
        cells = [f"{ratio:g}", f"{ref['X_ms']:g}", f"{ref['Y_ms']:g}"]
        cells += ["-" if r is None else f"{r['step_s'] * 1e3:.2f}" for r in got]
        if lag1 is not None and transfer is not None:
            limit = bound_s(lag1, transfer)
            hidden = ("-" if lag0 is None else
                      f"{(lag0['step_s'] - lag1['step_s']) / (ref['Y_ms'] / 1e3):.0%} of Y")
            cells += [f"{limit * 1e3:.2f}", hidden,
                      "met" if lag1["step_s"] <= limit else "**missed**"]
        else:
            cells += ["-", "-", "-"]
        out.append(cells)
    return head, out


def targets(rows: list) -> list[tuple[str, str, str]]:
    transfer = transfer_s(rows)
    out = []
    if transfer is None:
        return out
    for r in rows:
        if r["mode"] != "lag1":
            continue
        limit = bound_s(r, transfer)
        what = ("inference hidden" if r["ratio"] <= HIDDEN_RATIO else "bounded by Y")
        out.append((f"lag 1, Y/X={r['ratio']:g}: step <= {limit * 1e3:.2f} ms ({what})",
                    f"{r['step_s'] * 1e3:.2f} ms",
                    "met" if r["step_s"] <= limit else "**missed**"))
    return out


def entries(rows: list) -> list[dict]:
    """pytest-benchmark entries, one per job, from the per-step samples."""
    from . import records
    out = []
    for r in rows:
        name = f"test_overlap[{r['label'].replace(' ', '-')}]"
        params = {"mode": r["mode"], "X_ms": r["X_ms"], "Y_ms": r["Y_ms"]}
        out.append(records.entry(name, "overlap (model time per step)",
                                 "eophis_hpc/bench/overlap.py::" + name, params,
                                 {"coupling_s": r["coupling_s"],
                                  "other_load_cores": r["other_load_cores"]}, r["samples"],
                                 r["warmup"]))
    return out


def markdown(rows: list) -> list[str]:
    if not rows:
        return []
    transfer = transfer_s(rows)
    ref = rows[-1]
    lines = [f"One model rank, one worker; a {ref['ny']}x{ref['nx']}x{ref['levels']} float64 "
             "field out and back per step; the model computes X ms per step, the worker infers "
             "Y ms (busy loops). Median model time per step; put + get alone (X = Y = 0): "
             + ("-" if transfer is None else f"{transfer * 1e3:.2f} ms") + ". Limit of lag 1: "
             f"X (or Y when Y > X) + put/get + {SLACK:.0%} of X; hidden = (lag 0 - lag 1) / Y.",
             ""]
    head, body = table(rows)
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return lines


def _spawned_worker(cfg: dict) -> None:
    from mpi4py import MPI
    parent = MPI.Comm.Get_parent()
    world = parent.Merge(high=True)
    run_worker(cfg, world)
    world.Free()
    parent.Disconnect()


if __name__ == "__main__":
    role, arg = sys.argv[1], sys.argv[2]
    if role == "spawned":
        _spawned_worker(json.loads(arg))
    else:
        with open(arg) as fh:
            config = json.load(fh)
        (run_model if role == "model" else run_worker)(config)
