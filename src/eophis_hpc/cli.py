"""Command line: ``eophis-hpc demo | run | tune | bench | plan | info | fortran | gpu-check``."""
from __future__ import annotations

import argparse
import subprocess
import sys

from . import cli_args as ca
from .transport.mpi.strategies import DEFAULT as DEFAULT_STRATEGY
from .transport.mpi.strategies import names as strategy_names


def _parser() -> argparse.ArgumentParser:
    parser = ca.Parser(prog="eophis-hpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="coupled NumPy ocean + GZ21-shaped CNN workers, checked "
                                       "against a single-process run")
    demo.set_defaults(check=ca.check_demo)
    demo.add_argument("--model-ranks", type=ca.positive_int, default=2)
    demo.add_argument("--workers", type=ca.positive_int, default=1)
    demo.add_argument("--tiles", type=ca.positive_int, default=None,
                      help="tiles in all (default: one per worker)")
    demo.add_argument("--steps", type=ca.positive_int, default=300)
    demo.add_argument("--grid", type=ca.grid_name, default="ORCA2",
                      help="grid preset (ORCA2, ORCA1, eORCA05, DINO, ...)")
    demo.add_argument("--levels", type=ca.positive_int, default=4)
    demo.add_argument("--strategy", choices=strategy_names(), default=DEFAULT_STRATEGY)
    demo.add_argument("--backend", type=ca.kernel_backend, default=None,
                      help="kernel backend: cython, numba or numpy (default: the fastest here)")
    demo.add_argument("--cnn", choices=("light", "full"), default=None,
                      help="network without --weights: light (built-in, 16, 8, ... channels; "
                           "the default) or full (the published GZ21 FullyCNN, 128, 64, 32 "
                           "channels); with --weights, the file's network is used")
    demo.add_argument("--weights", type=ca.existing_file, default=None,
                      help="state-dict file for the CNN: the published GZ21 weights "
                           "(trained_model.pth) or one saved from the demo's networks")
    demo.add_argument("--lag", type=ca.non_negative_int, default=0,
                      help="lagged exchange: the model gets at step n the forcing of step "
                           "n - LAG, so it keeps stepping while the CNN infers (default 0)")
    demo.add_argument("--out", type=ca.output_dir, default="demo-output",
                      help="folder for results and the figure")

    run = sub.add_parser("run", help="launch a model and a closure as one MPMD job")
    run.add_argument("--model-ranks", "-n", type=ca.positive_int, required=True)
    run.add_argument("--workers", "-w", type=ca.positive_int, required=True)
    run.add_argument("--dry-run", action="store_true", help="print the command only")
    run.add_argument("model", type=ca.program,
                     help="model program (a .py runs with this Python)")
    run.add_argument("closure", type=ca.program, help="worker script (.py)")
    run.add_argument("--model-args", type=ca.shell_words, default=[],
                     help="arguments of the model, one string")
    run.add_argument("--closure-args", type=ca.shell_words, default=[],
                     help="arguments of the closure, one string")
    run.add_argument("--mpi", metavar="WRAPPER", type=ca.mpi_wrapper, default=None,
                     help="the Fortran model's MPI compiler wrapper (e.g. mpifort.mpich): launch "
                          "with its mpiexec and point the workers' mpi4py at its library")

    tune = sub.add_parser("tune", help="measure candidate settings for a grid and rank counts "
                                       "and write the fastest to eophis_hpc.toml")
    tune.add_argument("--grid", type=ca.grid_name, required=True,
                      help="grid preset (ORCA2, eORCA025, ...)")
    tune.add_argument("--levels", type=ca.positive_int, default=1)
    tune.add_argument("--model-ranks", type=ca.positive_int, required=True)
    tune.add_argument("--workers", type=ca.positive_int, required=True)
    tune.add_argument("--halo", type=ca.non_negative_int, default=0)
    tune.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    tune.add_argument("--device", default="cpu", help="cpu (GPU settings: see the staging policy)")
    tune.add_argument("--time-budget", type=ca.positive_float, default=120.0,
                      help="seconds for the whole search (default 120)")
    tune.add_argument("--out", type=ca.output_file, default="eophis_hpc.toml",
                      help="settings file to write")
    tune.add_argument("--dry-run", action="store_true", help="list the candidates only")

    from .bench.report import SECTIONS as BENCH_SECTIONS
    bench = sub.add_parser("bench", help="run the benchmark suite and write a report folder "
                                         "(summary.md, benchmarks.json, machine.json, plots)")
    bench.add_argument("--quick", action="store_true", help="a small matrix (under a minute)")
    bench.add_argument("--out", type=ca.output_dir, default="bench-report",
                       help="report folder (default bench-report)")
    bench.add_argument("--only", action="append", metavar="SECTION",
                       choices=BENCH_SECTIONS,
                       help="run only this section (repeatable): kernels, plan, mpi, roundtrip, "
                            "staging, oasis, overlap")
    bench.add_argument("--timeout", type=ca.positive_int, default=300,
                       help="seconds per MPI job before it is killed (default 300)")
    bench.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # the tests' run

    from .sizing.cli import add_parser as add_plan_parser
    add_plan_parser(sub)

    info = sub.add_parser("info", help="versions, MPI library, kernel backends, frameworks")
    info.add_argument("--probe", action="store_true",
                      help="also measure what the MPI library does with contiguous, subarray and "
                           "struct-of-subarray round trips between 2 ranks (about 10 s)")

    gpu = sub.add_parser("gpu-check", help="on a GPU node, first: environment, device kernels, "
                                           "staging, overlap, coupled runs (report + exit code)")
    gpu.add_argument("--quick", action="store_true", help="fewer cases and repeats")
    gpu.add_argument("--out", type=ca.output_dir, default="gpu-check",
                     help="report folder (default gpu-check)")

    fortran = sub.add_parser("fortran", help="where the Fortran/C client is, how to build it in, "
                                             "and the environment for the workers")
    fortran.add_argument("--source", action="store_true", help="print the module's path only")
    fortran.add_argument("--include", action="store_true",
                         help="print the folder of the header (and module, when built) only")
    fortran.add_argument("--env", metavar="WRAPPER", type=ca.mpi_wrapper, default=None,
                         help="print shell exports that make the Python workers load the MPI "
                              "library of this compiler wrapper (e.g. mpifort.mpich)")
    return parser


def main(argv=None) -> int:
    args, extra = _parser().parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the message names the subcommand
        ca.fail(args, f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "check", None) is not None:
        args.check(args)
    if args.command == "demo":
        from .demo.run import main as demo_main
        return demo_main(args)
    if args.command == "run":
        return _run(args)
    if args.command == "tune":
        from .tune import main as tune_main
        return tune_main(args)
    if args.command == "bench":
        from .bench.report import main as bench_main
        return bench_main(args)
    if args.command == "plan":
        from .sizing.cli import main as plan_main
        return plan_main(args)
    if args.command == "info":
        from .info import report
        print(report())
        return _probe() if args.probe else 0
    if args.command == "fortran":
        return _fortran(args)
    if args.command == "gpu-check":
        from .gpucheck import main as gpu_check_main
        return gpu_check_main(args)
    return 2


def _probe() -> int:
    """``info --probe``: the MPI library's round trips (an MPI job of 2 ranks)."""
    import tempfile
    from pathlib import Path

    from .bench import mpiprobe, runner
    with tempfile.TemporaryDirectory(prefix="eophis-probe-") as tmp:
        record, err = runner.run_probe({}, Path(tmp), 120)
    if record is None:
        print(f"eophis-hpc info: the MPI probe failed: {err.splitlines()[0] if err else ''}",
              file=sys.stderr)
        return 1
    print("  MPI probe " + "\n  ".join(mpiprobe.summary(record)))
    return 0


def _run(args) -> int:
    import os
    import shlex

    from .launch import command_for, mpmd_command
    env, mpiexec = None, None
    try:
        if args.mpi:
            from . import fortran
            mpiexec = str(fortran.mpiexec_of(args.mpi))
            env = dict(os.environ, **fortran.worker_env(fortran.libmpi_of(args.mpi)))
        cmd = mpmd_command(args.model_ranks, command_for(args.model, args.model_args),
                           args.workers, command_for(args.closure, args.closure_args),
                           mpiexec=mpiexec)
    except (OSError, RuntimeError) as exc:
        ca.fail(args, str(exc))
    print(" ".join(shlex.quote(c) for c in cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(cmd, env=env).returncode


def _fortran(args) -> int:
    import shlex

    from . import fortran
    if args.source:
        print(fortran.source())
        return 0
    if args.include:
        print(fortran.header().parent)
        return 0
    if args.env:
        try:
            env = fortran.worker_env(fortran.libmpi_of(args.env))
            mpiexec = fortran.mpiexec_of(args.env)
        except (OSError, RuntimeError) as exc:
            print(f"eophis-hpc fortran --env: {exc}", file=sys.stderr)
            return 2
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
        print(f"# launch with: {mpiexec} -n P ./model : -n Q {sys.executable} closure.py")
        return 0
    print(f"Fortran module: {fortran.source()}\nC header:       {fortran.header()}\n")
    print("Build it into a model (the model's own MPI wrapper):")
    print("  " + fortran.recipe().replace("\n", "\n  "))
    print("\nRun the Python workers on the same MPI library: eophis-hpc fortran --env mpifort")
    print("Guide: docs/fortran.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
