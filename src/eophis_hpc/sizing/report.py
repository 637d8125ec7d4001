"""``eophis-hpc plan``'s answer: the sized layout, the alternatives for the tiles, the sweep of
worker counts with its plateaus, as text, a JSON document and a figure."""
from __future__ import annotations

import sys
import time

from . import cost, job as jobmod
from .machine import Machine

MIB = 2**20


class Progress:
    """One line per step on ``stream`` (rewritten in place on a terminal)."""

    def __init__(self, total: int, stream=sys.stderr, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = stream.isatty()
        self.t0 = time.perf_counter()
        self.done = 0

    def step(self, text: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        line = (f"[{self.done}/{self.total}] {text} ({time.perf_counter() - self.t0:.1f} s)")
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")


def size(job: jobmod.Job, machine: Machine, n_workers: int, sweep: list[int] | None = None,
         tolerance: float = 0.05, alternatives: int = 4, progress: bool | None = None) -> dict:
    """Everything ``eophis-hpc plan`` reports, as one JSON-able dictionary."""
    t_start = time.perf_counter()
    counts = sweep if sweep is not None else jobmod.sweep_counts(job, n_workers)
    cands = jobmod.tile_candidates(job.grid, n_workers * job.tiles_per_worker, alternatives)
    n_steps = len(cands) + len(counts)
    if progress is None:
        progress = job.n_model * n_steps >= 4000
    bar = Progress(n_steps, enabled=progress)
    # the layout asked for, with auto tiles, then other tile grids of the same count
    main = None
    alts = []
    for k, dst in enumerate(cands):
        res = jobmod.evaluate(job, machine, n_workers, tiles=dst)
        bar.step(f"{n_workers} workers, tiles {res['tile_grid']}")
        if k == 0:
            main = res
        s, t = jobmod.best_time(res)
        alts.append({"tile_grid": res["tile_grid"], "strategy": s, "exchange_s": t,
                     "onnode_share": res["placement"]["onnode_share_after"]})
    rows = []
    for q in counts:
        res = main if q == n_workers else jobmod.evaluate(job, machine, q)
        bar.step(f"sweep: {q} workers")
        rows.append({"workers": q, "tiles": res["tiles"],
                     "onnode_share": res["placement"]["onnode_share_after"],
                     "inference_s": res["inference_s"],
                     "predictions": {s: {k: p[k] for k in ("exchange_s", "model_cpu_s",
                                                           "step_lag0_s", "step_lag1_s")}
                                     for s, p in res["predictions"]["placed"].items()}})
    bar.close()
    plateaus = {}
    for s in job.strategies:
        for lag, key in (("lag0", "step_lag0_s"), ("lag1", "step_lag1_s")):
            if job.model_step_s is None:
                key = "exchange_s" if lag == "lag0" else None
            times = [r["predictions"][s][key] if key else None for r in rows]
            plateaus.setdefault(s, {})[lag] = jobmod.plateau([r["workers"] for r in rows], times,
                                                             tolerance)
    return {"machine": machine.to_dict(), "job": _job_dict(job), "workers": n_workers,
            "layout": main, "tile_alternatives": alts, "sweep": rows,
            "plateau": {"tolerance": tolerance,
                        "measure": ("step time" if job.model_step_s is not None
                                    else "exchange time (lag 0 only: give --model-step-ms for "
                                         "the step times and lag 1)"),
                        "workers": plateaus},
            "seconds_to_answer": time.perf_counter() - t_start}


def _job_dict(job: jobmod.Job) -> dict:
    return {"grid": job.grid.to_dict(), "model_ranks": job.n_model, "levels": job.levels,
            "itemsize": job.itemsize, "halo": job.halo, "fields_in": job.fields_in,
            "fields_out": job.fields_out, "tiles_per_worker": job.tiles_per_worker,
            "model_per_node": job.model_per_node, "workers_per_node": job.workers_per_node,
            "placement": job.placement, "model_halo": job.model_halo,
            "inference_s_per_tile": job.inference_s_per_tile,
            "reference_workers": job.reference_workers, "model_step_s": job.model_step_s,
            "model_holes": job.model.holes, "strategies": list(job.strategies),
            "pipeline_chunk": job.chunk or cost.PIPELINE_CHUNK, "shm_buffers": job.shm_buffers}


def _grid_label(g: dict) -> str:
    return f"{g['name']} {g['nx']}x{g['ny']}" if g.get("name") else f"{g['nx']}x{g['ny']}"


def _ms(s) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _mb(b) -> str:
    return f"{b / MIB:.1f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def _chunk(b: int) -> str:
    return f"{b / MIB:g} MiB" if b >= MIB else f"{b / 1024:g} KiB" if b >= 1024 else f"{b} B"


def text(r: dict) -> str:
    """The human-readable answer."""
    lay, job = r["layout"], r["job"]
    g = job["grid"]
    tr = lay["traffic"]
    lines = [f"{_grid_label(g)}, {job['levels']} level(s) x "
             f"{job['itemsize']} B, halo {job['halo']}, {job['fields_in']} field(s) in, "
             f"{job['fields_out']} out; {job['model_ranks']} model ranks "
             f"({job['model_per_node']}/node) -> {r['workers']} workers "
             f"({job['workers_per_node']}/node, {job['placement']}), {lay['tiles']} tiles "
             f"({lay['tile_grid']}) on {lay['nodes']} nodes",
             f"machine: {r['machine']['name']}" + (f" ({r['machine']['source']})"
                                                   if r['machine'].get('source') else ""), "",
             "traffic per exchange      messages (max/median)   bytes (max/median)"]
    for name in ("scatter", "gather"):
        d = tr[name]
        for side, key in (("send", "send"), ("recv", "recv")):
            who = {("scatter", "send"): "model rank", ("scatter", "recv"): "worker",
                   ("gather", "send"): "worker", ("gather", "recv"): "model rank"}[name, side]
            m, b = d[f"{key}_messages_per_rank"], d[f"{key}_bytes_per_rank"]
            lines.append(f"  {name:<7} {side} per {who:<10} {m['max']:>6.0f} / {m['median']:<8.0f}"
                         f"  {_mb(b['max'])} / {_mb(b['median'])}")
    nodes = tr["nodes"]
    total = tr["scatter"]["bytes"] + tr["gather"]["bytes"]
    net = tr["scatter"]["network_bytes"] + tr["gather"]["network_bytes"]
    lines += [f"  all ranks: {_mb(total)} per exchange, {_mb(net)} across the network; per node "
              f"out/in (max): {_mb(nodes['network_bytes_out_per_node']['max'])} / "
              f"{_mb(nodes['network_bytes_in_per_node']['max'])}",
              f"  on-node share of the bytes: {lay['placement']['onnode_share_before']:.1%} "
              f"with today's tile order, {lay['placement']['onnode_share_after']:.1%} node-aware "
              f"({lay['placement']['moved_tiles']} tiles moved)", ""]
    mem = lay["memory"]
    w, m = mem["worker"], mem["model_rank"]
    lines += [f"memory per worker (max, {mem['tiles_per_worker_max']} tile(s) of "
              f"{mem['tile_shape_with_halo'][0]}x{mem['tile_shape_with_halo'][1]}): batches "
              f"{_mb(w['batches'])}, layout {_mb(w['layout'])}, runtime {_mb(w['runtime'])}; "
              f"total {_mb(w['total_shm'])} shm (output segments {_mb(w['shm_segments'])}), "
              f"{_mb(w['total_packed'])} packed or pipelined, {_mb(w['total_datatype'])} datatype",
              f"memory per model rank (max): total {_mb(m['total_shm'])} shm, "
              f"{_mb(m['total_packed'])} packed or pipelined, {_mb(m['total_datatype'])} datatype "
              f"(layout {_mb(m['layout'])})", ""]
    notes = [f"pipelined: chunks of {_chunk(job['pipeline_chunk'])}"
             if "pipelined" in job["strategies"] else "",
             "shm: the model's Coupler.buffer arrays"
             if job["shm_buffers"] and "shm" in job["strategies"] else ""]
    lines.append("predicted exchange per step (slowest rank per step"
                 + "".join(f"; {n}" for n in notes if n) + "):")
    for s, p in lay["predictions"]["placed"].items():
        today = lay["predictions"]["today"][s]["exchange_s"]
        ph = ", ".join(f"{k} {_ms(v)}" for k, v in p["phases_s"].items() if v)
        lines.append(f"  {s:<9} {_ms(p['exchange_s'])} (today's tile order {_ms(today)}): {ph}")
        if p["step_lag0_s"] is not None:
            lines.append(f"            step {_ms(p['step_lag0_s'])} at lag 0, "
                         f"{_ms(p['step_lag1_s'])} at lag 1 (model alone "
                         f"{_ms(job['model_step_s'])})")
    if len(r["tile_alternatives"]) > 1:
        lines += ["", "tile grids for the same count (node-aware, best strategy):"]
        for a in r["tile_alternatives"]:
            lines.append(f"  {a['tile_grid']:>9}: {_ms(a['exchange_s'])} ({a['strategy']}), "
                         f"on-node {a['onnode_share']:.1%}")
    lines += ["", f"sweep ({r['plateau']['measure']}):",
              "  workers  " + "  ".join(f"{s + ' ' + lag:>16}" for s in
                                        r['plateau']['workers'] for lag in ("lag0", "lag1"))]
    key = {"lag0": "step_lag0_s", "lag1": "step_lag1_s"}
    for row in r["sweep"]:
        cells = []
        for s in r["plateau"]["workers"]:
            for lag in ("lag0", "lag1"):
                p = row["predictions"][s]
                v = p[key[lag]] if job["model_step_s"] is not None else (
                    p["exchange_s"] if lag == "lag0" else None)
                cells.append(f"{_ms(v):>16}")
        lines.append(f"  {row['workers']:>7}  " + "  ".join(cells))
    pl = r["plateau"]["workers"]
    lines.append("plateau (fewest workers within "
                 f"{r['plateau']['tolerance']:.0%} of the best): " + "; ".join(
                     f"{s} lag 0: {pl[s]['lag0']}, lag 1: {pl[s]['lag1'] or '-'}" for s in pl))
    lines.append(f"(answered in {r['seconds_to_answer']:.1f} s)")
    return "\n".join(lines)


def figure(r: dict, path) -> str | None:
    """Predicted step (or exchange) time against worker count; None when matplotlib is
    missing (the caller says so)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    job = r["job"]
    rows = r["sweep"]
    q = [row["workers"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in r["plateau"]["workers"]:
        if job["model_step_s"] is not None:
            for lag, key, style in (("lag 0", "step_lag0_s", "-o"), ("lag 1", "step_lag1_s",
                                                                     "--s")):
                ax.plot(q, [row["predictions"][s][key] for row in rows], style, ms=3,
                        label=f"{s}, {lag}")
        else:
            ax.plot(q, [row["predictions"][s]["exchange_s"] for row in rows], "-o", ms=3,
                    label=f"{s}, exchange")
    if job["model_step_s"] is not None:
        ax.axhline(job["model_step_s"], color="k", lw=0.8, ls=":", label="model alone")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers")
    ax.set_ylabel("predicted seconds per step" if job["model_step_s"] is not None
                  else "predicted seconds per exchange")
    g = job["grid"]
    ax.set_title(f"{_grid_label(g)} x {job['levels']}, "
                 f"{job['model_ranks']} model ranks ({r['machine']['name']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
