"""gpu-check sections that compare bytes: the device kernels against the NumPy reference (on
torch, CuPy and Numba arrays, contiguous and strided views), the staged ``Feed`` round trip per
framework (chunks=4: identity, a cropped non-contiguous output, batches made after the
allocator's pool was filled with NaN), and outputs of one framework handed back by another
(torch <-> CuPy) while the producer is still busy."""
from __future__ import annotations

import numpy as np

from .. import device
from ..decomposition import Box, Decomposition
from ..grid import Grid
from ..kernels import numpy_ref as ref
from ..plan import Plan
from ..protocol.schedule import Exchange, Schedule
from ..runtime.timings import Timings
from ..staging import Feed
from .report import Result

KERNEL_FRAMEWORKS = ("torch", "cupy", "numba")


# ---------------------------------------------------------------------- arrays of a framework
def to_gpu(fw: str, host: np.ndarray, index: int):
    """``host`` copied to GPU ``index`` as ``fw``'s array."""
    if fw == "torch":
        import torch
        return torch.from_numpy(np.ascontiguousarray(host)).to(f"cuda:{index}")
    if fw == "cupy":
        import cupy
        with cupy.cuda.Device(index):
            return cupy.asarray(host)
    from numba import cuda
    return cuda.to_device(np.ascontiguousarray(host))


def to_numpy(value) -> np.ndarray:
    return np.ascontiguousarray(device.host_view(value, "gpu-check"))


def poison_pools(fw: str, index: int, nbytes: int) -> None:
    """Fill ``nbytes`` of the framework's device and pinned-host pools with NaN and give them
    back, so that an uninitialised batch made next would hold NaN."""
    n = nbytes // 4
    if fw == "torch":
        import torch
        x = torch.full((n,), float("nan"), device=f"cuda:{index}")
        p = torch.empty((n,), pin_memory=True).fill_(float("nan"))
        torch.cuda.synchronize()
        del x, p
    elif fw == "cupy":
        import cupy
        import cupyx
        with cupy.cuda.Device(index):
            x = cupy.full((n,), np.nan, np.float32)
            p = cupyx.empty_pinned((n,), np.float32)
            p[...] = np.nan
            cupy.cuda.Device(index).synchronize()
            del x, p
    elif fw == "numba":
        from numba import cuda
        x = cuda.to_device(np.full(n, np.nan, np.float32))
        cuda.synchronize()
        del x


# ---------------------------------------------------------------------- kernels
def kernels(frameworks: list, quick: bool) -> list:
    """Unpack (fold, sign, cast) and pack on each framework's arrays, into and from strided
    views too, byte for byte against :mod:`eophis_hpc.kernels.numpy_ref`."""
    out = []
    grid = Grid(nx=40, ny=30, east_west="cyclic", north="fold", pivot="T", point="U")
    src, dst = Decomposition.blocks(grid, 3, 2), Decomposition.auto(grid, 4)
    plan = Plan(grid, src, dst, 4)
    pairs = list(plan.pairs)[:4] if quick else list(plan.pairs)
    for fw in KERNEL_FRAMEWORKS:
        if fw not in frameworks:
            out.append(Result("kernels", fw, "skip", f"no GPU for {fw}"))
            continue
        try:
            index = device.staging_policy(fw, "cuda", cuda_aware=False).index
            backend = device.device_backend()
            rng = np.random.default_rng(1)
            bad, n = [], 0
            for s, d in pairs:
                runs, nz, b = plan.unpack_runs(s, d), 5, dst.boxes[d]
                buf = rng.standard_normal(int(np.sum(runs[:, 2] * runs[:, 3])) * nz)
                shape = (nz, b.j1 - b.j0 + 8, b.i1 - b.i0 + 8)
                want = np.zeros(shape, np.float32)
                ref.unpack(buf, want, runs, -1.0)
                big = to_gpu(fw, np.zeros((nz, shape[1] + 4, shape[2] + 4), np.float32), index)
                views = {"contiguous": to_gpu(fw, np.zeros(shape, np.float32), index),
                         "strided": big[:, 2:-2, 2:-2]}
                for name, got in views.items():
                    backend.unpack(to_gpu(fw, buf, index), got, runs, -1.0)
                    device.synchronize()
                    if to_numpy(got).tobytes() != want.tobytes():
                        bad.append(f"unpack {name} pair {(s, d)}")
                    pr = plan.pack_runs(s, d)
                    k = int(np.sum(pr[:, 2] * pr[:, 3])) * nz
                    sb = src.boxes[s]
                    a = rng.standard_normal((nz, sb.j1 - sb.j0, sb.i1 - sb.i0)).astype(np.float32)
                    wbuf = np.empty(k, np.float64)
                    ref.pack(a, pr, wbuf)
                    a_big = to_gpu(fw, np.pad(a, ((0, 0), (1, 1), (1, 1))), index)
                    a_dev = a_big[:, 1:-1, 1:-1] if name == "strided" else to_gpu(fw, a, index)
                    gbuf = to_gpu(fw, np.zeros(k, np.float64), index)
                    backend.pack(a_dev, pr, gbuf)
                    device.synchronize()
                    if to_numpy(gbuf).tobytes() != wbuf.tobytes():
                        bad.append(f"pack {name} pair {(s, d)}")
                    n += 2
            out.append(Result("kernels", fw, "fail" if bad else "pass",
                              ("differ: " + ", ".join(bad[:5])) if bad else
                              f"{n} unpack/pack cases (fold, sign, float64->float32, strided) "
                              "equal to the reference byte for byte"))
        except Exception as exc:
            out.append(Result("kernels", fw, "fail", f"{type(exc).__name__}: {exc}"))
    return out


# ---------------------------------------------------------------------- staged Feed
BOXES = [Box(0, 8, 0, 8), Box(0, 8, 8, 14), Box(8, 12, 0, 8), Box(8, 12, 8, 14),
         Box(12, 16, 0, 8), Box(12, 16, 8, 11)]  # smaller tiles leave padding in the batch
HALO = 2


def staged_feed(fw: str, levels: int = 3) -> Feed:
    """A staged Feed of six tiles of unequal sizes, chunks=4, float32, its host batch filled
    with random values where the unpack writes (each tile's own points and halo)."""
    sched = Schedule([Exchange(inputs=["u"], outputs=["fu"], levels=levels, dtype="float32")])
    policy = device.staging_policy(fw, "cuda", cuda_aware=False)
    hw = (8 + 2 * HALO, 8 + 2 * HALO)
    feed = Feed(sched, range(len(BOXES)), BOXES, hw, HALO, np.float32, policy, 4, False, None,
                0.0, Timings())
    rng = np.random.default_rng(3)
    tgt = feed.recv_target("u")
    for k, b in enumerate(BOXES):
        nj, ni = b.j1 - b.j0 + 2 * HALO, b.i1 - b.i0 + 2 * HALO
        tgt[k][:, :nj, :ni] = rng.standard_normal((levels, nj, ni))
    return feed


def feed_round_trips(frameworks: list, quick: bool) -> list:
    out = []
    for fw in ("torch", "cupy", "numba", "jax"):
        if fw not in frameworks:
            out.append(Result("feed", fw, "skip", f"no GPU for {fw}"))
            continue
        for case in ("identity", "cropped (non-contiguous)", "NaN-poisoned pool"):
            try:
                if case.startswith("NaN"):
                    poison_pools(fw, device.staging_policy(fw, "cuda", cuda_aware=False).index,
                                 64 << 20)
                feed = staged_feed(fw)
                sent = np.array(feed.host["u"])
                if np.isnan(sent).any():
                    raise AssertionError("the pinned host batch came from the pool unzeroed")
                crop = case.startswith("cropped")
                h = HALO

                def model(kwargs, r0, r1):
                    x = kwargs["u"]
                    return {"fu": x[:, :, h:-h, h:-h] if crop else x}
                sched = feed.schedule
                (target, offset), = feed.run(["u"], model, sched.outputs_of(0)).values()
                got = np.stack([to_numpy(target[k]) for k in range(len(BOXES))])
                want = sent[:, :, h:-h, h:-h] if crop else sent
                ok = got.tobytes() == want.tobytes()
                out.append(Result("feed", f"{fw}: {case}", "pass" if ok else "fail",
                                  f"{feed.policy.describe()}; chunks={len(feed.ranges())}; "
                                  + ("bytes equal" if ok else
                                     f"{int(np.sum(got != want))} values differ")))
            except Exception as exc:
                out.append(Result("feed", f"{fw}: {case}", "fail", f"{type(exc).__name__}: {exc}"))
    return out


# ---------------------------------------------------------------------- cross-framework
def busy(fw: str, x, rounds: int):
    """``x * 2`` computed slowly on ``fw``'s current stream (``rounds`` exact no-ops first)."""
    for _ in range(rounds):
        x = x * 1.0
    return x * 2


def cross_framework(frameworks: list, quick: bool) -> list:
    """A torch Feed whose model answers with a CuPy array still being computed on CuPy's
    stream, and the reverse, each run on a non-default stream of the Feed's framework: the
    outputs must be complete before they are copied back."""
    if not {"torch", "cupy"} <= set(frameworks):
        return [Result("race", "torch <-> cupy", "skip", "needs GPUs for both torch and cupy")]
    import cupy
    import torch
    out = []
    rounds = 20 if quick else 200
    for fw, other in (("torch", "cupy"), ("cupy", "torch")):
        try:
            feed = staged_feed(fw, levels=64)
            sent = np.array(feed.host["u"])

            def model(kwargs, r0, r1):
                x = kwargs["u"]
                if other == "cupy":
                    return {"fu": busy("cupy", cupy.from_dlpack(x), rounds)}
                return {"fu": busy("torch", torch.from_dlpack(x), rounds)}
            if fw == "torch":
                with torch.cuda.stream(torch.cuda.Stream()):
                    (target, _), = feed.run(["u"], model, feed.schedule.outputs_of(0)).values()
            else:
                with cupy.cuda.Stream(non_blocking=True):
                    (target, _), = feed.run(["u"], model, feed.schedule.outputs_of(0)).values()
            got = np.stack([to_numpy(target[k]) for k in range(len(BOXES))])
            ok = got.tobytes() == (sent * 2).tobytes()
            out.append(Result("race", f"{fw} Feed, {other} model", "pass" if ok else "fail",
                              "complete outputs" if ok else
                              f"{int(np.sum(got != sent * 2))} values copied before they were "
                              "computed"))
        except Exception as exc:
            out.append(Result("race", f"{fw} Feed, {other} model", "fail",
                              f"{type(exc).__name__}: {exc}"))
    return out
