"""``eophis-hpc tune``: measure the candidate settings on this machine, for the user's grid and
rank counts, and write the winner to ``eophis_hpc.toml``.

Two stages within a time budget: (1) the kernels, in process, on the plan's busiest model box
and tile, which prunes backends far from the best; (2) full coupled round trips (an MPI job per
candidate, with the raw-MPI baseline of the same bytes measured in the same job), best first by
the stage-1 estimate, until the budget runs out.
"""
from __future__ import annotations

import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import config, kernels
from .decomposition import Decomposition
from .grid import Grid
from .measure import copyjobs
from .plan import Plan
from .transport.mpi.strategies import STRATEGIES
from .transport.mpi.strategies import names as strategy_names

KEEP_WITHIN = 1.25  # stage 1 keeps backends within this factor of the fastest


# Chunk sizes tried for strategies that split messages (bytes): the cost of a message against
# the overlap of packing and moving the next one.
CHUNKS = (256 << 10, 1 << 20, 4 << 20)
# The order candidates are measured in when the stage-1 estimates tie (best expected first):
# one copy through shared memory, MPI datatypes, chunks, then the packing baseline.
TRY_FIRST = ("shm", "datatype", "pipelined", "packed")


@dataclass(frozen=True)
class Candidate:
    strategy: str
    backend: str
    tiles_per_worker: int
    chunk: int | None = None

    def settings(self) -> dict:
        out = {"strategy": self.strategy, "backend": self.backend,
               "tiles_per_worker": self.tiles_per_worker}
        if self.chunk is not None:
            out["pipeline_chunk"] = self.chunk
        return out

    def __str__(self) -> str:
        chunk = f" {self.chunk >> 10} KiB chunks" if self.chunk else ""
        return (f"{self.strategy:<9} {self.backend:<6} {self.tiles_per_worker} "
                f"tile(s)/worker{chunk}")


@dataclass
class Problem:
    """What is tuned: grid, levels, dtype, halo, ranks on each side."""

    grid: Grid
    levels: int
    dtype: str
    halo: int
    model_ranks: int
    workers: int

    def check(self) -> None:
        g = self.grid
        g.check_halo(self.halo, "--halo")
        if self.workers > g.nx * g.ny:
            raise ValueError(f"--workers {self.workers}: more workers than grid points")
        Decomposition.auto(g, self.model_ranks)  # raises when the grid cannot be split so
        try:
            Decomposition.auto(g, self.workers)
        except ValueError:
            raise ValueError(f"--workers {self.workers}: more workers than tiles the "
                             f"{g.nx}x{g.ny} grid can be split into") from None

    def tile_counts(self) -> list[int]:
        """Tiles per worker worth trying: 1, 2, 4 while the grid can be split that way."""
        out = []
        for per in (1, 2, 4):
            try:
                Decomposition.auto(self.grid, per * self.workers)
            except ValueError:
                break
            out.append(per)
        return out


def candidates(problem: Problem, backends=None) -> list[Candidate]:
    backends = backends or [b for b, state in kernels.available().items() if state == "ok"]
    out = []
    for s, b, t in itertools.product(strategy_names(), backends, problem.tile_counts()):
        chunks = CHUNKS if s == "pipelined" else (None,)
        out += [Candidate(s, b, t, c) for c in chunks]
    return out


def kernel_stage(problem: Problem, backends, progress=None) -> dict:
    """Median pack + unpack seconds per backend on the busiest model box and tile of the plan,
    with ``numpy.copyto`` of the same bytes as the baseline."""
    g = problem.grid
    plan = Plan(g, Decomposition.auto(g, problem.model_ranks),
                Decomposition.auto(g, problem.workers), halo=problem.halo)
    jobs = [copyjobs.make_pack_job(plan, problem.levels, problem.dtype),
            copyjobs.make_unpack_job(plan, problem.levels, problem.dtype)]
    out = {"copyto": sum(copyjobs.median_time(j.call("copyto"), max_time=0.2) for j in jobs)}
    for b in backends:
        out[b] = sum(copyjobs.median_time(j.call(b), max_time=0.2) for j in jobs)
        if progress:
            progress(b)
    return out


def prune(cands: list[Candidate], kernel_times: dict) -> list[Candidate]:
    """Copying candidates whose backend is within KEEP_WITHIN of the fastest, and in-place ones
    (datatypes, shared memory) with the fastest backend only (they barely use the kernels);
    fewest tiles first, then the strategies in TRY_FIRST order, then the kernel estimate."""
    fastest = min((b for b in kernel_times if b != "copyto"), key=kernel_times.get)
    limit = KEEP_WITHIN * kernel_times[fastest]

    def keep(c: Candidate) -> bool:
        if STRATEGIES[c.strategy].in_place:
            return c.backend == fastest
        return kernel_times[c.backend] <= limit

    def order(c: Candidate):
        first = TRY_FIRST.index(c.strategy) if c.strategy in TRY_FIRST else len(TRY_FIRST)
        return (c.tiles_per_worker, first, kernel_times[c.backend], c.chunk or 0)

    return sorted(filter(keep, cands), key=order)


def refine(results: list, run_job, problem: Problem, time_left: float, bar, t_start: float,
           budget: float, top: int = 3, rounds: int = 2) -> None:
    """Spend what is left of the budget measuring the best few again (the machine is noisy):
    each keeps the median of its measurements."""
    samples = {id(r): [r] for r in results if r[1] is not None}
    for _ in range(rounds):
        best = sorted((r for r in results if r[1] is not None), key=lambda r: r[1])[:top]
        if len(best) < 2:
            return
        for r in best:
            left = budget - (time.perf_counter() - t_start)
            if left <= 0:
                return
            bar.show(time.perf_counter() - t_start, f"again: {r[0]}")
            try:
                secs, raw = run_job(r[0], problem, left)
            except (TimeoutError, RuntimeError):
                return
            runs = samples[id(r)]
            runs.append((r[0], secs, raw, ""))
            k = results.index(r)
            results[k] = (r[0], statistics.median(x[1] for x in runs),
                          statistics.median(x[2] for x in runs), "")
            samples[id(results[k])] = runs


class ProgressBar:
    """A one-line progress bar with the best result so far (plain lines when not a terminal)."""

    def __init__(self, total: float, stream=sys.stderr, width: int = 30):
        self.total, self.stream, self.width = total, stream, width
        self.tty = stream.isatty()

    def show(self, done: float, text: str) -> None:
        frac = min(1.0, done / self.total) if self.total else 1.0
        bar = "#" * int(frac * self.width)
        line = f"[{bar:<{self.width}}] {100 * frac:3.0f}%  {text}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
            self.stream.flush()
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def tune(problem: Problem, budget: float, out: Path, run_job, dry_run: bool = False,
         stream=sys.stdout) -> int:
    """The whole tuner; ``run_job(candidate, problem, time_left) -> (seconds, raw_seconds)`` or
    raises. Returns the exit status."""
    problem.check()
    cands = candidates(problem)
    if dry_run:
        print(f"{len(cands)} candidates for {problem.grid.describe()}, {problem.levels} level(s) "
              f"{problem.dtype}, halo {problem.halo}, {problem.model_ranks}:{problem.workers}:",
              file=stream)
        for c in cands:
            print(f"  {c}", file=stream)
        return 0
    t_start = time.perf_counter()
    bar = ProgressBar(budget)
    backends = sorted({c.backend for c in cands})
    ktimes = kernel_stage(problem, backends,
                          lambda b: bar.show(time.perf_counter() - t_start, f"kernels: {b}"))
    ranked = prune(cands, ktimes)
    results, best = [], None
    for c in ranked:
        left = budget - (time.perf_counter() - t_start)
        if left <= 0:
            break
        bar.show(time.perf_counter() - t_start,
                 f"{c}  (best so far: {best[1] * 1e3:.2f} ms)" if best else str(c))
        try:
            secs, raw = run_job(c, problem, left)
        except TimeoutError:
            break
        except RuntimeError as exc:
            results.append((c, None, None, str(exc).splitlines()[0]))
            continue
        results.append((c, secs, raw, ""))
        if best is None or secs < best[1]:
            best = (c, secs, raw)
    refine(results, run_job, problem, budget - (time.perf_counter() - t_start), bar, t_start,
           budget)
    bar.close()
    measured = [r for r in results if r[1] is not None]
    if not measured:
        raise RuntimeError(f"no candidate could be measured within the {budget:g} s budget "
                           "(give --time-budget more, or see the errors above)")
    measured.sort(key=lambda r: r[1])
    print(f"\nkernel stage (pack + unpack of the busiest rank, same bytes): copyto "
          f"{ktimes['copyto'] * 1e3:.3f} ms; " + ", ".join(
              f"{b} {ktimes[b] * 1e3:.3f} ms" for b in backends), file=stream)
    print(f"\n{'rank':>4}  {'candidate':<34} {'round trip':>11} {'raw MPI':>9} {'ratio':>6}",
          file=stream)
    for n, (c, secs, raw, _) in enumerate(measured, 1):
        print(f"{n:>4}  {str(c):<34} {secs * 1e3:>8.2f} ms {raw * 1e3:>6.2f} ms "
              f"{secs / raw:>6.2f}", file=stream)
    for c, _, _, err in results:
        if err:
            print(f"   -  {str(c):<34} failed: {err}", file=stream)
    skipped = len(ranked) - len(results)
    if skipped:
        print(f"({skipped} candidate(s) not measured: the budget ran out)", file=stream)
    winner, secs, raw, _ = measured[0]
    text = config.dumps(winner.settings(), measured={
        "grid": problem.grid.name or f"{problem.grid.nx}x{problem.grid.ny}",
        "levels": problem.levels, "dtype": problem.dtype, "halo": problem.halo,
        "model_ranks": problem.model_ranks, "workers": problem.workers,
        "round_trip_ms": round(secs * 1e3, 4), "raw_mpi_ms": round(raw * 1e3, 4)},
        comment="written by eophis-hpc tune; Tunnel and connect read [tunnel] for the options "
                "their caller leaves unset")
    out.write_text(text)
    print(f"\nwinner: {winner} -> {out}", file=stream)
    return 0


def probe_job(workdir: Path, steps: int = 12, warmup: int = 3):
    """A ``run_job`` for :func:`tune` that measures one candidate with the round-trip probe
    (``eophis_hpc.measure.roundtrip``, naive path off): median round trip and raw-MPI baseline."""
    from .measure import jobs

    counter = itertools.count()

    def run(c: Candidate, problem: Problem, time_left: float) -> tuple[float, float]:
        if time_left < 3.0:
            raise TimeoutError
        g = problem.grid
        cfg = {"grid": g.name, "levels": problem.levels, "dtype": problem.dtype,
               "halo": problem.halo, "P": problem.model_ranks, "Q": problem.workers,
               "strategy": c.strategy, "backend": c.backend,
               "tiles": c.tiles_per_worker * problem.workers, "warmup": warmup, "steps": steps,
               "naive": False, "chunk": c.chunk}
        record, err = jobs.run_roundtrip(cfg, workdir, time_left, f"tune-{next(counter)}")
        if record is None:
            if err.startswith("timed out"):
                raise TimeoutError
            raise RuntimeError(err)
        return record["paths"]["eophis"]["median"], record["paths"]["raw"]["median"]

    return run


def main(args) -> int:
    """``eophis-hpc tune``: parse, check, run; errors are one clear line and exit status 2."""
    import tempfile

    try:
        grid = Grid.preset(args.grid)
        problem = Problem(grid, args.levels, args.dtype, args.halo, args.model_ranks, args.workers)
        problem.check()
        if not args.dry_run and args.time_budget < MIN_BUDGET:
            raise ValueError(f"--time-budget {args.time_budget:g} s is too small: one measured "
                             f"candidate takes about {MIN_BUDGET:g} s here (MPI start-up, "
                             "warm-up, timed steps); give at least that")
        if args.device not in ("cpu", None):
            raise ValueError(f"--device {args.device}: the tuner measures CPU settings only on "
                             "this version (GPU staging is chosen by the staging policy)")
    except ValueError as exc:
        print(f"eophis-hpc tune: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="eophis-tune-") as tmp:
        try:
            return tune(problem, args.time_budget, Path(args.out), probe_job(Path(tmp)),
                        dry_run=args.dry_run)
        except RuntimeError as exc:
            print(f"eophis-hpc tune: {exc}", file=sys.stderr)
            return 1


MIN_BUDGET = 10.0
