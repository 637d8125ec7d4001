"""``eophis-hpc bench``: run the benchmark suite on this machine and write a report folder.

Sections (each figure is measured next to a baseline of the same bytes in the same run):

- ``kernels``: pack and unpack of the busiest model box and tile of a realistic plan (eORCA025,
  8x8 model boxes to 16 worker tiles, halo 10, float64) for a few level counts (message
  sizes), with every available kernel backend, against ``numpy.copyto`` of the same bytes (the
  memory roofline) and NumPy fancy indexing of the same cells; every method's output is first
  checked against the NumPy reference kernels;
- ``plan``: plan build time on model-size decompositions, against the issue's targets;
- ``mpi``: a raw MPI ping-pong between two ranks for the same byte counts as the kernels (the
  transport's line in the bandwidth plot);
- ``roundtrip``: MPI round trips (``eophis_hpc.measure.roundtrip``, one MPMD job each):
  eophis_hpc vs raw MPI vs naive gather/pad/scatter in the same job;
- ``staging``: the tunnel's host/device copies against a plain pinned copy (GPU only);
- ``oasis``: pyoasis alone, eophis_hpc over OASIS and eophis_hpc over MPI, same field, ranks and
  steps (:mod:`.oasis_probe`; skipped, with the reason, where pyoasis cannot run);
- ``overlap``: the model's time per step, synthetic model of X ms and inference of Y ms
  (Y/X = 0.25, 0.5, 0.9, 1.5), for lag 0, the within-step placement and lag 1
  (:mod:`.overlap`).

Files in the output folder: ``summary.md``, ``benchmarks.json`` (pytest-benchmark's layout:
``pytest-benchmark compare DIR/benchmarks.json``), ``machine.json``, ``roundtrip-records.json``,
``bandwidth.png``, ``roundtrip.png``, ``step-split.png`` (with matplotlib), and each MPI job's
configuration and record in ``jobs/``.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import oasis_probe, overlap, plots, records, runner
from .modes import KERNEL_PLAN, MODES, Mode
from ..measure import jobs
from ..measure.copyjobs import make_pack_job, make_unpack_job, sample_times

SECTIONS = ("kernels", "plan", "mpi", "roundtrip", "staging", "oasis", "overlap")
class OutputError(Exception):
    """The output folder cannot be written."""


def prepare_out(out: Path) -> Path:
    """Create ``out`` (and ``out/jobs``) and check it can be written, before anything runs."""
    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out}: exists and is not a folder")
        (out / "jobs").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return out


def _log(line: str) -> None:
    print(line, flush=True)


class Bench:
    """One run: what was measured, skipped or failed, and the files written from it."""

    def __init__(self, out: Path, mode: Mode, sections, timeout: float, log=_log):
        self.out, self.mode, self.sections = out, mode, sections
        self.timeout, self.log = timeout, log
        self.kernel_rows: list[dict] = []
        self.plan_rows: list[dict] = []
        self.mpi_rows: list[dict] = []
        self.roundtrip_records: list[dict] = []
        self.staging_rows: list[dict] = []
        self.oasis_rows: list[dict] = []
        self.overlap_rows: list[dict] = []
        self.notes: dict[str, str] = {}  # section -> why it was skipped
        self.failed: list[tuple[str, str]] = []
        self.seconds: dict[str, float] = {}

    # ----------------------------------------------------------------------- sections
    def run(self) -> None:
        for name in SECTIONS:
            if name not in self.sections:
                self.notes[name] = "not selected (--only)"
                continue
            self.log(f"== {name}")
            t0 = time.perf_counter()
            try:
                getattr(self, f"run_{name}")()
            except Exception as exc:  # one section's failure must not lose the others
                self.failed.append((name, f"{type(exc).__name__}: {exc}"))
                self.log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            self.seconds[name] = time.perf_counter() - t0

    def run_kernels(self) -> None:
        from .. import kernels
        from ..decomposition import Decomposition
        from ..grid import Grid
        from ..plan import Plan
        gname, px, py, ntiles, halo = KERNEL_PLAN
        grid = Grid.preset(gname)
        plan = Plan(grid, Decomposition.blocks(grid, px, py), Decomposition.auto(grid, ntiles),
                    halo=halo)
        backends = [b for b, state in kernels.available().items() if state == "ok"]
        self.notes.update({f"backend {b}": state for b, state in kernels.available().items()
                           if state != "ok"})
        for direction, make_job in (("unpack", make_unpack_job), ("pack", make_pack_job)):
            for nz in self.mode.levels:
                t0 = time.perf_counter()
                job = make_job(plan, nz, "float64")
                case = f"{direction} {gname} {px}x{py}->{ntiles} h{halo} nz{nz} f64"
                meds = {}
                for method in ("copyto", "fancy", *backends):
                    job.check(method)
                    samples = sample_times(job.call(method), 5, self.mode.max_time)
                    med = statistics.median(samples)
                    meds[method] = med
                    self.kernel_rows.append({"direction": direction, "levels": nz,
                                             "case": case, "method": method,
                                             "bytes": job.nbytes, "median_s": med,
                                             "samples": samples})
                parts = ", ".join(
                    f"{m} {records.ms(t)} ms" + ("" if m in ("copyto", "fancy") else
                                                 f" ({meds['copyto'] / t:.2f} copyto, "
                                                 f"x{meds['fancy'] / t:.1f} fancy)")
                    for m, t in meds.items())
                self.log(f"[kernels] {direction} nz{nz} {job.nbytes / 1e6:.2f} MB: {parts} "
                         f"[{time.perf_counter() - t0:.1f} s]")
                del job

    def run_plan(self) -> None:
        from ..decomposition import Decomposition
        from ..grid import Grid
        from ..plan import Plan
        for gname, px, py, ntiles, target in self.mode.plan_cases:
            t0 = time.perf_counter()
            grid = (Grid.preset(gname) if gname != "4320x3057" else
                    Grid(nx=4320, ny=3057, east_west="cyclic", north="fold", pivot="T"))
            src, dst = Decomposition.blocks(grid, px, py), Decomposition.auto(grid, ntiles)
            built = []

            def build():
                built.append(Plan(grid, src, dst, halo=10))
            samples = sample_times(build, self.mode.plan_rounds, 0.0)
            plan = built[-1]
            med = statistics.median(samples)
            self.plan_rows.append({"case": f"{gname} {plan.n_src}->{plan.n_dst} h10",
                                   "n_src": plan.n_src, "n_dst": plan.n_dst,
                                   "messages": len(plan.pairs), "median_s": med,
                                   "target_s": target, "samples": samples})
            verdict = "" if target is None else (
                f" (target < {target:g} s: {'met' if med < target else 'MISSED'})")
            self.log(f"[plan] {gname} {plan.n_src} boxes -> {plan.n_dst} tiles: "
                     f"{records.ms(med)} ms{verdict} [{time.perf_counter() - t0:.1f} s]")

    def run_mpi(self) -> None:
        sizes = sorted({r["bytes"] for r in self.kernel_rows})
        if not sizes:  # kernels not run: the sizes they would have used, roughly
            sizes = [int(s) for s in (1e5, 1e6, 1e7, 5e7)]
        t0 = time.perf_counter()
        rec, err = jobs.run_pingpong(sizes, self.out / "jobs", self.timeout)
        if rec is None:
            self.failed.append(("raw MPI ping-pong", err))
            self.log(f"[mpi] ping-pong FAILED: {err}")
            return
        for nbytes, samples, med in zip(rec["sizes"], rec["one_way_samples"],
                                        rec["one_way_median_s"]):
            self.mpi_rows.append({"bytes": nbytes, "median_s": med, "samples": samples})
        line = ", ".join(f"{r['bytes'] / 1e6:.2f} MB {r['bytes'] / r['median_s'] / 1e9:.2f} GB/s"
                         for r in self.mpi_rows)
        self.log(f"[mpi] raw Send/Recv one way, 2 ranks: {line} "
                 f"[{time.perf_counter() - t0:.1f} s]")

    def run_roundtrip(self) -> None:
        configs = self.mode.roundtrips()
        jobs = [(dict(c, **self.mode.steps(c)), 0) for c in configs]
        done, failed = runner.run_matrix(jobs, self.out / "jobs", self.timeout,
                                         self.mode.quiet_wait, retries=1, log=self.log)
        self.failed += failed
        self.roundtrip_records = [records.merge(done[records.cfg_id(c)]) for c in configs
                                  if records.cfg_id(c) in done]

    def run_staging(self) -> None:
        from . import staging
        fw, what = staging.gpu_framework()
        if fw is None:
            self.notes["staging"] = f"skipped: no GPU here ({what})"
            self.log(f"[staging] {self.notes['staging']}")
            return
        for levels in (1, 36):
            t0 = time.perf_counter()
            res = staging.bandwidth(fw, levels, repeats=5 if self.mode.name == "smoke" else 20)
            self.staging_rows.append(res)
            parts = ", ".join(
                f"{d} {res[d]['staging_s'] * 1e3:.3g} ms vs plain {res[d]['plain_s'] * 1e3:.3g} ms"
                + ("" if res[d]["ratio"] is None else f" ({res[d]['ratio']:.2f})")
                for d in ("h2d", "d2h"))
            self.log(f"[staging] {fw} {levels} levels, {res['bytes'] / 1e6:.1f} MB: {parts} "
                     f"[{time.perf_counter() - t0:.1f} s]")

    def run_oasis(self) -> None:
        self.oasis_rows, note, failed = oasis_probe.run(self.out / "jobs", self.mode.name,
                                                        self.timeout, self.log)
        self.failed += failed
        if note:
            self.notes["oasis"] = note
            self.log(f"[oasis] {note}")

    def run_overlap(self) -> None:
        rows, failed = overlap.run_sweep(self.out / "jobs", self.timeout, log=self.log,
                                         **self.mode.overlap)
        self.overlap_rows, self.failed = rows, self.failed + failed

    # ----------------------------------------------------------------------- results
    def kernel_figures(self) -> list[dict]:
        """Each kernel row with its baselines of the same case: copyto, fancy, raw MPI."""
        base = {(r["case"], r["method"]): r["median_s"] for r in self.kernel_rows}
        mpi = {r["bytes"]: r["median_s"] for r in self.mpi_rows}
        out = []
        for r in self.kernel_rows:
            t = r["median_s"]
            copyto, fancy = base[(r["case"], "copyto")], base[(r["case"], "fancy")]
            m = mpi.get(r["bytes"])
            out.append(dict(r, gbs=r["bytes"] / t / 1e9, copyto_s=copyto, fancy_s=fancy,
                            mpi_s=m, ratio_to_copyto=copyto / t, speedup_vs_fancy=fancy / t,
                            ratio_to_mpi=None if m is None else m / t))
        return out

    def targets(self) -> list[tuple[str, str, str]]:
        """``(target, measured, verdict)`` rows."""
        from .staging import MIN_BANDWIDTH_RATIO
        rows = []
        cy = [f for f in self.kernel_figures() if f["method"] == "cython"]
        for d in ("pack", "unpack"):
            sub = [f for f in cy if f["direction"] == d]
            if not sub:
                continue
            for key, lim, label in (("ratio_to_copyto", records.MIN_COPYTO_RATIO,
                                     f"Cython {d} >= {records.MIN_COPYTO_RATIO} of numpy.copyto"),
                                    ("speedup_vs_fancy", records.MIN_FANCY_SPEEDUP,
                                     f"Cython {d} >= {records.MIN_FANCY_SPEEDUP:g}x fancy "
                                     "indexing")):
                vals = [f[key] for f in sub]
                met = sum(v >= lim for v in vals)
                rows.append((label, f"{min(vals):.2f}-{max(vals):.2f}",
                             f"met in {met} of {len(vals)}"))
        for p in self.plan_rows:
            if p["target_s"] is not None:
                rows.append((f"plan build {p['case']} < {p['target_s']:g} s",
                             f"{records.ms(p['median_s'])} ms",
                             "met" if p["median_s"] < p["target_s"] else "**missed**"))
        for label, strategy, met, n in records.target_counts(self.roundtrip_records):
            rows.append((f"{label} ({strategy})", f"{n} configurations",
                         f"met in {met} of {n}"))
        for s in self.staging_rows:
            for d in ("h2d", "d2h"):
                ratio = s[d]["ratio"]
                if ratio is not None:
                    rows.append((f"staging {d} >= {MIN_BANDWIDTH_RATIO} of a plain pinned copy "
                                 f"({s['levels']} levels)", f"{ratio:.2f}",
                                 "met" if ratio >= MIN_BANDWIDTH_RATIO else "**missed**"))
        return rows + overlap.targets(self.overlap_rows)

    def step_rows(self) -> list[dict]:
        out = []
        for rec in self.roundtrip_records:
            c = rec["config"]
            split = records.worker_split(rec)
            out.append(dict(split, field=_field(c),
                            label=f"h{c['halo']} {c['strategy']} {c['P']}:{c['Q']}",
                            round_trip_s=rec["paths"]["eophis"]["median"]))
        return out

    def benchmark_entries(self) -> list[dict]:
        out = []
        fn = "eophis_hpc/bench/report.py::"
        for f in self.kernel_figures():
            name = f"test_{f['direction']}[nz{f['levels']}-{f['method']}]"
            extra = {k: f[k] for k in ("bytes", "gbs", "ratio_to_copyto", "speedup_vs_fancy",
                                       "ratio_to_mpi", "case")}
            extra["GB/s"] = extra.pop("gbs")
            out.append(records.entry(name, f["case"], fn + name,
                                     {"levels": f["levels"], "method": f["method"]}, extra,
                                     f["samples"], 1))
        for p in self.plan_rows:
            name = f"test_plan_build[{p['case'].replace(' ', '-')}]"
            out.append(records.entry(name, "plan build", fn + name, {"case": p["case"]},
                                     {k: p[k] for k in ("n_src", "n_dst", "messages",
                                                        "target_s")}, p["samples"], 1))
        for m in self.mpi_rows:
            name = f"test_mpi_one_way[{m['bytes']}]"
            out.append(records.entry(name, "raw MPI one way", fn + name, {"bytes": m["bytes"]},
                                     {"bytes": m["bytes"],
                                      "GB/s": m["bytes"] / m["median_s"] / 1e9},
                                     m["samples"], 1))
        for s in self.staging_rows:
            for d in ("h2d", "d2h"):
                for path in ("staging", "plain"):
                    samples = s[d][f"{path}_samples"]
                    if not samples:
                        continue
                    name = f"test_staging[{s['framework']}-nz{s['levels']}-{d}-{path}]"
                    out.append(records.entry(
                        name, f"staging {d} {s['levels']} levels", fn + name,
                        {"levels": s["levels"], "direction": d, "path": path},
                        {"bytes": s["bytes"], "ratio": s[d]["ratio"]}, samples))
        return (out + records.roundtrip_entries(self.roundtrip_records)
                + oasis_probe.entries(self.oasis_rows) + overlap.entries(self.overlap_rows))


def _field(c: dict) -> str:
    return f"{records.grid_size(c)} nz{c['levels']} {c['dtype']}"


# --------------------------------------------------------------------------- summary.md
def _md_table(head: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if n < right_from else "---:" for n in range(len(head))]
    return ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows]


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def summary_md(b: Bench, machine_text: str, started: str, total_s: float, pngs: list[str],
               plot_note: str) -> str:
    lines = [f"# eophis_hpc benchmark report ({b.mode.name})", "",
             f"Started {started}, {total_s:.0f} s. Every time is a median; every ratio is "
             "against a baseline of the same bytes measured in the same run (a ratio above 1 "
             "means faster than the baseline, except `ratio` of round trips: eophis_hpc time / "
             "raw MPI time).", ""]
    if b.failed:
        lines += ["**Failed:**", ""]
        lines += [f"- {what}: {why.splitlines()[0]}" for what, why in b.failed]
        lines.append("")
    lines += ["## Targets", ""]
    lines += _md_table(["target", "measured", "verdict"], [list(t) for t in b.targets()], 3)
    lines += ["", "## Pack and unpack kernels", ""]
    if b.kernel_rows:
        gname, px, py, ntiles, halo = KERNEL_PLAN
        lines += [f"Plan: {gname}, {px}x{py} model boxes -> {ntiles} tiles, halo {halo}, "
                  "float64; unpack = every message of the north-fold tile with the most blocks, "
                  "pack = every message of the model box with the most runs. `/copyto` = "
                  "bandwidth / `numpy.copyto` of the same bytes; `x fancy` = speed-up over "
                  "NumPy fancy indexing; `/MPI` = bandwidth / raw MPI one-way transfer of the "
                  "same bytes.", ""]
        rows = [[f"{f['direction']} nz{f['levels']}", f["method"], f"{f['bytes'] / 1e6:.2f}",
                 records.ms(f["median_s"]), f"{f['gbs']:.2f}", records.ms(f["copyto_s"]),
                 f"{f['ratio_to_copyto']:.2f}", records.ms(f["fancy_s"]),
                 f"{f['speedup_vs_fancy']:.2f}", records.ms(f["mpi_s"]),
                 _fmt(f["ratio_to_mpi"], ".2f")] for f in b.kernel_figures()]
        lines += _md_table(["case", "method", "MB", "ms", "GB/s", "copyto ms", "/copyto",
                            "fancy ms", "x fancy", "MPI ms", "/MPI"], rows, 2)
    else:
        lines.append(b.notes.get("kernels", "not measured"))
    lines += ["", "## Plan build", ""]
    if b.plan_rows:
        rows = [[p["case"], str(p["messages"]), records.ms(p["median_s"]),
                 "" if p["target_s"] is None else f"< {p['target_s']:g} s",
                 "" if p["target_s"] is None else f"{p['target_s'] / p['median_s']:.0f}x under"]
                for p in b.plan_rows]
        lines += _md_table(["case", "messages", "build ms", "target", "margin"], rows, 1)
    else:
        lines.append(b.notes.get("plan", "not measured"))
    lines += ["", "## Raw MPI transfer (2 ranks, one way)", ""]
    if b.mpi_rows:
        lines += _md_table(["MB", "ms", "GB/s"],
                           [[f"{m['bytes'] / 1e6:.2f}", records.ms(m["median_s"]),
                             f"{m['bytes'] / m['median_s'] / 1e9:.2f}"] for m in b.mpi_rows])
    else:
        lines.append(b.notes.get("mpi", "not measured"))
    lines += ["", "## MPI round trips", ""]
    rt_failed = [f for f in b.failed if " pass " in f[0]]
    if b.roundtrip_records or rt_failed:
        lines += ["One field out to the workers and back per step; in the same job: eophis_hpc, "
                  "raw MPI Isend/Irecv of the same boxes, naive gather/pad/scatter. ratio = "
                  "eophis_hpc / raw MPI; x naive = naive / eophis_hpc (OASIS: see below); * = "
                  f"more ranks than cores ({os.cpu_count()}); ! = other processes used more than "
                  f"{records.DISTURBED_CORES} cores during the job.", ""]
        lines += records.table(b.roundtrip_records, rt_failed).splitlines()
        lines += ["", "Time per step on the workers (slowest worker, medians, ms):", ""]
        lines += _md_table(["config", "exchange (wait+recv+send)", "staging (h2d+d2h)",
                            "inference (model)", "model-side round trip"],
                           [[f"{r['field']} {r['label']}", f"{r['exchange'] * 1e3:.3g}",
                             f"{r['staging'] * 1e3:.3g}", f"{r['inference'] * 1e3:.3g}",
                             records.ms(r["round_trip_s"])] for r in b.step_rows()])
    else:
        lines.append(b.notes.get("roundtrip", "not measured"))
    lines += ["", "## GPU staging", ""]
    if b.staging_rows:
        rows = [[f"{s['framework']} nz{s['levels']} {d}", f"{s['bytes'] / 1e6:.1f}",
                 records.ms(s[d]["staging_s"]), records.ms(s[d]["plain_s"]),
                 _fmt(s[d]["ratio"], ".2f")] for s in b.staging_rows for d in ("h2d", "d2h")]
        lines += _md_table(["case", "MB", "staging ms", "plain pinned copy ms", "ratio"], rows)
    else:
        lines.append(b.notes.get("staging", "not measured"))
    lines += ["", "## OASIS", ""] + oasis_probe.markdown(b.oasis_rows, b.notes.get("oasis", ""))
    lines += ["", "## Overlap (lagged exchanges)", ""]
    lines += overlap.markdown(b.overlap_rows) or [b.notes.get("overlap", "not measured")]
    lines += ["", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in pngs] or [plot_note]
    lines += ["", "## Machine", "", "```", machine_text, "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point
def machine_description() -> tuple[dict, dict, str]:
    """pytest-benchmark's machine and commit info, and ``eophis-hpc info``'s text."""
    from ..info import report
    machine, commit = records.machine_commit()
    return machine, commit, report()


def write_plots(b: Bench) -> tuple[list[str], str]:
    plt = plots.pyplot()
    if plt is None:
        note = f"matplotlib is not installed: no plots. Install it with: {plots.PLOT_HINT}"
        return [], note
    written = []
    if b.kernel_rows:
        written.append(plots.bandwidth(plt, b.kernel_rows, b.mpi_rows, b.out / "bandwidth.png"))
    if b.roundtrip_records:
        rows = []
        for rec in b.roundtrip_records:
            c, f = rec["config"], records.figures(rec)
            rows.append(dict(f, pq=f"{c['P']}:{c['Q']}", halo=c["halo"],
                             strategy=c["strategy"],
                             field=_field(c)))
        written.append(plots.roundtrips(plt, rows, b.out / "roundtrip.png"))
        written.append(plots.step_split(plt, b.step_rows(), b.out / "step-split.png"))
    return [p.name for p in written], ""


def main(args) -> int:
    """``eophis-hpc bench``: ``args`` has ``out``, ``quick``, ``smoke``, ``only``, ``timeout``."""
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    try:
        out = prepare_out(Path(args.out))
    except OutputError as exc:
        print(f"eophis-hpc bench: {exc}", file=sys.stderr)
        return 2
    sections = tuple(args.only) if args.only else SECTIONS
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    _log(f"eophis-hpc bench ({mode.name}): sections {', '.join(sections)}; report in {out}/")
    machine, commit, machine_text = machine_description()
    b = Bench(out, mode, sections, args.timeout)
    b.run()
    pngs, plot_note = write_plots(b)
    if plot_note:
        _log(plot_note)
    total = time.perf_counter() - t0
    (out / "machine.json").write_text(json.dumps(
        {"pytest_benchmark_machine_info": machine, "commit_info": commit,
         "eophis_hpc_info": machine_text.splitlines(), "cpu_count": os.cpu_count(),
         "python": sys.executable, "mode": mode.name, "started": started}, indent=1))
    entries = b.benchmark_entries()
    (out / "benchmarks.json").write_text(json.dumps(records.document(entries, machine, commit),
                                                    indent=1))
    (out / "roundtrip-records.json").write_text(json.dumps(b.roundtrip_records, indent=1))
    (out / "summary.md").write_text(summary_md(b, machine_text, started, total, pngs, plot_note))
    _log("")
    for target, measured, verdict in b.targets():
        _log(f"  {target}: {measured}: {verdict}")
    for name in ("staging", "oasis"):
        if name in b.notes and name in sections:
            _log(f"  {name}: {b.notes[name]}")
    for line in oasis_probe.log_lines(b.oasis_rows):
        _log(f"  {line}")
    _log(f"\n{len(entries)} benchmarks, {len(b.failed)} failed, "
         f"{total:.0f} s; report: {out / 'summary.md'}"
         + (f", plots: {', '.join(pngs)}" if pngs else ""))
    return 1 if b.failed else 0
