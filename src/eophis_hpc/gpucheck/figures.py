"""Figures of the GPU staging path, shared by ``eophis-hpc gpu-check``, ``eophis-hpc bench`` and
``benchmarks/test_bench_gpu.py``: the tunnel's host-to-device and device-to-host path
(``staging.Feed``: pinned host buffers, the tunnel's streams, CUDA-event timings) for one eORCA025
worker against a plain pinned copy of the same bytes on one stream in the same run, and the share
of the copy time hidden behind a GZ21-sized CNN when the batch is cut into chunks.

Setup: eORCA025 (1440x1206) cut into 36 tiles (201x240 own points), halo 10, one worker holding
``TILES_PER_WORKER`` tiles; inputs u and v, float32.
"""
from __future__ import annotations

import statistics

import numpy as np

from .. import device
from ..decomposition import Decomposition
from ..grid import Grid
from ..protocol.schedule import Exchange, Schedule
from ..runtime.timings import Timings
from ..staging import Feed
from .report import Result

HALO = 10
TILES_PER_WORKER = 8
REPEATS = 20
MIN_BANDWIDTH_RATIO = 0.8  # staging path / plain pinned copy of the same bytes
MIN_OVERLAP = 0.8  # share of the copy time hidden behind the model with chunks
OVERLAP_CHUNKS = 8  # one tile per chunk: hides at most 1 - 1/8 of the copies
FRAMEWORKS = ("torch", "cupy", "numba")  # the ones with streams and events here


def gpu_framework() -> tuple[str | None, str]:
    """The first framework of ``FRAMEWORKS`` that sees a real GPU (the CUDA simulator does not
    count: it times nothing), and what was checked for each."""
    seen = []
    for fw in FRAMEWORKS:
        ok, what = device.gpu_status(fw)
        if ok and fw == "numba" and device.simulator():
            ok, what = False, what + "; the CUDA simulator times nothing"
        if ok:
            return fw, what
        seen.append(what)
    return None, "; ".join(seen)


def make_feed(framework: str, levels: int, chunks: int, timings: Timings) -> tuple[Feed, Schedule]:
    """The tunnel's Feed for one worker of eORCA025 / 36 tiles, inputs u, v float32, filled
    with random values."""
    grid = Grid.preset("eORCA025")
    dec = Decomposition.auto(grid, 36)
    H, W = dec.max_shape()
    sched = Schedule([Exchange(inputs=["u", "v"], outputs=["su", "sv"], levels=levels,
                               dtype="float32")])
    boxes = dec.boxes[:TILES_PER_WORKER]
    policy = device.staging_policy(framework, "cuda", cuda_aware=False)
    feed = Feed(sched, range(TILES_PER_WORKER), boxes, (H + 2 * HALO, W + 2 * HALO), HALO, None,
                policy, chunks, False, None, 0.0, timings)
    rng = np.random.default_rng(0)
    for name in ("u", "v"):
        feed.recv_target(name)[...] = rng.standard_normal(feed.host[name].shape)
    return feed, sched


def plain_copy_ms(feed: Feed, direction: str, repeats: int = REPEATS) -> list[float]:
    """Milliseconds of one copy of the same bytes (both fields) with the framework's own call,
    on one stream, timed by CUDA events, ``repeats`` times."""
    ad = feed.ad
    s = ad.stream()
    times = []
    for _ in range(repeats):
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
    return times


def bandwidth(framework: str, levels: int, repeats: int = REPEATS) -> dict:
    """The staging path's h2d and d2h (chunks=1, an identity model) and the plain pinned copy of
    the same bytes: ``{"bytes", "h2d": {"staging_s", "plain_s", "ratio"}, "d2h": {...}}``, each
    a median of ``repeats`` (ratio None where no time was measured, as in the simulator)."""
    timings = Timings()
    feed, sched = make_feed(framework, levels, chunks=1, timings=timings)
    specs = sched.outputs_of(0)

    def identity(kwargs, r0, r1):
        return {"su": kwargs["u"], "sv": kwargs["v"]}

    for _ in range(3):  # warm-up: allocations, pinned output buffers
        feed.run(["u", "v"], identity, specs)
    timings = feed.timings = Timings()
    for _ in range(repeats):
        feed.run(["u", "v"], identity, specs)
    out = {"framework": framework, "levels": levels, "tiles": TILES_PER_WORKER, "halo": HALO,
           "bytes": sum(feed.host[kw].nbytes for kw in ("u", "v"))}
    for name in ("h2d", "d2h"):
        staged = list(timings.recent.get(name, []))
        plain = [t / 1e3 for t in plain_copy_ms(feed, name, repeats)]
        s, p = timings.median(name), statistics.median(plain)
        out[name] = {"staging_s": s, "plain_s": p, "ratio": p / s if s and p else None,
                     "staging_samples": staged, "plain_samples": plain}
    return out


def overlap(framework: str, levels: int, chunks: int, repeats: int = REPEATS // 4,
            widths=None) -> dict:
    """The GZ21 CNN (``widths``: the published ones by default) behind the staged path with
    ``chunks`` model calls: GPU times of h2d, model, d2h (medians), the wall time of the whole
    staged call, and ``hidden = (h2d + model + d2h - wall) / (h2d + d2h)``."""
    import torch

    from ..demo import gz21
    net = gz21.build(widths or gz21.FULL_WIDTHS).to(f"cuda:{torch.cuda.current_device()}")
    feed, sched = make_feed(framework, levels, chunks, Timings())
    specs = sched.outputs_of(0)

    def model(kwargs, r0, r1):
        su, sv = gz21.apply(net, kwargs["u"], kwargs["v"])
        return {"su": su, "sv": sv}

    with torch.no_grad():
        for _ in range(2):
            feed.run(["u", "v"], model, specs)
        timings = feed.timings = Timings()
        for _ in range(max(3, repeats)):
            feed.run(["u", "v"], model, specs)
    h2d, mdl, d2h, wall = (timings.median(p) for p in ("h2d", "model", "d2h", "device"))
    hidden = (h2d + mdl + d2h - wall) / (h2d + d2h) if h2d + d2h else float("nan")
    return {"chunks": chunks, "levels": levels, "h2d_s": h2d, "model_s": mdl, "d2h_s": d2h,
            "wall_s": wall, "hidden": hidden}


def figures(frameworks: list, quick: bool) -> list:
    """gpu-check's section: bandwidth of each framework with streams against its plain pinned
    copy (target >= 0.8), and the overlap with torch and GZ21 (target >= 0.8 hidden)."""
    out = []
    repeats = 5 if quick else REPEATS
    for fw in FRAMEWORKS:
        if fw not in frameworks:
            out.append(Result("bandwidth", fw, "skip", f"no GPU for {fw}"))
            continue
        try:
            res = bandwidth(fw, 1 if quick else 36, repeats)
        except Exception as exc:
            out.append(Result("bandwidth", fw, "fail", f"{type(exc).__name__}: {exc}"))
            continue
        for name in ("h2d", "d2h"):
            r = res[name]
            if r["ratio"] is None:
                out.append(Result("bandwidth", f"{fw} {name}", "skip", "no CUDA-event timings"))
                continue
            gbs = res["bytes"] / r["staging_s"] / 1e9
            out.append(Result("bandwidth", f"{fw} {name}",
                              "pass" if r["ratio"] >= MIN_BANDWIDTH_RATIO else "fail",
                              f"{res['bytes'] / 1e6:.0f} MB at {gbs:.1f} GB/s, {r['ratio']:.2f} of "
                              f"a plain pinned copy (target >= {MIN_BANDWIDTH_RATIO})",
                              {k: r[k] for k in ("staging_s", "plain_s", "ratio")}))
    if "torch" not in frameworks:
        out.append(Result("bandwidth", "overlap (torch, GZ21)", "skip", "no GPU for torch"))
        return out
    try:
        res = overlap("torch", 1 if quick else 36, OVERLAP_CHUNKS, 3 if quick else REPEATS // 4)
        out.append(Result("bandwidth", f"overlap (torch, GZ21, chunks={OVERLAP_CHUNKS})",
                          "pass" if res["hidden"] >= MIN_OVERLAP else "fail",
                          f"{res['hidden']:.2f} of the copy time hidden behind the model "
                          f"(target >= {MIN_OVERLAP}); wall {res['wall_s'] * 1e3:.2f} ms", res))
    except Exception as exc:
        out.append(Result("bandwidth", "overlap (torch, GZ21)", "fail",
                          f"{type(exc).__name__}: {exc}"))
    return out
