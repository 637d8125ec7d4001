"""Shared machinery of the benchmarks: a registry of what each benchmark measured, and the
end-of-run tables.

Speed is only ever quoted as a ratio between results of the same run (docs/contributing.md, "How we
measure"), so the ratios cannot be computed inside a test: the tests register their benchmark
here, the ratios are written into each benchmark's ``extra_info`` just before pytest-benchmark
saves its JSON, and the tables are printed in the terminal summary.

Run with ``python -m pytest benchmarks --benchmark-enable -p no:cacheprovider``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

# Targets of issue 2 for the compiled (Cython) pack/unpack path.
from eophis_hpc.bench.records import MIN_COPYTO_RATIO, MIN_FANCY_SPEEDUP


@dataclass
class CopyRecord:
    """One pack/unpack measurement: ``method`` is a kernel backend or a baseline."""

    direction: str  # "pack" or "unpack"
    case: str
    method: str
    nbytes: int
    benchmark: object


@dataclass
class PlanRecord:
    """One plan build measurement; ``target_s`` is the issue's limit (None: no target)."""

    case: str
    target_s: float | None
    benchmark: object


@dataclass
class Results:
    """What this run measured, in the order the tests ran."""

    copies: list[CopyRecord] = field(default_factory=list)
    plans: list[PlanRecord] = field(default_factory=list)

    def add_copy(self, direction: str, case: str, method: str, nbytes: int, benchmark) -> None:
        self.copies.append(CopyRecord(direction, case, method, nbytes, benchmark))

    def add_plan(self, case: str, target_s: float | None, benchmark) -> None:
        self.plans.append(PlanRecord(case, target_s, benchmark))


RESULTS_KEY = pytest.StashKey[Results]()


@pytest.fixture(scope="session")
def bench_results(request) -> Results:
    """The run's registry; every benchmark test appends its record to it."""
    return request.config.stash.setdefault(RESULTS_KEY, Results())


def median_s(benchmark) -> float | None:
    """Median seconds of a benchmark that ran (None with --benchmark-disable)."""
    if benchmark.disabled or benchmark.stats is None:
        return None
    return benchmark.stats.stats.median


def _copy_ratios(copies: list[CopyRecord]) -> None:
    """GB/s, ratio of bandwidth to numpy.copyto, speed-up over fancy indexing, into extra_info."""
    medians = {(r.direction, r.case, r.method): median_s(r.benchmark) for r in copies}
    for r in copies:
        med = medians[(r.direction, r.case, r.method)]
        if med is None:
            continue
        info = r.benchmark.extra_info
        info["GB/s"] = r.nbytes / med / 1e9
        copyto = medians.get((r.direction, r.case, "copyto"))
        fancy = medians.get((r.direction, r.case, "fancy"))
        if copyto:
            info["ratio_to_copyto"] = copyto / med
        if fancy:
            info["speedup_vs_fancy"] = fancy / med


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    """Fill the ratios before pytest-benchmark's own sessionfinish writes the JSON."""
    results = session.config.stash.get(RESULTS_KEY, None)
    if results is not None:
        _copy_ratios(results.copies)
    return (yield)


def _render(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """Columns as wide as their longest entry: the first ``text_columns`` left-aligned, the
    figures right-aligned."""
    widths = [max(len(row[c]) for row in [header] + rows) for c in range(len(header))]
    return ["  ".join(cell.ljust(w) if c < text_columns else cell.rjust(w)
                      for c, (cell, w) in enumerate(zip(row, widths))) for row in [header] + rows]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _copy_table(copies: list[CopyRecord]) -> list[str]:
    header = ["case", "method", "MB", "median", "GB/s", "/copyto", "x fancy", "cython targets"]
    rows = []
    for r in copies:
        med = median_s(r.benchmark)
        if med is None:
            continue
        info = r.benchmark.extra_info
        ratio, speedup = info.get("ratio_to_copyto"), info.get("speedup_vs_fancy")
        verdict = ""
        if r.method == "cython" and ratio is not None and speedup is not None:
            ok = ratio >= MIN_COPYTO_RATIO and speedup >= MIN_FANCY_SPEEDUP
            verdict = "met" if ok else "MISSED"
        rows.append([f"{r.direction} {r.case}", r.method, f"{r.nbytes / 1e6:.2f}",
                     f"{med * 1e3:.3f} ms", f"{info['GB/s']:.2f}", _fmt(ratio, ".2f"),
                     _fmt(speedup, ".2f"), verdict])
    return _render(header, rows, text_columns=2)


def _plan_table(plans: list[PlanRecord]) -> list[str]:
    header = ["case", "build", "target", "scatter msgs/src", "msgs/dst", "MB/src", "MB/dst",
              "gather msgs/dst", "msgs/src"]
    rows = [["", "median", "", "max/med", "max/med", "max", "max", "max/med", "max/med"]]
    for r in plans:
        med = median_s(r.benchmark)
        if med is None:
            continue
        i = r.benchmark.extra_info
        target = "" if r.target_s is None else (
            f"<{r.target_s:g} s " + ("met" if med < r.target_s else "MISSED"))
        rows.append([
            r.case, f"{med * 1e3:.1f} ms", target,
            f"{i['scatter_msgs_per_src_max']}/{i['scatter_msgs_per_src_median']:g}",
            f"{i['scatter_msgs_per_dst_max']}/{i['scatter_msgs_per_dst_median']:g}",
            f"{i['scatter_bytes_per_src_max'] / 1e6:.2f}",
            f"{i['scatter_bytes_per_dst_max'] / 1e6:.2f}",
            f"{i['gather_msgs_per_dst_max']}/{i['gather_msgs_per_dst_median']:g}",
            f"{i['gather_msgs_per_src_max']}/{i['gather_msgs_per_src_median']:g}"])
    return _render(header, rows)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    """Print the pack/unpack and plan tables of this run (nothing if benchmarks were disabled)."""
    results = terminalreporter.config.stash.get(RESULTS_KEY, None)
    if results is None:
        return
    if any(median_s(r.benchmark) is not None for r in results.copies):
        terminalreporter.write_sep("=", "pack/unpack bandwidth (medians, ratios within this run)")
        for line in _copy_table(results.copies):
            terminalreporter.write_line(line)
    if any(median_s(r.benchmark) is not None for r in results.plans):
        terminalreporter.write_sep("=", "plan build (median) and traffic per rank "
                                        "(nz=75, float32)")
        for line in _plan_table(results.plans):
            terminalreporter.write_line(line)
