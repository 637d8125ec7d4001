"""The same checks as tests/test_device.py on a real GPU, for every framework that sees one:
coupled runs where the model gets device tensors holding exactly the reference tiles (cast once,
land tiles left out, chunked with overlapped copies) and the model ranks get back exactly the
global result; the staging policy and pinned buffers; the device kernels against the NumPy
reference. Everything skips, with the reason, on machines without a GPU."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from eophis_hpc import device
from test_device import LAND_ONE_TILE_LEFT, case_config

FRAMEWORKS = ("torch", "cupy", "jax", "numba")


def gpu_or_skip(fw: str) -> str:
    """What was checked, or a skip saying why there is no GPU for ``fw``."""
    if importlib.util.find_spec(fw) is None:
        pytest.skip(f"{fw} is not installed ({device.EXTRAS[fw]})")
    if device.simulator():
        pytest.skip("NUMBA_ENABLE_CUDASIM=1: no real GPU is used")
    ok, what = device.gpu_status(fw)
    if not ok:
        pytest.skip(f"no GPU for {fw} here ({what})")
    return what


def gpu_cases(fw: str) -> dict:
    dtype = "float32"
    return {
        "f32-chunks-land": ({"framework": fw, "device": "cuda", "dtype": dtype, "chunks": 2,
                             "land_rect": LAND_ONE_TILE_LEFT}, {}, fw),
        "f64-nochunks-stack": ({"framework": fw, "device": "cuda", "chunks": 1,
                                "stack_ex0": True, "strategy": "datatype"}, {}, fw),
        "router-chunks3": ({"framework": fw, "device": "cuda", "dtype": dtype, "chunks": 3,
                            "router": True}, {}, fw),
    }


@pytest.mark.mpi
@pytest.mark.parametrize("case", ["f32-chunks-land", "f64-nochunks-stack", "router-chunks3"])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_coupled_run_on_the_gpu(tmp_path, fw, case):
    from mpi_util import run_app
    gpu_or_skip(fw)
    if fw == "jax" and case.startswith("f64"):
        pytest.skip("JAX float64 needs jax_enable_x64 (covered by test_device)")
    cfg, env = case_config(case, gpu_cases(fw))
    res = run_app(tmp_path, cfg, 2, 2, timeout=300, app="device_check.py", env=env)
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    assert res.stdout.count(": OK") == 4, res.stdout
    mode = "staged" if fw == "jax" or not device.mpi_cuda_aware()[0] else "direct"
    assert f"{fw} on cuda:0: {mode}" in res.stdout, res.stdout
    if mode == "staged" and fw != "jax":
        assert "phases: d2h device h2d model" in res.stdout


@pytest.mark.parametrize("fw", ["torch", "cupy", "numba"])
def test_pinned_buffers_and_async_copies(fw):
    """Host buffers of the staged policy are pinned; a chunked round trip through the
    adapter's streams and events gives back the same bytes."""
    gpu_or_skip(fw)
    pol = device.staging_policy(fw, "cuda", cuda_aware=False)
    assert (pol.mode, pol.pinned) == ("staged", True)
    ad = device.adapter(pol)
    host = ad.host_empty((4, 3, 8, 8), np.float32, pinned=True)
    host[:] = np.random.default_rng(0).standard_normal(host.shape)
    if fw == "torch":
        import torch
        assert torch.from_numpy(host).is_pinned()
    elif fw == "cupy":
        import cupy
        attrs = cupy.cuda.runtime.pointerGetAttributes(host.ctypes.data)
        assert attrs.type == cupy.cuda.runtime.memoryTypeHost
    dev = ad.device_empty(host.shape, np.float32)
    back = ad.host_empty(host.shape, np.float32, pinned=True)
    s1, s2 = ad.stream(), ad.stream()
    for r0, r1 in ((0, 2), (2, 4)):
        ad.h2d(dev[r0:r1], host[r0:r1], s1)
        ev = ad.event()
        ad.record(ev, s1)
        ad.wait(s2, ev)
        ad.d2h(back[r0:r1], dev[r0:r1], s2)
    ad.synchronize(s2)
    assert np.array_equal(back, host)


def test_device_kernels_on_the_gpu():
    """Numba CUDA unpack (cast, fold, sign), pack and fill against the NumPy reference."""
    gpu_or_skip("numba")
    import eophis_hpc as eh
    from numba import cuda

    from eophis_hpc.kernels import device_backend
    from eophis_hpc.kernels import numpy_ref as ref
    dk = device_backend()
    g = eh.Grid(nx=40, ny=30, east_west="cyclic", north="fold", pivot="T", point="U")
    src, dst = eh.Decomposition.blocks(g, 3, 2), eh.Decomposition.auto(g, 4)
    plan = eh.Plan(g, src, dst, 4)
    rng = np.random.default_rng(1)
    for (s, d) in plan.pairs:
        runs, nz = plan.unpack_runs(s, d), 5
        buf = rng.standard_normal(int(np.sum(runs[:, 2] * runs[:, 3])) * nz)
        b = dst.boxes[d]
        want = np.zeros((nz, b.j1 - b.j0 + 8, b.i1 - b.i0 + 8), np.float32)
        ref.unpack(buf, want, runs, -1.0)
        got = cuda.to_device(np.zeros_like(want))
        dk.unpack(cuda.to_device(buf), got, runs, -1.0)
        assert np.array_equal(got.copy_to_host(), want)
