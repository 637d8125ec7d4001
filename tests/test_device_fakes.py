"""The GPU hand-off's device, stream and allocator semantics on a CPU-only machine, with fakes
that record what a GPU would be asked to do: a two-GPU CuPy stub, NaN-filled allocation pools,
stream-recording adapters, a fake CUDA driver, Numba's CUDA simulator for strided outputs and
kernel launches. Each test names the defect of the review it guards against; what only real
hardware shows is in tests/test_gpu.py."""
from __future__ import annotations

import os
import sys
import types
import weakref

import numpy as np
import pytest

import eophis_hpc as eh
from eophis_hpc import device
from eophis_hpc.device import cuda_adapters, policy as policy_mod
from eophis_hpc.errors import CouplingError
from eophis_hpc.protocol.schedule import Schedule
from eophis_hpc.runtime.timings import Timings
from eophis_hpc.staging import Feed
from test_device import HAS, SIM, needs, run_python


# ---------------------------------------------------------------------- a two-GPU CuPy stub
class FakeCupy:
    """Just enough of CuPy to see which GPU is current when each object is made."""

    def __init__(self, n_devices: int = 2):
        state = {"current": 0}
        self.state = state
        self.calls = []
        calls = self.calls
        self.__version__ = "13.fake"

        class Device:
            def __init__(self, index):
                self.id = index

            def use(self):
                state["current"] = self.id

            def __enter__(self):
                self.prev = state["current"]
                state["current"] = self.id
                return self

            def __exit__(self, *exc):
                state["current"] = self.prev

        class OnDevice:
            def __init__(self, *args, **kw):
                self.device = state["current"]
                self.kw = kw

            def record(self, stream=None):
                calls.append(("record", self.device, stream.device))

            def wait_event(self, event):
                calls.append(("wait", self.device, event.device))

        class ndarray(np.ndarray):
            def get(self, stream=None, out=None, blocking=True):
                calls.append(("get", blocking))
                out[...] = self
                return out

        def full(value):
            def make(shape, dtype=np.float64):
                arr = np.full(shape, value, dtype=dtype).view(ndarray)
                arr.device_id = state["current"]
                return arr
            return make

        self.ndarray = ndarray
        self.zeros, self.empty = full(0.0), full(np.nan)   # a NaN-filled pool
        current_streams = {}

        def get_current_stream():
            return current_streams.setdefault(state["current"], OnDevice())

        self.cuda = types.SimpleNamespace(
            Device=Device, Stream=OnDevice, Event=OnDevice, get_current_stream=get_current_stream,
            runtime=types.SimpleNamespace(getDeviceCount=lambda: n_devices),
            get_elapsed_time=lambda a, b: 0.0)
        self.cupyx = types.SimpleNamespace(zeros_pinned=full(0.0), empty_pinned=full(np.nan))

    def ascontiguousarray(self, a):
        return np.ascontiguousarray(a).view(self.ndarray)

    def install(self, monkeypatch):
        module = types.ModuleType("cupy")
        module.__dict__.update({k: getattr(self, k) for k in (
            "__version__", "ndarray", "zeros", "empty", "cuda", "ascontiguousarray")})
        pinned = types.ModuleType("cupyx")
        pinned.__dict__.update(vars(self.cupyx))
        monkeypatch.setitem(sys.modules, "cupy", module)
        monkeypatch.setitem(sys.modules, "cupyx", pinned)


def test_cupy_makes_the_chosen_gpu_current_for_events_streams_and_the_model(monkeypatch):
    """Review 1: on GPU 1 the events, streams and current stream were GPU 0's (the Device was
    only entered in ``with`` blocks); in direct mode Numba attached to GPU 0."""
    fake = FakeCupy()
    fake.install(monkeypatch)
    selected = []
    from eophis_hpc.device import cuda_kernels
    monkeypatch.setattr(cuda_kernels, "select_device", selected.append)
    pol = device.staging_policy("cupy", "cuda:1", cuda_aware=False)
    assert (pol.device, pol.mode) == ("cuda:1", "staged")
    ad = device.adapter(pol)
    assert fake.state["current"] == 1                       # the model runs with GPU 1 current
    assert ad.event().device == 1 and ad.stream().device == 1
    assert ad.current_stream().device == 1
    assert ad.stream().kw == {"non_blocking": True}
    device.adapter(device.Policy("cupy", "cuda:1", "direct", False, True, "test"))
    assert selected == [1]                                  # Numba's context on GPU 1 too


def test_cupy_copies_back_asynchronously_into_zeroed_pinned_buffers(monkeypatch):
    """Review 2 (``get`` blocked on every chunk) and 7 (``empty``/``empty_pinned`` batches)."""
    fake = FakeCupy()
    fake.install(monkeypatch)
    ad = device.adapter(device.staging_policy("cupy", "cuda:0", cuda_aware=False))
    host = ad.host_empty((2, 3), np.float32, pinned=True)
    dev = ad.device_empty((2, 3), np.float32)
    assert not np.isnan(host).any() and not np.isnan(dev).any()
    src = fake.zeros((2, 3), np.float32) + 5
    ad.d2h(host, src, ad.stream())
    assert ("get", False) in fake.calls and (host == 5).all()


# ---------------------------------------------------------------------- Numba streams
def test_numba_copy_streams_do_not_block_on_the_default_stream(monkeypatch):
    """Review 3: ``cuda.stream()`` streams synchronise with the legacy default stream the
    model's kernels use, so copies never overlapped the model."""
    import numba
    made = []

    class FakeLib:
        def cuStreamCreate(self, handle_ref, flags):
            made.append(flags)
            handle_ref._obj.value = 4242
            return 0

        def cuStreamDestroy_v2(self, handle):
            made.append("destroyed")

    external = []

    class External:  # a Numba stream wrapping a handle (weak-referenceable, as Numba's are)
        def __init__(self, ptr):
            external.append(ptr)
            self.ptr = ptr
    fake_cuda = types.SimpleNamespace(
        select_device=lambda i: None, current_context=lambda: None, external_stream=External,
        stream=lambda: pytest.fail("a blocking cuda.stream() was made"))
    monkeypatch.setattr(numba, "cuda", fake_cuda)
    monkeypatch.setattr(cuda_adapters, "libcuda", FakeLib)
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    s = device.NumbaAdapter(0).stream()
    assert made == [cuda_adapters.CU_STREAM_NON_BLOCKING] and external == [4242] and s.ptr == 4242


# ---------------------------------------------------------------------- JAX memory
@pytest.mark.parametrize("preset", [None, "XLA_PYTHON_CLIENT_MEM_FRACTION"])
def test_jax_does_not_preallocate_the_gpu_unless_asked(monkeypatch, preset):
    """Review 4: ``jax.devices('gpu')`` (from Tunnel.__init__ and the GPU tests) took 75% of
    the GPU; two workers per GPU ran out of memory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    if preset:
        env[preset] = "0.3"
    monkeypatch.setattr(os, "environ", env)
    seen = []

    def devices(kind=None):
        seen.append(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))
        return ["gpu0"]
    fake = types.ModuleType("jax")
    fake.__version__, fake.devices = "0.fake", devices
    monkeypatch.setitem(sys.modules, "jax", fake)
    ok, what = device.gpu_status("jax")
    assert ok and seen == [None if preset else "false"]
    assert ("JAX GPU memory as set" in what) == bool(preset)


# ---------------------------------------------------------------------- staged orchestration
def _schedule():
    return Schedule([eh.Exchange(inputs=["u"], outputs=["fu"], levels=2)])


def _fake_torch_adapter(log):
    import torch

    class Recording(device.TorchAdapter):
        """The torch adapter with its CUDA calls replaced by CPU ones that log."""

        def __init__(self, index):
            device.Adapter.__init__(self, index)
            self.torch, self.dev = torch, torch.device("cpu")

        def host_empty(self, shape, dtype, pinned=False):
            return device.aligned_empty(shape, dtype)

        def stream(self):
            return "copy"

        def current_stream(self):
            return "compute"

        def event(self):
            return {}

        def record(self, event, stream):
            log.append(("record", stream))

        def wait(self, stream, event):
            log.append(("wait", stream))

        def synchronize(self, stream):
            log.append(("sync", stream))

        def elapsed_ms(self, start, end):
            return 1.0

        def h2d(self, dst, src, stream):
            dst.copy_(torch.from_numpy(src))

        def d2h(self, dst, src, stream):
            torch.from_numpy(dst).copy_(src)

        def as_device(self, value):
            log.append(("as_device",))
            return super().as_device(value)

        def contiguous(self, value):
            log.append(("contiguous",))
            return super().contiguous(value)
    return Recording


@needs("torch")
def test_outputs_are_ready_before_the_compute_done_event(monkeypatch):
    """Review 5: an output of another framework was converted (DLPack, which orders its
    producer's stream before the consumer's) after the compute-done event was recorded, so the
    device-to-host copy could read it unfinished."""
    log = []
    monkeypatch.setitem(device.ADAPTERS, "torch", _fake_torch_adapter(log))
    pol = device.Policy("torch", "cuda:0", "staged", True, False, "test")
    boxes = [eh.Box(0, 4, 4 * k, 4 * k + 4) for k in range(3)]
    feed = Feed(_schedule(), [0, 1, 2], boxes, (6, 6), 1, np.float32, pol, 3, False, None, 0.0,
                Timings())

    def model(kwargs, r0, r1):
        log.append(("model",))
        return {"fu": kwargs["u"][:, :, 1:-1, 1:-1]}
    feed.run(["u"], model, _schedule().outputs_of(0))
    for m in [i for i, e in enumerate(log) if e == ("model",)]:
        after = log[m + 1:m + 4]
        assert after == [("as_device",), ("contiguous",), ("record", "compute")], log


@needs("torch")
@pytest.mark.parametrize("mode", ["host", "staged"])
def test_bfloat16_output_is_a_coupling_error_naming_the_field(monkeypatch, mode):
    """Review 10: a bfloat16 output (autocast) raised TypeError from NumPy."""
    import torch
    monkeypatch.setitem(device.ADAPTERS, "torch", _fake_torch_adapter([]))
    pol = (device.staging_policy("torch") if mode == "host" else
           device.Policy("torch", "cuda:0", "staged", True, False, "test"))
    feed = Feed(_schedule(), [0], [eh.Box(0, 4, 0, 4)], (4, 4), 0, np.float32, pol, 1, False,
                None, 0.0, Timings())
    with pytest.raises(CouplingError, match="output 'fu': dtype bfloat16 is not float32/float64"):
        feed.run(["u"], lambda kw, r0, r1: {"fu": kw["u"].to(torch.bfloat16)},
                 _schedule().outputs_of(0))


@needs("torch")
def test_torch_gpu_batches_are_zeroed_and_pinned_buffers_not_kept(monkeypatch):
    """Review 7 (``torch.empty`` batches: padding of smaller tiles held garbage or NaN) and 12
    (replaced pinned buffers were kept by the adapter forever)."""
    import torch
    real_empty, real_zeros = torch.empty, torch.zeros

    def nan_empty(*shape, pin_memory=False, **kw):
        return real_empty(*shape, **kw).fill_(float("nan"))

    def zeros(*shape, pin_memory=False, **kw):
        return real_zeros(*shape, **kw)
    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "zeros", zeros)
    ad = _fake_torch_adapter([])(None)
    assert not torch.isnan(ad.device_empty((2, 3, 4, 4), np.float32)).any()
    host = device.TorchAdapter.host_empty(ad, (2, 3), np.float32, pinned=True)
    assert not np.isnan(host).any()
    owner = weakref.ref(host.base)  # the tensor holding the (pinned) memory
    del host
    assert owner() is None


# ---------------------------------------------------------------------- policy
def test_node_local_rank_picks_the_gpu_and_cuda_n_overrides(monkeypatch):
    """Review 12: ``device='cuda'`` put every worker of a node on GPU 0."""
    monkeypatch.setattr(policy_mod, "gpu_count", lambda fw: (4, f"{fw}: 4 fake GPUs"))
    for var in device.detect.LOCAL_RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MPI_LOCALRANKID", "6")
    pol = device.staging_policy("numba", "cuda", cuda_aware=False)
    assert pol.device == "cuda:2" and "node-local rank 6 (MPI_LOCALRANKID=6) mod 4" in pol.reason
    assert device.staging_policy("numba", "cuda:3", cuda_aware=False).device == "cuda:3"
    with pytest.raises(RuntimeError, match=r"device='cuda:4': no GPU 4 for numba here"):
        device.staging_policy("numba", "cuda:4", cuda_aware=False)
    monkeypatch.delenv("MPI_LOCALRANKID")
    assert device.staging_policy("numba", "cuda", cuda_aware=False).device == "cuda:0"


def test_detected_cuda_support_is_not_enough_for_direct_mode(monkeypatch):
    """Review 12: a library whose query says yes without a CUDA transport crashed in direct
    mode; direct is now an explicit opt-in, said in the policy."""
    monkeypatch.setattr(policy_mod, "gpu_count", lambda fw: (1, "1 fake GPU"))
    monkeypatch.setattr(policy_mod, "mpi_cuda_aware",
                        lambda: (True, "MPIX_Query_cuda_support()=1 in /fake/libmpi.so"))
    monkeypatch.setattr(policy_mod, "device_kernels_status", lambda: (True, "fake kernels"))
    pol = device.staging_policy("numba", "cuda")
    assert (pol.mode, pol.pinned, pol.cuda_aware) == ("staged", True, True)
    assert "opt-in (EOPHIS_HPC_CUDA_AWARE_MPI=1" in pol.reason
    assert device.staging_policy("numba", "cuda", cuda_aware=True).mode == "direct"


def test_cuda_query_waits_for_mpi_init():
    """Review 12: MPICH's ``MPIX_GPU_query_support`` was called before ``MPI_Init`` when
    mpi4py.MPI was imported with ``rc.initialize = False``."""
    out = run_python("""
        import mpi4py
        mpi4py.rc.initialize = False
        from mpi4py import MPI
        from eophis_hpc import device
        print(device.mpi_cuda_aware())
        MPI.Init()
        print(device.mpi_cuda_aware()[0])
        MPI.Finalize()
    """).splitlines()
    assert out[0] == "(None, 'MPI is not initialised (or already finalised): not asked')"
    assert out[1] == "False"


def test_broken_device_kernels_keep_the_staged_mode():
    """Review 9: the probe only asked ``cuda.is_available()``; kernels that cannot compile
    (no NVVM, driver older than the toolkit) crashed at the first step in direct mode."""
    out = run_python("""
        from eophis_hpc import device
        from eophis_hpc.device import cuda_kernels
        def broken(*args):
            raise RuntimeError("libNVVM cannot be found")
        cuda_kernels.launch = broken
        pol = device.staging_policy("numba", "cuda", cuda_aware=True)
        print(pol.mode, pol.pinned)
        print(pol.reason)
    """, SIM).splitlines()
    assert out[0] == "staged True"
    assert "no device unpack kernels (device kernels failed to compile or run (RuntimeError: " \
           "libNVVM cannot be found))" in out[1]


# ---------------------------------------------------------------------- simulator
def test_direct_mode_kernels_launch_on_the_models_stream():
    """Review 8: unpack -> model -> pack were ordered only by the legacy default stream; a user
    stream or per-thread default streams made them race. Launches now name the model's stream,
    asked at each launch."""
    out = run_python("""
        import numpy as np
        from eophis_hpc import device
        from eophis_hpc.device import cuda_kernels
        from eophis_hpc.kernels import numpy_ref as ref
        launched, real = [], cuda_kernels.launch
        def recording(kernel, total, stream, *args):
            launched.append(stream)
            real(kernel, total, stream, *args)
        cuda_kernels.launch = recording
        streams = iter(["model-stream-1", "model-stream-2", "model-stream-3"])
        dk = device.device_backend(lambda: next(streams))
        runs = np.array([[0, 0, 2, 3, 0], [2, 0, 1, 3, 1]], dtype=np.int64)
        buf = np.arange(9.0)
        want = np.zeros((1, 3, 3), np.float32)
        ref.unpack(buf, want, runs, -1.0)
        got = device.HostCudaArray(np.zeros((1, 3, 3), np.float32))
        dk.unpack(device.HostCudaArray(buf), got, runs, -1.0)
        dk.fill(got, np.array([[0, 0, 1, 1]]), 5.0)
        back = device.HostCudaArray(np.zeros(6, np.float32))
        dk.pack(got, np.array([[1, 0, 2, 3]]), back)
        ref.fill(want, np.array([[0, 0, 1, 1]]), 5.0)
        assert np.array_equal(got.host, want) and np.array_equal(back.host, want[0, 1:].ravel())
        print(launched)
    """, SIM)
    assert out.strip() == "['model-stream-1', 'model-stream-2', 'model-stream-3']"


def test_numba_staged_strided_outputs_and_nan_pools_in_the_simulator():
    """Review 6 (a cropped output ``y[..., h:-h, h:-h]`` made ``copy_to_host`` raise) and 7
    (``device_array``/``pinned_array`` batches: the padding of smaller tiles held whatever the
    pool had, NaN here): identity, cropped and poisoned-pool cases byte for byte."""
    out = run_python("""
        import numpy as np
        from numba import cuda
        real_device_array, real_pinned = cuda.device_array, cuda.pinned_array
        def nan_device_array(shape, dtype=np.float64, **kw):
            return cuda.to_device(np.full(shape, np.nan, dtype))
        def nan_pinned(shape, dtype=np.float64):
            return np.full(shape, np.nan, dtype)
        cuda.device_array, cuda.pinned_array = nan_device_array, nan_pinned
        import eophis_hpc as eh
        from eophis_hpc import device
        from eophis_hpc.protocol.schedule import Schedule
        from eophis_hpc.runtime.timings import Timings
        from eophis_hpc.staging import Feed
        sched = Schedule([eh.Exchange(inputs=["u"], outputs=["fu"], levels=2)])
        pol = device.Policy("numba", "cuda:0", "staged", True, False, "test")
        ad = device.adapter(pol)  # direct mode unpacks into device batches: zeroed too
        assert not np.isnan(ad.device_empty((2, 3), np.float32).copy_to_host()).any()
        assert not np.isnan(ad.host_empty((2, 3), np.float32, pinned=True)).any()
        boxes = [eh.Box(0, 4, 0, 4), eh.Box(0, 4, 4, 7), eh.Box(4, 6, 0, 4)]  # smaller tiles
        for crop in (False, True):
            feed = Feed(sched, [0, 1, 2], boxes, (6, 6), 1, np.float32, pol, 2, False, None,
                        0.0, Timings())
            rng = np.random.default_rng(1)
            tgt = feed.recv_target("u")
            for k, b in enumerate(boxes):  # what the unpack writes: the tile's points only
                tgt[k][:, :b.j1 - b.j0 + 2, :b.i1 - b.i0 + 2] = rng.standard_normal(
                    (2, b.j1 - b.j0 + 2, b.i1 - b.i0 + 2))
            sent = feed.host["u"].copy()
            assert not np.isnan(sent).any(), "a batch from the pool is not zeroed"
            seen = []
            def model(kw, r0, r1):
                x = kw["u"]
                seen.append(x.copy_to_host())
                return {"fu": x[:, :, 1:-1, 1:-1] if crop else x}
            (target, offset), = feed.run(["u"], model, sched.outputs_of(0)).values()
            assert np.array_equal(np.concatenate(seen), sent)
            got = np.stack([np.asarray(target[k]) for k in range(3)])
            want = sent[:, :, 1:-1, 1:-1] if crop else sent
            assert got.tobytes() == want.tobytes() and offset == ((0, 0) if crop else (1, 1))
        print("ok")
    """, SIM)
    assert out.strip() == "ok"
