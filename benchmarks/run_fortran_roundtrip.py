"""Round trip with the model side in Fortran, next to the Python client in the same run.

For each configuration (P:Q 1:1 and 2:1 on eORCA05 720x603 and eORCA025 1440x1206, one level,
float64, halo 0) it alternates two MPMD jobs on the MPI library of the Fortran wrapper (the
workers' mpi4py pointed at it, so both jobs use the same MPI):

- Fortran: ``benchmarks/fortran/roundtrip.F90`` (the Fortran client, then raw MPI from Fortran);
- Python: ``eophis_hpc.measure.roundtrip`` model side (the Python client, then raw mpi4py);

with the same worker program (``eophis_hpc.measure.roundtrip`` worker side, datatype strategy,
identity model). Each job reports the median over its timed steps of the per-step maximum over
model ranks; the table gives the median over ``--repeat`` jobs and the ratios to each job's own
raw-MPI figure (same bytes, same ranks, same job).

Usage: python benchmarks/run_fortran_roundtrip.py [--wrapper mpifort.mpich] [--repeat 3]
       [--out bench-report-fortran] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import eophis_hpc as eh
from eophis_hpc import fortran

HERE = Path(__file__).parent


def compile_all(wrapper: str, out: Path) -> Path:
    subprocess.run([wrapper, "-O2", "-c", str(fortran.source()), "-o", "eophis_hpc.o"], cwd=out,
                   check=True)
    subprocess.run([wrapper, "-O2", str(HERE / "fortran" / "roundtrip.F90"), "eophis_hpc.o",
                    "-o", "roundtrip_f"], cwd=out, check=True)
    return out / "roundtrip_f"


def configs(quick: bool) -> list[dict]:
    grids = ("eORCA05",) if quick else ("eORCA05", "eORCA025")
    out = []
    for grid in grids:
        for p, q in ((1, 1), (2, 1)):
            steps = 40 if grid == "eORCA05" else 20
            out.append({"grid": grid, "levels": 1, "dtype": "float64", "halo": 0, "P": p,
                        "Q": q, "warmup": 5, "steps": steps, "strategy": "datatype",
                        "naive": False, "time_limit": 240})
    return out


def fortran_config(cfg: dict, path: Path) -> None:
    g = eh.Grid.preset(cfg["grid"])
    boxes = eh.Decomposition.auto(g, cfg["P"]).boxes
    lines = [f"{g.nx} {g.ny} {g.east_west} {g.south} {g.north} {g.pivot} {cfg['levels']} 8 "
             f"{cfg['warmup']} {cfg['steps']} {cfg['Q']}"]
    lines += [f"{b.j0} {b.j1} {b.i0} {b.i1}" for b in boxes]
    path.write_text("\n".join(lines) + "\n")


def run_job(cmd: list[str], env: dict, cwd: Path, timeout: float) -> None:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"job failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout[-2000:]}"
                           f"\n{out.stderr[-2000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wrapper", default="mpifort.mpich")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="bench-report-fortran")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    exe = compile_all(args.wrapper, out)
    mpiexec = str(fortran.mpiexec_of(args.wrapper))
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               **fortran.worker_env(fortran.libmpi_of(args.wrapper), shim_root=out / "libmpi"))
    worker = [sys.executable, "-m", "eophis_hpc.measure.roundtrip", "worker"]
    rows = []
    cfgs = configs(args.quick)
    for n, cfg in enumerate(cfgs):
        tag = f"{cfg['grid']}-{cfg['P']}x{cfg['Q']}"
        cfg_json = out / f"config-{tag}.json"
        fortran_config(cfg, out / f"config-{tag}.txt")
        runs = {"fortran": [], "fortran_raw": [], "python": [], "python_raw": []}
        for rep in range(args.repeat):
            print(f"[{n + 1}/{len(cfgs)}] {tag} repeat {rep + 1}/{args.repeat}", flush=True)
            rec_f = out / f"record-{tag}-fortran-{rep}.json"
            cfg_json.write_text(json.dumps(dict(cfg, out=str(out / "unused.json"))))
            run_job([mpiexec, "-n", str(cfg["P"]), str(exe), str(out / f"config-{tag}.txt"),
                     str(rec_f), ":", "-n", str(cfg["Q"]), *worker, str(cfg_json)], env, out, 300)
            f = json.loads(rec_f.read_text())
            runs["fortran"].append(f["eophis_s"])
            runs["fortran_raw"].append(f["raw_s"])
            rec_p = out / f"record-{tag}-python-{rep}.json"
            cfg_json.write_text(json.dumps(dict(cfg, out=str(rec_p))))
            run_job([mpiexec, "-n", str(cfg["P"]), sys.executable, "-m",
                     "eophis_hpc.measure.roundtrip", "model", str(cfg_json), ":", "-n",
                     str(cfg["Q"]), *worker, str(cfg_json)], env, out, 300)
            p = json.loads(rec_p.read_text())["paths"]
            runs["python"].append(p["eophis"]["median"])
            runs["python_raw"].append(p["raw"]["median"])
        med = {k: statistics.median(v) for k, v in runs.items()}
        rows.append({"config": tag, "runs": runs, "median_s": med})
        print(f"    fortran {med['fortran'] * 1e3:.3f} ms (raw {med['fortran_raw'] * 1e3:.3f}), "
              f"python {med['python'] * 1e3:.3f} ms (raw {med['python_raw'] * 1e3:.3f})", flush=True)
    lines = ["| config | Fortran client ms | raw (Fortran) ms | ratio | Python client ms | "
             "raw (mpi4py) ms | ratio | Python / Fortran |", "|---" * 8 + "|"]
    for r in rows:
        m = r["median_s"]
        lines.append(f"| {r['config']} | {m['fortran'] * 1e3:.3f} | {m['fortran_raw'] * 1e3:.3f} | "
                     f"{m['fortran'] / m['fortran_raw']:.2f} | {m['python'] * 1e3:.3f} | "
                     f"{m['python_raw'] * 1e3:.3f} | {m['python'] / m['python_raw']:.2f} | "
                     f"{m['python'] / m['fortran']:.2f} |")
    table = "\n".join(lines)
    (out / "fortran-roundtrip.md").write_text(
        f"Round trip, model side in Fortran vs Python (medians of {args.repeat} jobs; "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores)\n\n{table}\n")
    (out / "fortran-roundtrip.json").write_text(json.dumps(rows, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
