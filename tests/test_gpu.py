"""The same checks as tests/test_device.py on a real GPU, for every framework that sees one:
coupled runs where the model gets device tensors holding exactly the reference tiles (cast once,
land tiles left out, chunked with overlapped copies) and the model ranks get back exactly the
global result; the staging policy and pinned buffers; the device kernels against the NumPy
reference. Everything skips, with the reason, on machines without a GPU."""
from __future__ import annotations

import importlib.util
import os

# before anything asks JAX about GPUs: it would take 75% of the GPU in this process, and the
# workers the coupled tests launch would run out of memory
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from eophis_hpc import device  # noqa: E402
from test_device import LAND_ONE_TILE_LEFT, SIM, case_config, run_python  # noqa: E402

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


def expected_mode(fw: str, env: dict | None = None) -> str:
    """The staging mode a worker of ``fw`` gets on ``cuda``, asked where the workers ask it:
    a fresh process with MPI initialised (in pytest's process ``mpi4py.MPI`` is not loaded,
    so the CUDA-aware answer there is always "cannot tell")."""
    return run_python(f"""
        from mpi4py import MPI
        from eophis_hpc import device
        print(device.staging_policy({fw!r}, "cuda").mode)
    """, env).strip()


@pytest.mark.parametrize("aware,want", [("1", "direct"), ("", "staged")])
def test_expected_mode_is_asked_with_mpi_loaded(aware, want):
    """On the CPU, through the simulator: the helper sees the opt-in and the library's answer."""
    assert expected_mode("numba", dict(SIM, EOPHIS_HPC_CUDA_AWARE_MPI=aware)) == want


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
    mode = expected_mode(fw)
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

    from eophis_hpc.device import device_backend
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


# ---------------------------------------------------------------------- review items on hardware
def test_gpu_check_passes_on_this_machine(tmp_path):
    """``eophis-hpc gpu-check --quick``: every section that can run here passes."""
    import subprocess
    import sys
    if not any(device.gpu_status(fw)[0] for fw in ("torch", "cupy", "numba")
               if importlib.util.find_spec(fw)):
        pytest.skip("no GPU for torch, cupy or numba here")
    res = subprocess.run([sys.executable, "-m", "eophis_hpc.cli", "gpu-check", "--quick",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


@pytest.mark.parametrize("fw", ["torch", "cupy", "numba"])
def test_staged_feed_round_trips_on_the_gpu(fw):
    """Review 2, 3, 6, 7 on hardware: chunks=4, identity, a cropped output and a NaN-filled
    pool, byte for byte."""
    gpu_or_skip(fw)
    from eophis_hpc.gpucheck.device_cases import feed_round_trips
    results = [r for r in feed_round_trips([fw], quick=True) if r.name.startswith(fw)]
    assert len(results) == 3 and all(r.status == "pass" for r in results), results


def test_cross_framework_outputs_are_complete():
    """Review 5 on hardware: a torch Feed given a CuPy output still being computed (and the
    reverse), each on a non-default stream."""
    gpu_or_skip("torch")
    gpu_or_skip("cupy")
    from eophis_hpc.gpucheck.device_cases import cross_framework
    results = cross_framework(["torch", "cupy"], quick=False)
    assert all(r.status == "pass" for r in results), results


def test_cupy_objects_live_on_the_chosen_gpu():
    """Review 1 on hardware (needs two GPUs): events, streams and the current device."""
    gpu_or_skip("cupy")
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU: the device choice cannot be seen")
    ad = device.adapter(device.staging_policy("cupy", "cuda:1", cuda_aware=False))
    assert cupy.cuda.runtime.getDevice() == 1
    assert ad.stream().device_id == 1 and ad.device_empty((4,), np.float32).device.id == 1


def test_numba_copy_streams_overlap_a_default_stream_kernel():
    """Review 3 on hardware: a copy on the adapter's stream finishes while a long kernel still
    runs on the default stream (it would wait for it with ``cuda.stream()``)."""
    gpu_or_skip("numba")
    from numba import cuda

    @cuda.jit
    def spin(x, n):
        i = cuda.grid(1)
        if i < x.size:
            v = x[i]
            for _ in range(n):
                v = v * 1.0000001
            x[i] = v
    ad = device.adapter(device.staging_policy("numba", "cuda", cuda_aware=False))
    x = cuda.to_device(np.ones(1 << 16, np.float32))
    host = ad.host_empty((1 << 20,), np.float32, pinned=True)
    dev = ad.device_empty((1 << 20,), np.float32)
    s = ad.stream()
    spin[64, 1024](x, 1 << 16)           # legacy default stream, long
    kernel_done = cuda.event(timing=False)
    kernel_done.record(0)
    ad.h2d(dev, host, s)
    copied = ad.event()
    ad.record(copied, s)
    copied.synchronize()                 # the host waits for the copy only
    still_running = not kernel_done.query()
    cuda.synchronize()
    assert still_running, "the copy waited for the default-stream kernel"


def test_jax_workers_share_a_gpu_without_preallocation(tmp_path):
    """Review 4 on hardware: two JAX workers on one GPU (gpu-check's coupled section)."""
    gpu_or_skip("jax")
    from eophis_hpc.gpucheck.coupled import coupled_run
    r = coupled_run("jax", "cuda:0", 300)
    assert r.status == "pass", r.detail


def test_bfloat16_output_is_refused_on_the_gpu():
    """Review 10 on hardware: an autocast output names the field."""
    gpu_or_skip("torch")
    import torch

    from eophis_hpc.errors import CouplingError
    from eophis_hpc.gpucheck.device_cases import staged_feed
    feed = staged_feed("torch")
    with pytest.raises(CouplingError, match="output 'fu'.*bfloat16"):
        feed.run(["u"], lambda kw, r0, r1: {"fu": kw["u"].to(torch.bfloat16)},
                 feed.schedule.outputs_of(0))
