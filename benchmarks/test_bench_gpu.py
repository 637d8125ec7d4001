"""GPU staging: bandwidth of the tunnel's host-to-device and device-to-host path, and how much of
the copy time hides behind a GZ21-sized CNN when the batch is cut into chunks. Skips without a
GPU (the reason is printed with ``-rs``).

Setup: eORCA025 (1440x1206) cut into 36 tiles (201x240 own points), halo 10 (GZ21's receptive
field), one worker holding 8 tiles; inputs u and v, float32 (the cast is done on the host by
the unpack kernels, so only float32 crosses PCIe), 1 or 36 levels. The staging path is the
tunnel's own (``staging.Feed``, pinned host buffers, one copy per chunk on the tunnel's
streams), timed by CUDA events in the tunnel's timings.

- Bandwidth: the staging path's ``h2d``/``d2h`` (an identity model) against a plain
  ``tensor.copy_(pinned, non_blocking=True)`` of the same bytes on one stream, timed by CUDA
  events in the same run. Target: at least 0.8 of it.
- Overlap efficiency: the fraction of the copy time hidden behind the model,
  ``(h2d + model + d2h - wall) / (h2d + d2h)`` with ``chunks=8`` (one tile per chunk: the
  first chunk's copy in and the last one's copy out cannot hide, so 7/8 at most), where h2d, model and d2h are
  GPU times of each phase and wall the time of the whole staged call. Target: at least 0.8.

Run: ``python -m pytest benchmarks/test_bench_gpu.py -p no:cacheprovider -s``
(``EOPHIS_HPC_BENCH_FRAMEWORK=numba`` with ``NUMBA_ENABLE_CUDASIM=1`` runs the bandwidth code
path on a CPU, with meaningless figures).
"""
from __future__ import annotations

import os

import pytest

from eophis_hpc import device
from eophis_hpc.bench.staging import (MIN_BANDWIDTH_RATIO, MIN_OVERLAP, OVERLAP_CHUNKS, REPEATS,
                                      TILES_PER_WORKER, bandwidth, overlap)

FRAMEWORK = os.environ.get("EOPHIS_HPC_BENCH_FRAMEWORK", "torch")
CHUNKS = OVERLAP_CHUNKS  # at most one chunk per tile: hides at most 1 - 1/CHUNKS of the copies


def _gpu_or_skip() -> None:
    try:
        device.check_framework(FRAMEWORK)
    except ImportError as exc:
        pytest.skip(str(exc))
    ok, what = device.gpu_status(FRAMEWORK)
    if not ok:
        pytest.skip(f"no GPU for {FRAMEWORK} here ({what})")


def report(line: str) -> None:
    print("\n[gpu bench] " + line, flush=True)


@pytest.mark.parametrize("levels", [1, 36])
def test_staging_bandwidth_vs_plain_pinned_copy(levels):
    _gpu_or_skip()
    res = bandwidth(FRAMEWORK, levels)
    nbytes = res["bytes"]
    for name in ("h2d", "d2h"):
        ms, plain = res[name]["staging_s"] * 1e3, res[name]["plain_s"] * 1e3
        ratio = res[name]["ratio"]
        if ratio is None:  # the CUDA simulator times nothing
            report(f"{FRAMEWORK} levels={levels} {name}: no timing (simulator?)")
            continue
        verdict = "met" if ratio >= MIN_BANDWIDTH_RATIO else "MISSED"
        report(f"{FRAMEWORK} levels={levels} {name}: {nbytes / 1e6:.1f} MB staging "
               f"{nbytes / ms / 1e6:.2f} GB/s, plain pinned copy_ {nbytes / plain / 1e6:.2f} "
               f"GB/s, ratio {ratio:.2f} (target >= {MIN_BANDWIDTH_RATIO}: {verdict})")


@pytest.mark.parametrize("levels", [1, 36])
def test_overlap_efficiency_gz21(levels):
    _gpu_or_skip()
    if FRAMEWORK != "torch":
        pytest.skip("the GZ21 CNN is a torch model")
    figures = {}
    for chunks in (1, CHUNKS):
        r = overlap(FRAMEWORK, levels, chunks, max(3, REPEATS // 4))
        figures[chunks] = (r["h2d_s"], r["model_s"], r["d2h_s"], r["wall_s"], r["hidden"])
    for chunks, (h2d, mdl, d2h, wall, hidden) in figures.items():
        verdict = "" if chunks == 1 else (
            f" (target >= {MIN_OVERLAP}: {'met' if hidden >= MIN_OVERLAP else 'MISSED'})")
        report(f"GZ21 full, eORCA025 {TILES_PER_WORKER} tiles x {levels} levels, chunks={chunks}: h2d "
               f"{h2d * 1e3:.2f} ms, model {mdl * 1e3:.2f} ms, d2h {d2h * 1e3:.2f} ms, wall "
               f"{wall * 1e3:.2f} ms, copy time hidden {hidden:.2f}{verdict}")
