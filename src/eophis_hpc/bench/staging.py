"""GPU staging measurements for ``eophis-hpc bench`` and ``benchmarks/test_bench_gpu.py``: the
tunnel's host/device copies against a plain pinned copy of the same bytes, and the overlap with a
GZ21-sized CNN. The measurements live with ``eophis-hpc gpu-check``
(:mod:`eophis_hpc.gpucheck.figures`), which runs them too; this module names them for the
benchmark suite."""
from __future__ import annotations

from ..gpucheck.figures import (FRAMEWORKS, HALO, MIN_BANDWIDTH_RATIO, MIN_OVERLAP,
                                OVERLAP_CHUNKS, REPEATS, TILES_PER_WORKER, bandwidth,
                                gpu_framework, make_feed, overlap, plain_copy_ms)

__all__ = ["FRAMEWORKS", "HALO", "MIN_BANDWIDTH_RATIO", "MIN_OVERLAP", "OVERLAP_CHUNKS",
           "REPEATS", "TILES_PER_WORKER", "bandwidth", "gpu_framework", "make_feed", "overlap",
           "plain_copy_ms"]
