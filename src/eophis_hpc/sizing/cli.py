"""``eophis-hpc plan``: size a coupled job before it runs (arguments, checks, output files).

Errors in the arguments are one line on stderr and exit status 2 (``cli_args.fail``)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STRATEGY_CHOICES = ("shm", "packed", "datatype", "pipelined", "all", "both")
BOUNDARIES = {"east_west": ("closed", "cyclic"), "south": ("closed", "cyclic"),
              "north": ("closed", "cyclic", "fold")}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("plan", help="size a coupled job before it runs: traffic, memory, "
                                    "predicted exchange time, the worker count that stops paying, "
                                    "node-aware tile placement")
    g = p.add_argument_group("grid and fields")
    g.add_argument("--grid", help="a preset (eORCA025, eORCA12, ...) or NXxNY, e.g. 720x603")
    g.add_argument("--east-west", choices=BOUNDARIES["east_west"], default=None,
                   help="with --grid NXxNY (default closed)")
    g.add_argument("--south", choices=BOUNDARIES["south"], default=None)
    g.add_argument("--north", choices=BOUNDARIES["north"], default=None)
    g.add_argument("--pivot", choices=("T", "F"), default=None, help="north fold pivot")
    g.add_argument("--levels", type=int, default=1)
    g.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    g.add_argument("--halo", type=int, default=0, help="halo of the workers' tiles")
    g.add_argument("--fields-in", type=int, default=1, help="fields sent to the workers per "
                                                            "exchange")
    g.add_argument("--fields-out", type=int, default=1, help="fields sent back per exchange")
    r = p.add_argument_group("ranks and nodes")
    r.add_argument("--model-ranks", type=int, default=None, help="the model's ranks (blocks "
                                                                 "as Decomposition.auto)")
    r.add_argument("--jpni", type=int, default=None, help="NEMO's blocks in i (with --jpnj)")
    r.add_argument("--jpnj", type=int, default=None)
    r.add_argument("--mask", default=None, help="land mask (.npy, ny x nx, nonzero = ocean): "
                                               "NEMO's land-only blocks are removed")
    r.add_argument("--model-halo", type=int, default=0,
                   help="halo of the model's own arrays (NEMO nn_hls), for contiguity")
    r.add_argument("--workers", type=int, required=False, help="Python ranks (inference workers)")
    r.add_argument("--tiles-per-worker", type=int, default=1)
    r.add_argument("--model-per-node", type=int, default=None,
                   help="model ranks per node (default: the machine's cores per node)")
    r.add_argument("--workers-per-node", type=int, default=None,
                   help="workers per node (default: the machine's cores per node)")
    r.add_argument("--placement", choices=("separate", "shared"), default="separate",
                   help="workers on nodes of their own (separate) or sharing the model's nodes")
    r.add_argument("--nodes", default=None, help="JSON file {\"model\": [node name per model "
                                                 "rank], \"workers\": [... per worker]}")
    c = p.add_argument_group("cost model")
    c.add_argument("--machine", default=None,
                   help="machine file (.json/.toml) or a built-in name; default: a calibration "
                        "of this machine (--calibrate)")
    c.add_argument("--calibrate", metavar="FILE", default=None,
                   help="measure this machine first (MPI ping-pongs, copies, a tiny round trip; "
                        "about a minute) and write its figures to FILE")
    c.add_argument("--validate", action="store_true",
                   help="measure round trips here (1:1, 2:1, 1:2, 2:2; 1 and 75 levels; halo 0 "
                        "and 10; packed and datatype, shm and pipelined at 1:1) and print "
                        "them next to the predictions")
    c.add_argument("--strategy", choices=STRATEGY_CHOICES, default="all",
                   help="the transport strategies to predict: one of them, all (default), or "
                        "both (packed and datatype)")
    c.add_argument("--chunk", type=int, default=None, metavar="BYTES",
                   help="bytes per message of the pipelined strategy (default: its own, "
                        "1 MiB)")
    c.add_argument("--shm-buffers", action="store_true",
                   help="the model puts from and gets into Coupler.buffer arrays (shm: the "
                        "workers make the copies on a node)")
    c.add_argument("--inference-ms", type=float, default=None,
                   help="measured model call per tile, for the tiles of --workers")
    c.add_argument("--model-step-ms", type=float, default=None,
                   help="the model's step without coupling (for step times and lag 1)")
    c.add_argument("--sweep", default=None,
                   help="worker counts to sweep: 1,2,4,... or A:B (powers of two in [A, B]); "
                        "default powers of two up to twice --workers")
    c.add_argument("--tolerance", type=float, default=0.05,
                   help="plateau: fewest workers within this fraction of the best (0.05)")
    o = p.add_argument_group("output")
    o.add_argument("--json", default=None, help="write the whole answer as JSON here")
    o.add_argument("--png", default=None, help="write predicted step time vs workers here "
                                               "(needs matplotlib)")
    o.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


class ArgError(ValueError):
    """A bad argument: one line, exit status 2."""


def _positive(args, name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise ArgError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def _grid(args):
    from ..grid import Grid
    if args.grid is None:
        raise ArgError("--grid is required (a preset such as eORCA025, or NXxNY)")
    text = args.grid.lower()
    if "x" in text and text.replace("x", "", 1).isdigit():
        nx, ny = (int(v) for v in text.split("x"))
        try:
            return Grid(nx, ny, args.east_west or "closed", args.south or "closed",
                        args.north or "closed", args.pivot or "T")
        except ValueError as exc:
            raise ArgError(f"--grid {args.grid}: {exc}") from None
    if any(v is not None for v in (args.east_west, args.south, args.north, args.pivot)):
        raise ArgError(f"--east-west/--south/--north/--pivot go with --grid NXxNY; the preset "
                       f"{args.grid} has its own")
    try:
        return Grid.preset(args.grid)
    except ValueError as exc:
        raise ArgError(str(exc)) from None


def _model(args, grid):
    from ..decomposition import Decomposition
    import numpy as np
    if args.jpni is not None or args.jpnj is not None:
        if args.jpni is None or args.jpnj is None or args.model_ranks is not None:
            raise ArgError("give --jpni and --jpnj together, or --model-ranks (not both)")
        _positive(args, "jpni", args.jpni)
        _positive(args, "jpnj", args.jpnj)
        mask = None
        if args.mask:
            try:
                mask = np.load(args.mask)
            except (OSError, ValueError) as exc:
                raise ArgError(f"--mask {args.mask}: cannot read it as .npy ({exc})") from None
        try:
            return Decomposition.nemo(grid, args.jpni, args.jpnj, mask=mask)
        except ValueError as exc:
            raise ArgError(f"--jpni/--jpnj: {exc}") from None
    if args.mask:
        raise ArgError("--mask goes with --jpni and --jpnj")
    if args.model_ranks is None:
        raise ArgError("give --model-ranks, or --jpni and --jpnj")
    _positive(args, "model_ranks", args.model_ranks)
    try:
        return Decomposition.auto(grid, args.model_ranks)
    except ValueError as exc:
        raise ArgError(f"--model-ranks {args.model_ranks}: {exc}") from None


def _sweep(text: str | None, workers: int) -> list[int] | None:
    if text is None:
        return None
    try:
        if ":" in text:
            a, b = (int(v) for v in text.split(":"))
            if a < 1 or b < a:
                raise ValueError
            out, q = [], 1
            while q <= b:
                if q >= a:
                    out.append(q)
                q *= 2
            counts = sorted(set(out) | {workers})
        else:
            counts = sorted({int(v) for v in text.split(",")} | {workers})
    except ValueError:
        raise ArgError(f"--sweep {text}: expected worker counts 1,2,4 or a range A:B") from None
    if counts[0] < 1:
        raise ArgError(f"--sweep {text}: worker counts must be positive")
    return counts


def _nodes(path):
    try:
        data = json.loads(Path(path).read_text())
        return list(data["model"]), list(data["workers"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArgError(f"--nodes {path}: expected JSON {{\"model\": [...], \"workers\": [...]}} "
                       f"({type(exc).__name__}: {exc})") from None


def _machine(args):
    from .machine import Machine
    if args.machine and args.calibrate:
        raise ArgError("give --machine or --calibrate, not both")
    if args.machine:
        try:
            return Machine.load(args.machine)
        except ValueError as exc:
            raise ArgError(str(exc)) from None
    if not args.calibrate:
        raise ArgError("give --machine FILE (or a built-in name) or --calibrate FILE to measure "
                       "this machine")
    return None


def build_job(args, cores_per_node: int):
    """The :class:`~.job.Job` and worker count the arguments describe (raises ArgError)."""
    from .job import Job
    grid = _grid(args)
    for name in ("levels", "fields_in", "workers", "tiles_per_worker"):
        _positive(args, name, getattr(args, name), allow_none=(name == "workers"))
    if args.workers is None:
        raise ArgError("--workers is required")
    if args.fields_out < 0:
        raise ArgError(f"--fields-out must be 0 or more, got {args.fields_out}")
    try:
        grid.check_halo(args.halo, "--halo")
    except ValueError as exc:
        raise ArgError(str(exc)) from None
    if args.model_halo < 0:
        raise ArgError(f"--model-halo must be 0 or more, got {args.model_halo}")
    model = _model(args, grid)
    per_node = {}
    for name in ("model_per_node", "workers_per_node"):
        v = getattr(args, name)
        _positive(args, name, v)
        per_node[name] = v or cores_per_node
    from ..decomposition import best_factors
    try:
        best_factors(args.workers * args.tiles_per_worker, grid.nx, grid.ny)
    except ValueError:
        raise ArgError(f"--workers {args.workers} x --tiles-per-worker {args.tiles_per_worker}: "
                       f"the {grid.nx}x{grid.ny} grid cannot be split into that many tiles") \
            from None
    for name in ("inference_ms", "model_step_ms"):
        v = getattr(args, name)
        if v is not None and not v >= 0:
            raise ArgError(f"--{name.replace('_', '-')} must be 0 or more, got {v}")
    if not 0 <= args.tolerance < 1:
        raise ArgError(f"--tolerance must be in [0, 1), got {args.tolerance}")
    model_nodes = worker_nodes = None
    if args.nodes:
        model_nodes, worker_nodes = _nodes(args.nodes)
        if len(model_nodes) != len(model.boxes) or len(worker_nodes) != args.workers:
            raise ArgError(f"--nodes {args.nodes}: {len(model_nodes)} model and "
                           f"{len(worker_nodes)} worker node names for {len(model.boxes)} model "
                           f"ranks and {args.workers} workers")
    from .cost import STRATEGIES
    strategies = {"all": STRATEGIES, "both": ("packed", "datatype")}.get(args.strategy,
                                                                          (args.strategy,))
    if args.chunk is not None and args.chunk < 1:
        raise ArgError(f"--chunk must be a positive number of bytes, got {args.chunk}")
    job = Job(grid, model, levels=args.levels, itemsize=4 if args.dtype == "float32" else 8,
              halo=args.halo, fields_in=args.fields_in, fields_out=args.fields_out,
              tiles_per_worker=args.tiles_per_worker, placement=args.placement,
              model_halo=args.model_halo, model_nodes=model_nodes, worker_nodes=worker_nodes,
              inference_s_per_tile=None if args.inference_ms is None else args.inference_ms / 1e3,
              reference_workers=args.workers,
              model_step_s=None if args.model_step_ms is None else args.model_step_ms / 1e3,
              strategies=strategies, chunk=args.chunk, shm_buffers=args.shm_buffers,
              **per_node)
    sweep = _sweep(args.sweep, args.workers)
    if args.nodes and sweep is not None and sweep != [args.workers]:
        raise ArgError("--nodes names the nodes of --workers workers only: leave out --sweep")
    if args.nodes:
        sweep = [args.workers]
    return job, sweep


def main(args) -> int:
    from . import report
    rows = None  # the strided ping-pong's rows: the validated tiles', or those of --grid
    try:
        machine = _machine(args)  # None: measured below (--calibrate)
        if args.grid is None and not (args.calibrate or args.validate):
            raise ArgError("--grid is required (a preset such as eORCA025, or NXxNY)")
        if args.grid is not None:  # every argument checked before anything is measured
            job, _ = build_job(args, machine.cores_per_node if machine else 1)
            if machine is None:
                from .calibrate import tile_rows
                rows = tile_rows(job.tiles_for(args.workers).max_shape()[1], job.halo,
                                 job.itemsize)
        for path in (args.json, args.png, args.calibrate):
            if path and not Path(path).resolve().parent.is_dir():
                raise ArgError(f"{path}: its folder does not exist")
    except ArgError as exc:
        from ..cli_args import fail
        fail(args, str(exc))  # one line, exit status 2
    if machine is None:
        from .calibrate import calibrate
        try:
            machine = calibrate(progress=not args.quiet, rows=rows)
        except RuntimeError as exc:
            print(f"eophis-hpc plan --calibrate: {exc}", file=sys.stderr)
            return 1
        machine.save(args.calibrate)
        print(f"calibrated: {machine.describe()}\n-> {args.calibrate}", flush=True)
    if args.validate:
        from .validate import table, validate
        try:
            rows = validate(machine, progress=not args.quiet)
        except RuntimeError as exc:
            print(f"eophis-hpc plan --validate: {exc}", file=sys.stderr)
            return 1
        print(table(rows), flush=True)
        if args.json and args.grid is None:
            Path(args.json).write_text(json.dumps({"machine": machine.to_dict(),
                                                   "validation": rows}, indent=1))
    if args.grid is None:
        return 0
    job, sweep = build_job(args, machine.cores_per_node)
    result = report.size(job, machine, args.workers, sweep=sweep, tolerance=args.tolerance,
                         progress=False if args.quiet else None)
    print(report.text(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"-> {args.json}")
    if args.png:
        made = report.figure(result, args.png)
        if made is None:
            print("eophis-hpc plan: matplotlib is not installed (pip install "
                  "'eophis_hpc[plot]'): no figure written", file=sys.stderr)
        else:
            print(f"-> {made}")
    return 0
