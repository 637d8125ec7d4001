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
import statistics

import numpy as np
import pytest

import eophis_hpc as eh
from eophis_hpc import device
from eophis_hpc.runtime.schedule import Schedule
from eophis_hpc.runtime.timings import Timings
from eophis_hpc.staging import Feed

FRAMEWORK = os.environ.get("EOPHIS_HPC_BENCH_FRAMEWORK", "torch")
HALO = 10
TILES_PER_WORKER = 8
CHUNKS = 8  # at most one chunk per tile: hides at most 1 - 1/CHUNKS of the copies
REPEATS = 20
MIN_BANDWIDTH_RATIO = 0.8
MIN_OVERLAP = 0.8


def _gpu_or_skip() -> None:
    try:
        device.check_framework(FRAMEWORK)
    except ImportError as exc:
        pytest.skip(str(exc))
    ok, what = device.gpu_status(FRAMEWORK)
    if not ok:
        pytest.skip(f"no GPU for {FRAMEWORK} here ({what})")


def make_feed(levels: int, chunks: int, timings: Timings) -> tuple[Feed, Schedule]:
    """The tunnel's Feed for one worker of eORCA025 / 36 tiles, inputs u, v float32."""
    grid = eh.Grid.preset("eORCA025")
    dec = eh.Decomposition.auto(grid, 36)
    H, W = dec.max_shape()
    sched = Schedule([eh.Exchange(inputs=["u", "v"], outputs=["su", "sv"], levels=levels,
                                  dtype="float32")])
    boxes = dec.boxes[:TILES_PER_WORKER]
    policy = device.staging_policy(FRAMEWORK, "cuda", cuda_aware=False)
    feed = Feed(sched, range(TILES_PER_WORKER), boxes, (H + 2 * HALO, W + 2 * HALO), HALO, None,
                policy, chunks, False, None, 0.0, timings)
    rng = np.random.default_rng(0)
    for name in ("u", "v"):
        feed.recv_target(name)[...] = rng.standard_normal(feed.host[name].shape)
    return feed, sched


def report(line: str) -> None:
    print("\n[gpu bench] " + line, flush=True)


def _plain_copy_ms(feed: Feed, direction: str) -> float:
    """One copy of the same bytes (both fields) with the framework's own call, on one stream,
    timed by CUDA events (median of REPEATS)."""
    ad = feed.ad
    s = ad.stream()
    times = []
    for _ in range(REPEATS):
        a, b = ad.event(), ad.event()
        ad.record(a, s)
        for kw in ("u", "v"):
            if direction == "h2d":
                ad.h2d(feed.dev[kw], feed.host[kw], s)
            else:
                ad.d2h(feed.host[kw], feed.dev[kw], s)
        ad.record(b, s)
        ad.synchronize(s)
        times.append(ad.elapsed_ms(a, b))
    return statistics.median(times)


@pytest.mark.parametrize("levels", [1, 36])
def test_staging_bandwidth_vs_plain_pinned_copy(levels):
    _gpu_or_skip()
    timings = Timings()
    feed, sched = make_feed(levels, chunks=1, timings=timings)
    specs = sched.outputs_of(0)

    def identity(kwargs, r0, r1):
        return {"su": kwargs["u"], "sv": kwargs["v"]}

    for _ in range(3):  # warm-up: allocations, pinned output buffers
        feed.run(["u", "v"], identity, specs)
    timings = feed.timings = Timings()
    for _ in range(REPEATS):
        feed.run(["u", "v"], identity, specs)
    nbytes = sum(feed.host[kw].nbytes for kw in ("u", "v"))
    h2d, d2h = timings.median("h2d") * 1e3, timings.median("d2h") * 1e3
    plain_h2d, plain_d2h = _plain_copy_ms(feed, "h2d"), _plain_copy_ms(feed, "d2h")
    for name, ms, plain in (("h2d", h2d, plain_h2d), ("d2h", d2h, plain_d2h)):
        if not ms or not plain:  # the CUDA simulator times nothing
            report(f"{FRAMEWORK} levels={levels} {name}: no timing (simulator?)")
            continue
        ratio = plain / ms
        verdict = "met" if ratio >= MIN_BANDWIDTH_RATIO else "MISSED"
        report(f"{FRAMEWORK} levels={levels} {name}: {nbytes / 1e6:.1f} MB staging "
               f"{nbytes / ms / 1e6:.2f} GB/s, plain pinned copy_ {nbytes / plain / 1e6:.2f} "
               f"GB/s, ratio {ratio:.2f} (target >= {MIN_BANDWIDTH_RATIO}: {verdict})")


@pytest.mark.parametrize("levels", [1, 36])
def test_overlap_efficiency_gz21(levels):
    _gpu_or_skip()
    if FRAMEWORK != "torch":
        pytest.skip("the GZ21 CNN is a torch model")
    import torch

    from eophis_hpc.demo import gz21
    net = gz21.build(gz21.FULL_WIDTHS).to("cuda")
    figures = {}
    for chunks in (1, CHUNKS):
        timings = Timings()
        feed, sched = make_feed(levels, chunks, timings)
        specs = sched.outputs_of(0)

        def model(kwargs, r0, r1):
            su, sv = gz21.apply(net, kwargs["u"], kwargs["v"])
            return {"su": su, "sv": sv}

        with torch.no_grad():
            for _ in range(2):
                feed.run(["u", "v"], model, specs)
            timings = feed.timings = Timings()
            for _ in range(max(3, REPEATS // 4)):
                feed.run(["u", "v"], model, specs)
        h2d, mdl, d2h, wall = (timings.median(p) for p in ("h2d", "model", "d2h", "device"))
        hidden = (h2d + mdl + d2h - wall) / (h2d + d2h) if h2d + d2h else float("nan")
        figures[chunks] = (h2d, mdl, d2h, wall, hidden)
    for chunks, (h2d, mdl, d2h, wall, hidden) in figures.items():
        verdict = "" if chunks == 1 else (
            f" (target >= {MIN_OVERLAP}: {'met' if hidden >= MIN_OVERLAP else 'MISSED'})")
        report(f"GZ21 full, eORCA025 {TILES_PER_WORKER} tiles x {levels} levels, chunks={chunks}: h2d "
               f"{h2d * 1e3:.2f} ms, model {mdl * 1e3:.2f} ms, d2h {d2h * 1e3:.2f} ms, wall "
               f"{wall * 1e3:.2f} ms, copy time hidden {hidden:.2f}{verdict}")
