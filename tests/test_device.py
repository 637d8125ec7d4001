"""The model hand-over on CPU-only machines: the staging policy and its errors, CUDA-aware MPI
detection, the device kernels under Numba's CUDA simulator, mpi4py's GPU-buffer path with a fake
device array over host memory, and coupled runs for every installed framework, both dtypes,
chunks, stacked inputs and land tiles (exact tiles in the model, exact results on the model
ranks). The GPU itself is tested by tests/test_gpu.py."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import eophis_hpc as eh
from eophis_hpc import device
from eophis_hpc.staging import ChunkRows, TileRows

HAS = {m: importlib.util.find_spec(m) is not None for m in ("torch", "jax", "cupy")}
SIM = {"NUMBA_ENABLE_CUDASIM": "1"}


def needs(module: str):
    return pytest.mark.skipif(not HAS[module], reason=f"{module} is not installed "
                              f"({device.EXTRAS[module]})")


def run_python(code: str, env: dict | None = None, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter (MPI singleton, CUDA simulator) and return stdout."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout


# ---------------------------------------------------------------------- options and policy
@pytest.mark.parametrize("text,want", [("cpu", ("cpu", None)), ("cuda", ("cuda", None)),
                                       ("cuda:3", ("cuda", 3)), ("CUDA:1", ("cuda", 1))])
def test_parse_device(text, want):
    assert device.parse_device(text) == want


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "tpu:0", 0, None])
def test_unknown_device_strings(bad):
    with pytest.raises(ValueError, match="is not 'cpu', 'cuda' or 'cuda:N'"):
        device.staging_policy("numpy", bad)


def test_unknown_framework():
    with pytest.raises(ValueError, match=r"framework='tensorflow' is not one of \('numpy', "):
        device.staging_policy("tensorflow")


def test_framework_not_installed_names_the_extra(monkeypatch):
    class Missing(device.NumpyAdapter):
        module = "no_such_module_for_eophis_tests"
    monkeypatch.setitem(device.ADAPTERS, "missing", Missing)
    monkeypatch.setitem(device.EXTRAS, "missing", "pip install 'eophis_hpc[missing]'")
    with pytest.raises(ImportError, match=r"needs no_such_module_for_eophis_tests, which is not "
                                          r"installed here .*pip install 'eophis_hpc\[missing\]'"):
        device.staging_policy("missing")


@pytest.mark.skipif(HAS["cupy"], reason="cupy is installed: its absence cannot be tested here")
def test_cupy_not_installed():
    with pytest.raises(ImportError, match=r"eophis_hpc\[cupy\]"):
        eh.Tunnel(eh.Grid(nx=8, ny=6), exchanges=[eh.Exchange(inputs=["u"])], framework="cupy",
                  device="cuda")


@needs("cupy")
def test_cupy_on_the_cpu_is_refused():
    with pytest.raises(ValueError, match="CuPy arrays live on a GPU"):
        device.staging_policy("cupy", "cpu")


def test_numpy_on_a_gpu_is_refused():
    with pytest.raises(ValueError, match="NumPy arrays live in host memory"):
        device.staging_policy("numpy", "cuda")


@needs("torch")
def test_no_gpu_says_what_was_checked():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match=r"device='cuda:1': no GPU 1 for torch here \(torch "
                                           r".*torch.cuda.is_available\(\)=False, 0 device"):
        device.staging_policy("torch", "cuda:1")


@pytest.mark.parametrize("fw", ["numpy", "numba", "torch", "jax"])
def test_cpu_policy_is_host(fw):
    if fw in HAS and not HAS[fw]:
        pytest.skip(f"{fw} is not installed")
    p = device.staging_policy(fw, "cpu")
    assert (p.mode, p.pinned, p.gpu) == ("host", False, False)
    assert p.describe().startswith(f"{fw} on cpu: host (")


def test_policy_and_detection_in_fresh_processes():
    """MPICH here is not CUDA-aware (asked through ctypes); the override wins; Numba's simulator
    is a GPU for the policy: staged through pinned memory, or direct with CUDA-aware MPI."""
    code = """
        from eophis_hpc import device
        print(device.mpi_cuda_aware())
        from mpi4py import MPI
        print(device.mpi_cuda_aware())
        print(device.staging_policy("numba", "cuda").describe())
        print(device.staging_policy("numba", "cuda", cuda_aware=True).mode)
    """
    out = run_python(code, SIM).splitlines()
    assert out[0] == "(None, 'mpi4py.MPI not loaded yet')"
    assert out[1].startswith("(False, 'MPIX_GPU_query_support(CUDA)=0 in ") or \
        out[1].startswith("(False, 'MPIX_Query_cuda_support()=0 in "), out[1]
    assert out[2].startswith("numba on cuda:0: staged, pinned host buffers (MPI is not "
                             "CUDA-aware"), out[2]
    assert "CUDA simulator" in out[2]
    assert out[3] == "direct"
    forced = run_python("from eophis_hpc import device\n"
                        "print(device.mpi_cuda_aware())\n"
                        "print(device.staging_policy('numba', 'cuda').mode)",
                        dict(SIM, EOPHIS_HPC_CUDA_AWARE_MPI="1")).splitlines()
    assert forced == ["(True, 'EOPHIS_HPC_CUDA_AWARE_MPI=1')", "direct"]


# ---------------------------------------------------------------------- tunnel options
def _tunnel(**kw):
    ex = [eh.Exchange(inputs=["u", "v"], outputs=["fu"], levels=2),
          eh.Exchange(inputs=["mask"], static=True)]
    return eh.Tunnel(eh.Grid(nx=8, ny=6), halo=1, exchanges=kw.pop("exchanges", ex), **kw)


@pytest.mark.parametrize("kw,err,msg", [
    ({"chunks": 0}, ValueError, "chunks must be a positive integer, got 0"),
    ({"chunks": True}, ValueError, "chunks must be a positive integer"),
    ({"stack": "2x"}, ValueError, "stack must be True, False or a keyword name"),
    ({"land": "u"}, ValueError, "land='u' must name a static input field"),
    ({"land": "sst"}, KeyError, "Tunnel: land: unknown field 'sst'"),
    ({"chunks": 2, "transport": "carrier-pigeon"}, ValueError, "transport='carrier-pigeon' is not"),
    ({"device": "gpu"}, ValueError, "device='gpu' is not"),
])
def test_tunnel_option_errors(kw, err, msg):
    with pytest.raises(err, match=msg.replace("(", r"\(").replace(")", r"\)")):
        _tunnel(**kw)


def test_exchange_stack_option():
    ex = eh.Exchange(inputs=["u", "v"], stack=True)
    assert ex.stack_name() == "u_v" and ex.stack_name(True) == "u_v"
    assert eh.Exchange(inputs=["u", "v"]).stack_name() is None
    assert eh.Exchange(inputs=["u", "v"]).stack_name(True) == "u_v"
    assert eh.Exchange(inputs=["u", "v"], stack="x").stack_name() == "x"
    assert eh.Exchange(inputs=["u", "v"], stack=False).stack_name(True) is None
    assert eh.Exchange.from_dict(ex.to_dict()).stack is True
    with pytest.raises(ValueError, match="stack must be True, False, None or a keyword name"):
        eh.Exchange(inputs=["u"], stack="a b")


def test_tile_views_remap_without_copies():
    batch = np.arange(3 * 2 * 2 * 2, dtype=np.float32).reshape(3, 2, 2, 2)
    rows = TileRows(batch, [2, None, 0])
    assert rows[0] is not None and np.shares_memory(rows[0], batch)
    assert rows[1] is None and np.array_equal(rows[2], batch[0])
    chunks = ChunkRows([(0, 2, batch[:2]), (2, 3, batch[2:])])
    assert np.shares_memory(chunks[2], batch) and np.array_equal(chunks[2], batch[2])
    spare = np.zeros((2, 2, 2), np.float32)
    assert TileRows(chunks, [None, 2], spare)[0] is spare
    with pytest.raises(IndexError):
        chunks[3]


@needs("jax")
def test_jax_float64_needs_x64():
    with pytest.raises(ValueError, match="jax_enable_x64"):
        from eophis_hpc.protocol.schedule import Schedule
        from eophis_hpc.staging import Feed
        from eophis_hpc.runtime.timings import Timings
        sched = Schedule([eh.Exchange(inputs=["u"])])
        Feed(sched, [0], [eh.Box(0, 4, 0, 4)], (4, 4), 0, None,
             device.staging_policy("jax"), 1, False, None, 0.0, Timings())


# ---------------------------------------------------------------------- device path on CPU
def test_device_kernels_match_the_reference_in_the_cuda_simulator():
    """Numba CUDA unpack (with float64 -> float32 cast, fold reversal and sign), pack and fill
    against the NumPy reference, for the runs of real plans (T- and F-pivot folds, cyclic),
    given Numba device arrays and fake ``__cuda_array_interface__`` arrays over host memory."""
    code = """
        import numpy as np
        import eophis_hpc as eh
        from eophis_hpc.device import HostCudaArray
        from eophis_hpc.kernels import numpy_ref as ref
        from eophis_hpc.device import device_backend
        from numba import cuda
        dk = device_backend()
        rng = np.random.default_rng(5)
        n = 0
        for g in (eh.Grid(nx=14, ny=10, east_west="cyclic", north="fold", pivot="T", point="V"),
                  eh.Grid(nx=13, ny=9, east_west="cyclic", north="fold", pivot="F"),
                  eh.Grid(nx=12, ny=8, east_west="cyclic", south="cyclic", north="cyclic")):
            src, dst = eh.Decomposition.blocks(g, 2, 2), eh.Decomposition.auto(g, 3)
            plan = eh.Plan(g, src, dst, 3)
            for (s, d) in plan.pairs:
                runs, nz = plan.unpack_runs(s, d), 3
                m = int(np.sum(runs[:, 2] * runs[:, 3])) * nz
                buf = rng.standard_normal(m)
                b = dst.boxes[d]
                shp = (nz, b.j1 - b.j0 + 6, b.i1 - b.i0 + 6)
                want = np.zeros(shp, np.float32)
                ref.unpack(buf, want, runs, -1.0)
                ref.fill(want, plan.fill_rects(d), 7.0)
                got = cuda.to_device(np.zeros(shp, np.float32))
                dk.unpack(cuda.to_device(buf), got, runs, -1.0)
                dk.fill(got, plan.fill_rects(d), 7.0)
                assert np.array_equal(got.copy_to_host(), want), (g, s, d)
                fake = HostCudaArray(np.zeros(shp, np.float32))   # CAI over host memory
                dk.unpack(HostCudaArray(buf), fake, runs, -1.0)
                dk.fill(fake, plan.fill_rects(d), 7.0)
                assert np.array_equal(fake.host, want)
                pr = plan.pack_runs(s, d)
                sb = src.boxes[s]
                a = rng.standard_normal((nz, sb.j1 - sb.j0, sb.i1 - sb.i0))
                k = int(np.sum(pr[:, 2] * pr[:, 3])) * nz
                w = np.empty(k, np.float32)
                ref.pack(a, pr, w)
                gb = cuda.device_array(k, np.float32)
                dk.pack(cuda.to_device(a), pr, gb)
                assert np.array_equal(gb.copy_to_host(), w)
                n += 1
        print(n)
    """
    assert int(run_python(code, SIM)) > 10


def test_mpi4py_takes_fake_device_buffers():
    """mpi4py's CUDA-array-interface buffer path (what CUDA-aware receives use), driven with a
    fake device array over host memory on COMM_SELF, persistent requests as the tunnel uses."""
    code = """
        import numpy as np
        from mpi4py import MPI
        from eophis_hpc.device import HostCudaArray, mpi_buffer
        src = np.arange(10, dtype=np.float32)
        dst = HostCudaArray(np.zeros(10, np.float32))
        comm = MPI.COMM_SELF
        r = comm.Recv_init([mpi_buffer(dst)[2:7], MPI.FLOAT], 0, 5)
        s = comm.Send_init([HostCudaArray(src[2:7]), MPI.FLOAT], 0, 5)
        MPI.Prequest.Startall([r, s]); MPI.Request.Waitall([r, s])
        assert np.array_equal(dst.host[2:7], src[2:7]) and not dst.host[:2].any()
        r.Free(); s.Free()
        print("ok")
    """
    assert run_python(code).strip() == "ok"


# ---------------------------------------------------------------------- coupled runs
GRID = {"nx": 30, "ny": 20, "east_west": "cyclic", "north": "fold", "pivot": "T"}
EXCHANGES = [
    {"inputs": ["u", "v"], "outputs": ["fu", "fv"], "levels": 3, "signs": {"u": -1, "v": -1},
     "point": "V"},
    {"inputs": ["t"], "outputs": ["ft"], "levels": 1, "every": 2, "dtype": "float32"},
    {"inputs": ["mask"], "static": True},
]
# tiles 6 on 2 workers: worker 0 owns tiles 0-2 (j < 10), worker 1 tiles 3-5
LAND_ONE_TILE_LEFT = [0, 10, 0, 20]   # worker 0 keeps tile 2 only
LAND_WHOLE_WORKER = [0, 10, 0, 30]    # worker 0 has no sea tile at all

CASES = {
    # name: (config, env, framework needed)
    "numpy-f64-stack-datatype": ({"strategy": "datatype", "stack_ex0": True}, {}, None),
    "torch-f32-chunks-land": ({"framework": "torch", "dtype": "float32", "chunks": 2,
                               "land_rect": LAND_ONE_TILE_LEFT}, {}, "torch"),
    "torch-f64-router-chunks-emptyworker": ({"framework": "torch", "dtype": "float64",
                                             "chunks": 2, "router": True, "strategy": "datatype",
                                             "land_rect": LAND_WHOLE_WORKER}, {}, "torch"),
    "jax-f32-chunks-stack": ({"framework": "jax", "dtype": "float32", "chunks": 3,
                              "stack": True, "strategy": "datatype"}, {}, "jax"),
    "numba-sim-staged": ({"framework": "numba", "device": "cuda", "dtype": "float32",
                          "chunks": 2, "land_rect": LAND_ONE_TILE_LEFT, "stack_ex0": True,
                          "simulator": True}, SIM, None),
    "numba-sim-direct": ({"framework": "numba", "device": "cuda", "dtype": "float32",
                          "chunks": 2, "land_rect": LAND_ONE_TILE_LEFT, "simulator": True},
                         dict(SIM, EOPHIS_HPC_CUDA_AWARE_MPI="1"), None),
}
EXPECT = {"numpy-f64-stack-datatype": ["numpy on cpu: host", "'u': packed strategy (stacked "
                                       "in 'u_v')"],
          "torch-f32-chunks-land": ["torch on cpu: host", "chunks=2; land tiles left out"],
          "torch-f64-router-chunks-emptyworker": ["'fu': packed strategy (land tiles left out)"],
          "jax-f32-chunks-stack": ["jax on cpu: host", "'fu': packed strategy (outputs read "
                                   "chunk by chunk)"],
          "numba-sim-staged": ["numba on cuda:0: staged, pinned host buffers", "phases: d2h "
                               "device h2d model"],
          "numba-sim-direct": ["numba on cuda:0: direct (CUDA-aware MPI"]}


def case_config(name: str, cases: dict = CASES) -> tuple[dict, dict]:
    """The device_check.py config (2 model ranks, 2 workers, 6 tiles) and environment."""
    cfg, env, _ = cases[name]
    cfg = dict(cfg)
    exchanges = json.loads(json.dumps(EXCHANGES))
    if cfg.pop("stack_ex0", False):
        exchanges[0]["stack"] = True
    base = {"seed": 7, "grid": GRID, "model_blocks": [2, 1], "halo": 2, "steps": 3,
            "strategy": "packed", "tiles": 6, "workers": 2, "exchanges": exchanges}
    return dict(base, **cfg), env


@pytest.mark.mpi
@pytest.mark.parametrize("name", list(CASES))
def test_model_sees_reference_tiles_and_ranks_get_the_global_result(tmp_path, name):
    from mpi_util import run_app
    need = CASES[name][2]
    if need and not HAS[need]:
        pytest.skip(f"{need} is not installed ({device.EXTRAS[need]})")
    cfg, env = case_config(name)
    res = run_app(tmp_path, cfg, 2, 2, timeout=120, app="device_check.py", env=env)
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    assert res.stdout.count(": OK") == 4, res.stdout
    for text in EXPECT[name]:
        assert text in res.stdout, res.stdout


def test_static_exchange_with_outputs_uses_the_land_rows():
    """A static exchange with outputs is called once on the static batches as the model sees
    them (land rows only); land tiles send the fill value back."""
    from eophis_hpc.protocol.schedule import Schedule
    from eophis_hpc.runtime.timings import Timings
    from eophis_hpc.staging import Feed
    sched = Schedule([eh.Exchange(inputs=["mask", "depth"], outputs=["area"], static=True),
                      eh.Exchange(inputs=["u"], outputs=["fu"])])
    boxes = [eh.Box(0, 4, 0, 4), eh.Box(0, 4, 4, 8), eh.Box(4, 8, 0, 4)]
    feed = Feed(sched, [5, 6, 7], boxes, (6, 6), 1, None, device.staging_policy("numpy"), 2,
                False, "mask", -1.0, Timings())
    feed.recv_target("mask")[...] = 1.0
    feed.recv_target("mask")[1, :, 1:5, 1:5] = 0.0      # tile 6 is land (its halo is not)
    feed.recv_target("depth")[...] = np.arange(3)[:, None, None, None]
    feed.static_received(0)
    assert feed.global_tiles(0, feed.n_rows()).tolist() == [5, 7]
    assert feed.ranges() == [(0, 1), (1, 2)]
    seen = []

    def call(kwargs, r0, r1):
        seen.append((r0, r1, kwargs["depth"][:, 0, 0, 0].tolist()))
        return {"area": kwargs["depth"][:, :, 1:-1, 1:-1] + 10.0}

    (target, offset), = feed.run(["mask", "depth"], call, sched.outputs_of(0)).values()
    assert seen == [(0, 2, [0.0, 2.0])] and offset == (0, 0)
    assert [float(target[k][0, 0, 0]) for k in range(3)] == [10.0, -1.0, 12.0]
    assert feed.recv_target("u")[1] is None and feed.recv_target("u").array.shape[0] == 2


@needs("torch")
@pytest.mark.parametrize("land", [False, True])
def test_staged_orchestration_with_torch_on_cpu_streams(monkeypatch, land):
    """The ``staged`` path (chunked copies queued on one stream, the model on chunk k after
    chunk k's event, outputs back on a second stream into host buffers) with the torch adapter
    whose CUDA calls are replaced by CPU ones: same outputs with 1 and 3 chunks, events in the
    order the overlap needs, land tiles sending the fill value."""
    import torch

    from eophis_hpc.protocol.schedule import Schedule
    from eophis_hpc.runtime.timings import Timings
    from eophis_hpc.staging import Feed
    log = []

    class CpuStreams(device.TorchAdapter):
        def __init__(self, index):
            device.Adapter.__init__(self, index)
            self.torch, self.dev = torch, torch.device("cpu")

        def host_empty(self, shape, dtype, pinned=False):
            return device.aligned_empty(shape, dtype)

        def stream(self):
            return f"s{len(log)}"

        def current_stream(self):
            return "compute"

        def event(self):
            return {}

        def record(self, event, stream):
            event["n"] = len(log)
            log.append(("record", stream))

        def wait(self, stream, event):
            log.append(("wait", stream, event["n"]))

        def synchronize(self, stream):
            log.append(("sync", stream))

        def elapsed_ms(self, start, end):
            return 1.0

        def h2d(self, dst, src, stream):
            dst.copy_(torch.from_numpy(src))
            log.append(("h2d", stream))

        def d2h(self, dst, src, stream):
            torch.from_numpy(dst).copy_(src)
            log.append(("d2h", stream))

    monkeypatch.setitem(device.ADAPTERS, "torch", CpuStreams)
    pol = device.Policy("torch", "cuda:0", "staged", True, False, "test")
    sched = Schedule([eh.Exchange(inputs=["u", "v"], outputs=["fu"], levels=2),
                      eh.Exchange(inputs=["mask"], static=True)])
    boxes = [eh.Box(0, 4, 4 * k, 4 * k + 4) for k in range(4)]
    results = {}
    for chunks in (1, 3):
        log.clear()
        feed = Feed(sched, [0, 1, 2, 3], boxes, (6, 6), 1, np.float32, pol, chunks, False,
                    "mask" if land else None, 9.0, Timings())
        feed.recv_target("mask")[...] = 1.0
        if land:
            feed.recv_target("mask")[2, :, 1:5, 1:5] = 0.0
        feed.static_received(1)
        rng = np.random.default_rng(3)
        for name in ("u", "v"):
            tgt = feed.recv_target(name)
            for k in range(4):
                if tgt[k] is not None:
                    tgt[k][...] = rng.standard_normal(tgt[k].shape)

        def model(kwargs, r0, r1):
            assert isinstance(kwargs["u"], torch.Tensor) and kwargs["u"].shape[0] == r1 - r0
            log.append(("model", r0, r1))
            return {"fu": (kwargs["u"] - 2 * kwargs["v"])[:, :, 1:-1, 1:-1]}

        (target, offset), = feed.run(["u", "v"], model, sched.outputs_of(0)).values()
        results[chunks] = np.stack([np.asarray(target[k]) for k in range(4)])
        assert offset == (0, 0)
        h2d = [i for i, e in enumerate(log) if e[0] == "h2d"]
        models = [i for i, e in enumerate(log) if e[0] == "model"]
        n = len(feed.ranges())
        assert len(h2d) == 2 * n and len(models) == n
        assert max(h2d) < min(models)  # every copy is queued before the first model call
        for c, i in enumerate(models):  # the model on chunk c waits for chunk c's event
            assert log[i - 2][0] == "wait" and log[i - 2][1] == "compute"
        assert log[-1] == ("sync", log[-2][1]) and log[-2][0] == "record"
        assert feed.timings.count["h2d"] == feed.timings.count["d2h"] == 1
    assert np.array_equal(results[1], results[3])
    if land:
        assert (results[1][2] == 9.0).all() and not (results[1][[0, 1, 3]] == 9.0).any()
