"""``eophis-hpc gpu-check``: the first thing to run on a GPU node. In a few minutes it reports
the environment (driver, CUDA, frameworks, the MPI and whether it claims CUDA support, JAX's
memory setting, the GPU this rank takes) and checks, byte for byte where bytes are compared:

- ``kernels``: the device unpack/pack kernels against the NumPy reference (torch, CuPy, Numba
  arrays; contiguous and strided views);
- ``feed``: a staged round trip per framework with chunks=4 (identity, a cropped
  non-contiguous output, batches allocated after the pool was filled with NaN);
- ``race``: outputs of one framework handed back by another while still being computed;
- ``bandwidth``: the staging copies against a plain pinned copy (target >= 0.8) and the copy
  time hidden behind a GZ21 CNN with chunks (target >= 0.8);
- ``coupled``: two model ranks and two workers on one GPU, torch and JAX;
- ``direct``: a device buffer through MPI in a separate process (the test behind
  ``EOPHIS_HPC_CUDA_AWARE_MPI=1``).

It writes ``gpu-check.md`` and ``gpu-check.json`` and exits 1 when a check failed. Without a GPU
it says so, skips every section with the reason and exits 0.
"""
from __future__ import annotations

import sys

from .report import Report

SECTIONS = ("kernels", "feed", "race", "bandwidth", "coupled", "direct")


def section_functions() -> dict:
    from . import coupled, device_cases, figures
    return {"kernels": device_cases.kernels, "feed": device_cases.feed_round_trips,
            "race": device_cases.cross_framework, "bandwidth": figures.figures,
            "coupled": coupled.coupled, "direct": coupled.direct}


def run(quick: bool = False, log=print) -> Report:
    """Collect the environment and run every section (skipped, with why, without a GPU)."""
    from .environment import collect
    report = Report(environment=collect())
    found = report.environment["gpu_frameworks"]
    log(f"[gpu-check] GPU frameworks: {', '.join(found) or 'none'}")
    if not found:
        log("[gpu-check] no GPU here: " + "; ".join(report.environment["frameworks"].values()))
        why = "no GPU here: none of torch, cupy, numba, jax sees one (see Environment)"
        for name in SECTIONS:
            report.skip_section(name, why)
            log(f"[{name}] skipped: {why}")
        return report
    for name, fn in section_functions().items():
        log(f"[{name}] ...")
        try:
            results = fn(found, quick)
        except Exception as exc:  # a section that breaks is a failure, the others still run
            from .report import Result
            results = [Result(name, name, "fail", f"{type(exc).__name__}: {exc}")]
        for r in results:
            report.add(r)
            log(f"[{name}] {r.name}: {r.status.upper()} {r.detail[:200]}")
    return report


def main(args) -> int:
    """The CLI: run, write the report into ``args.out``, exit 1 on any failure."""
    report = run(quick=args.quick)
    try:
        md, js = report.write(args.out)
    except OSError as exc:
        print(f"eophis-hpc gpu-check: cannot write the report into {args.out!r}: {exc}",
              file=sys.stderr)
        return 2
    c = report.counts()
    print(f"gpu-check: {c['pass']} passed, {c['fail']} failed, {c['skip']} skipped; "
          f"report: {md} and {js}")
    return 1 if report.failed else 0
