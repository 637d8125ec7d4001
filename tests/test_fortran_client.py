"""The Fortran/C client (ext/fortran) against the Python workers, on the MPI library of the
Fortran compiler wrapper (the system MPICH in CI), with mpi4py pointed at the same library.

toy_model.F90 checks in Fortran, point by point, that what comes back is the exact stencil of
the global field under the grid's boundary conditions; the workers check every tile they
receive against the reference; the Python-client twin gives byte-identical results; smoke.c
goes through the C header. Without an MPI Fortran compiler these tests skip (CI installs one
and sets EOPHIS_HPC_REQUIRE_FORTRAN=1, which turns the skip into a failure).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from eophis_hpc import fortran

pytestmark = pytest.mark.mpi

HERE = Path(__file__).parent
APP = HERE / "apps" / "fortran_workers.py"
WRAPPERS = ("mpifort.mpich", "mpifort", "mpif90")


def _missing(reason: str):
    if os.environ.get("EOPHIS_HPC_REQUIRE_FORTRAN") == "1":
        pytest.fail(f"{reason} (EOPHIS_HPC_REQUIRE_FORTRAN=1)")
    pytest.skip(reason)


def _run(cmd, cwd, what, timeout=180, env=None):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        pytest.fail(f"{what} failed ({out.returncode}): {' '.join(map(str, cmd))}\n"
                    f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def toolchain(tmp_path_factory):
    """The client, toy_model (real64 and real32) and smoke.c compiled with the MPI wrapper."""
    wrapper = next((w for w in WRAPPERS if shutil.which(w)), None)
    if wrapper is None:
        _missing("no MPI Fortran compiler wrapper (mpifort) on PATH; on Debian: "
                 "apt-get install gfortran mpich libmpich-dev")
    suffix = wrapper.split(".", 1)[1] if "." in wrapper else ""
    cc = shutil.which(f"mpicc.{suffix}" if suffix else "mpicc")
    build = tmp_path_factory.mktemp("fortran")
    # the installed copy of the module: what users compile
    _run([wrapper, "-O2", "-c", str(fortran.source()), "-o", "eophis_hpc.o"], build,
         "compiling the client")
    for wp in (8, 4):
        _run([wrapper, "-O2", f"-DWP={wp}", str(HERE / "fortran" / "toy_model.F90"),
              "eophis_hpc.o", "-o", f"toy{wp}"], build, f"compiling toy_model (real({wp}))")
    if cc is None:
        _missing(f"no MPI C compiler wrapper next to {wrapper}")
    _run([cc, "-O2", "-Wall", "-Werror", f"-I{fortran.header().parent}", "-c",
          str(HERE / "fortran" / "smoke.c"), "-o", "smoke.o"], build, "compiling smoke.c")
    _run([wrapper, "smoke.o", "eophis_hpc.o", "-o", "smoke"], build, "linking smoke.c")
    env = dict(os.environ, PYTHONUNBUFFERED="1", EOPHIS_HPC_TIMEOUT="60",
               **fortran.worker_env(fortran.libmpi_of(wrapper), shim_root=build / "libmpi"))
    return SimpleNamespace(wrapper=wrapper, build=build, mpiexec=str(fortran.mpiexec_of(wrapper)),
                           env=env)


def launch(tc, model_cmd: list[str], p: int, cfg: dict, q: int, tmp_path, timeout=150,
           nodes=None, env=None):
    """``mpiexec`` of ``p`` model and ``q`` worker ranks; ``nodes``: ``(model, worker)`` lists
    of one node name per rank, each rank then its own MPMD block with EOPHIS_HPC_NODE_NAME."""
    path = tmp_path / "workers.json"
    path.write_text(json.dumps(cfg))
    worker_cmd = [sys.executable, str(APP), "worker", str(path)]
    if nodes is None:
        cmd = [tc.mpiexec, "-n", str(p), *model_cmd, ":", "-n", str(q), *worker_cmd]
    else:
        blocks = [(n, model_cmd) for n in nodes[0]] + [(n, worker_cmd) for n in nodes[1]]
        assert len(nodes[0]) == p and len(nodes[1]) == q, nodes
        cmd = [tc.mpiexec]
        for k, (node, block_cmd) in enumerate(blocks):
            cmd += ([":"] if k else []) + ["-n", "1", "-env", "EOPHIS_HPC_NODE_NAME", node,
                                           *block_cmd]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**tc.env, **(env or {})}, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the job did not end within {timeout} s: {' '.join(cmd)}\n{exc.stdout}\n"
                    f"{exc.stderr}")


def toy_args(tc, case: dict, outdir: Path) -> list[str]:
    g = case["grid"]
    args = [str(tc.build / f"toy{8 if case['dtype'] == 'float64' else 4}"), str(g["nx"]),
            str(g["ny"]), g.get("east_west", "closed"), g.get("south", "closed"),
            g.get("north", "closed"), g.get("pivot", "T"), str(case["px"]), str(case["py"]),
            str(case["model_halo"]), str(case["levels"]), str(case["steps"]),
            str(case["every_v"]), str(outdir)]
    if any(k in case for k in ("lag_u", "lag_v", "start", "restart_in", "restart_out")):
        args += [str(case.get("lag_u", 0)), str(case.get("lag_v", 0)), str(case.get("start", 0)),
                 case.get("restart_in") or "-", case.get("restart_out") or "-"]
    return args


def case(grid, px, py, model_halo, levels, dtype, workers, halo=1, tiles=None, strategy=None,
         steps=4, every_v=2):
    return {"grid": grid, "px": px, "py": py, "model_halo": model_halo, "levels": levels,
            "dtype": dtype, "workers": workers, "halo": halo, "tiles": tiles,
            "strategy": strategy, "steps": steps, "every_v": every_v}


ORCA2 = {"nx": 180, "ny": 148, "east_west": "cyclic", "south": "closed", "north": "fold",
         "pivot": "T"}
CASES = {
    "fold-T 2:1 nz1 f64": case({"nx": 24, "ny": 18, "east_west": "cyclic", "north": "fold",
                               "pivot": "T"}, 2, 1, 1, 1, "float64", 1),
    "fold-F 4:2 nz3 f32 halo2": case({"nx": 30, "ny": 20, "east_west": "cyclic",
                                      "north": "fold", "pivot": "F"}, 2, 2, 2, 3, "float32", 2,
                                     halo=2, tiles=4),
    "closed 3:2 nz2 f64 packed": case({"nx": 26, "ny": 15}, 1, 3, 0, 2, "float64", 2,
                                      strategy="packed", every_v=3),
    "cyclic 3:1 nz1 f32": case({"nx": 21, "ny": 16, "east_west": "cyclic", "south": "cyclic",
                                "north": "cyclic"}, 3, 1, 1, 1, "float32", 1),
    "ORCA2 4:2 nz5 f64 nn_hls=1": case(ORCA2, 2, 2, 1, 5, "float64", 2, steps=3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fortran_model_gets_exact_stencil(toolchain, tmp_path, name):
    c = CASES[name]
    out = launch(toolchain, toy_args(toolchain, c, tmp_path), c["px"] * c["py"], c,
                 c["workers"], tmp_path)
    assert out.returncode == 0, f"{name}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "toy_model: PASS" in out.stdout
    for w in range(c["workers"]):
        assert f"worker {w}: OK after" in out.stdout


def test_fortran_model_sends_notes_to_the_group_leaders(toolchain, tmp_path):
    """EOPHIS_HPC_NOTE_GROUP=2 with 2 workers: the Fortran root sends each note to worker 0
    only, which passes it on; a client that still sent to every worker would give worker 1
    every note twice and the run would fail."""
    c = CASES["fold-F 4:2 nz3 f32 halo2"]
    out = launch(toolchain, toy_args(toolchain, c, tmp_path), c["px"] * c["py"], c,
                 c["workers"], tmp_path, env={"EOPHIS_HPC_NOTE_GROUP": "2"})
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "toy_model: PASS" in out.stdout
    assert "worker 1: OK after" in out.stdout


@pytest.mark.parametrize("name", ["fold-T 2:1 nz1 f64", "fold-F 4:2 nz3 f32 halo2"])
def test_python_and_fortran_clients_agree_byte_for_byte(toolchain, tmp_path, name):
    """The same workers, the model side once in Fortran, once through the Python client."""
    c = dict(CASES[name], outdir=str(tmp_path))
    p = c["px"] * c["py"]
    out = launch(toolchain, toy_args(toolchain, c, tmp_path), p, c, c["workers"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps(c))
    out = launch(toolchain, [sys.executable, str(APP), "model", str(cfg)], p, c, c["workers"],
                 tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for r in range(p):
        f = (tmp_path / f"fortran_rank{r}.bin").read_bytes()
        py = (tmp_path / f"python_rank{r}.bin").read_bytes()
        assert len(f) > 0 and f == py, f"model rank {r}: the two clients' results differ"


def test_fortran_model_gets_the_node_aware_placement(toolchain, tmp_path):
    """Node names faked per rank: model rank 0 (the south half) on node a, rank 1 (north) on b;
    worker 0 on b, worker 1 on a. The Fortran client sends its ranks' node names, so each
    worker holds the tile of its own node (today's order would send nearly every byte across
    nodes), the results stay exact (checked point by point in Fortran, every received tile bit
    for bit against the reference on the workers), and the Python client on the same nodes gets
    the same assignment and byte-identical results."""
    grid = {"nx": 30, "ny": 20, "east_west": "cyclic", "north": "fold", "pivot": "T"}
    c = dict(case(grid, 1, 2, 1, 2, "float64", 2, tiles=[[0, 10, 0, 30], [10, 20, 0, 30]]),
             outdir=str(tmp_path))
    nodes = (["a", "b"], ["b", "a"])
    out = launch(toolchain, toy_args(toolchain, c, tmp_path), 2, c, 2, tmp_path, nodes=nodes)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "toy_model: PASS" in out.stdout
    for text in ("worker 0: my tiles [1]", "worker 1: my tiles [0]", "worker 0: OK after",
                 "worker 1: OK after"):
        assert text in out.stdout, f"{text!r} not in:\n{out.stdout[-3000:]}"
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps(c))
    out = launch(toolchain, [sys.executable, str(APP), "model", str(cfg)], 2, c, 2, tmp_path,
                 nodes=nodes)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "worker 0: my tiles [1]" in out.stdout and "worker 1: my tiles [0]" in out.stdout
    for r in range(2):
        f = (tmp_path / f"fortran_rank{r}.bin").read_bytes()
        py = (tmp_path / f"python_rank{r}.bin").read_bytes()
        assert len(f) > 0 and f == py, f"model rank {r}: the two clients' results differ"


def test_c_smoke_through_the_header(toolchain, tmp_path):
    cfg = {"grid": {"nx": 20, "ny": 12}, "halo": 1, "levels": 1, "dtype": "float64",
           "every_v": 1, "n_exchanges": 1}
    out = launch(toolchain, [str(toolchain.build / "smoke")], 2, cfg, 1, tmp_path)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "smoke: PASS" in out.stdout


def test_a_mismatch_reaches_every_rank_and_ends_the_job(toolchain, tmp_path):
    """The workers' tunnel has 2 levels, the Fortran model declares 1: the handshake error is
    given to the Fortran ranks (status and message) and the whole job ends non-zero."""
    c = case({"nx": 24, "ny": 18}, 2, 1, 0, 1, "float64", 1)
    workers = dict(c, levels=2)
    out = launch(toolchain, toy_args(toolchain, c, tmp_path), 2, workers, 1, tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "eh_enddef failed with status 3" in text
    assert "field 'u': the model declares levels=1, the workers' tunnel levels=2" in text


@pytest.mark.parametrize("strategy,what,needs", [
    ("shm", "shared-memory windows on each node", "MPI_Win_allocate_shared"),
    ("pipelined", "chunked messages", "pipeline_chunk"),
])
def test_paired_strategies_are_refused_with_what_they_would_take(toolchain, tmp_path, strategy,
                                                                  what, needs):
    """Workers on a strategy both sides must share and a Fortran model: the handshake refuses
    it with one message that says why and what to use instead; the whole job ends non-zero."""
    c = case({"nx": 24, "ny": 18}, 2, 1, 0, 1, "float64", 1, strategy=strategy)
    out = launch(toolchain, toy_args(toolchain, c, tmp_path), 2, c, 1, tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "eh_enddef failed with status 3" in text
    assert (f"the workers use strategy={strategy!r} ({what}), which the fortran client does "
            "not support") in text, text[-3000:]
    assert needs in text and "strategy='datatype'" in text


def test_a_silent_worker_times_out_with_its_rank_named(toolchain, tmp_path):
    """A worker that stops answering: eh_get gives up after EOPHIS_HPC_TIMEOUT, names the
    worker, and (no ierr) aborts the whole job instead of hanging."""
    c = case({"nx": 24, "ny": 18}, 2, 1, 1, 1, "float64", 1, steps=3)
    env = dict(toolchain.env, EOPHIS_HPC_TIMEOUT="3")
    tc = SimpleNamespace(**dict(vars(toolchain), env=env))
    out = launch(tc, toy_args(toolchain, c, tmp_path), 2, dict(c, stall_at=1), 1, tmp_path,
                 timeout=60)
    assert out.returncode != 0
    assert "eh_get('su'): no answer from worker(s) 0 after 3.0 s" in out.stdout + out.stderr


def test_meson_option_builds_library_and_pkg_config(toolchain, tmp_path):
    """-Dfortran=true: the shared library, module, header and a relocatable .pc file, and a
    model built from them alone (pkg-config) runs coupled."""
    meson = Path(sys.executable).parent / "meson"
    if not meson.exists() or shutil.which("pkg-config") is None:
        _missing("meson (pip install meson ninja) or pkg-config is not installed")
    root = HERE.parent
    env = dict(os.environ, FC=toolchain.wrapper,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    build, dest = tmp_path / "build", tmp_path / "dest"
    _run([str(meson), "setup", str(build), str(root), "-Dfortran=true",
          f"--prefix={tmp_path / 'prefix'}"], root, "meson setup", env=env)
    _run([str(meson), "compile", "-C", str(build), "eophis_hpc_client", "eophis_hpc_mod"], root,
         "meson compile", env=env)
    _run([str(meson), "install", "-C", str(build), "--no-rebuild", "--tags", "fortran-client",
          "--destdir", str(dest)], root, "meson install", env=env)
    pcs = list(dest.rglob("eophis_hpc_client.pc"))
    assert len(pcs) == 1, pcs
    client = pcs[0].parent
    for name in ("libeophis_hpc_client.so", "eophis_hpc.mod", "eophis_hpc.h", "eophis_hpc.f90"):
        assert (client / name).exists(), name
    flags = _run(["pkg-config", "--cflags", "--libs", "eophis_hpc_client"], tmp_path,
                 "pkg-config", env=dict(env, PKG_CONFIG_PATH=str(client))).stdout.split()
    assert f"-I{client}" in flags and "-leophis_hpc_client" in flags
    _run([toolchain.wrapper, "-DWP=8", str(HERE / "fortran" / "toy_model.F90"), *flags, "-o",
          "toy_pc"], tmp_path, "building toy_model with pkg-config")
    c = CASES["fold-T 2:1 nz1 f64"]
    args = toy_args(toolchain, c, tmp_path)
    out = launch(toolchain, [str(tmp_path / "toy_pc"), *args[1:]], 2, c, 1, tmp_path)
    assert out.returncode == 0 and "toy_model: PASS" in out.stdout, out.stderr[-3000:]


def test_run_mpi_uses_the_wrappers_launcher(toolchain, tmp_path):
    (tmp_path / "model").write_text("")
    (tmp_path / "model").chmod(0o755)
    (tmp_path / "closure.py").write_text("")    # run checks both exist, even for --dry-run
    out = _run([sys.executable, "-m", "eophis_hpc.cli", "run", "--mpi", toolchain.wrapper, "-n",
                "2", "-w", "1", "--dry-run", "./model", "closure.py"], tmp_path, "run --dry-run")
    assert out.stdout.split()[0] == toolchain.mpiexec


def test_a_fortran_model_that_stops_before_enddef_ends_the_job(toolchain, tmp_path):
    """With the default timeout the job ends within seconds, with the model's message."""
    import time
    tc = toolchain
    _run([tc.wrapper, "-O2", str(HERE / "fortran" / "early_stop.F90"),
          str(tc.build / "eophis_hpc.o"), f"-I{tc.build}", "-o", "early_stop"], tc.build,
         "compiling early_stop")
    env = {k: v for k, v in tc.env.items() if k != "EOPHIS_HPC_TIMEOUT"}
    cmd = [tc.mpiexec, "-n", "2", str(tc.build / "early_stop"), ":", "-n", "1", sys.executable,
           str(HERE / "apps" / "early.py"), "worker"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert res.returncode != 0 and time.monotonic() - t0 < 30
    assert "ocean: bad namelist, stopping before eh_enddef" in res.stdout + res.stderr


# ---------------------------------------------------------------------- lagged exchanges
LAGGED = dict(CASES["fold-F 4:2 nz3 f32 halo2"], lag_u=1, lag_v=2, steps=7)


@pytest.mark.parametrize("lags", [(1, 2), (3, 1)])
def test_fortran_lagged_exchanges_return_earlier_occurrences(toolchain, tmp_path, lags):
    """eh_get at occurrence n returns the stencil of occurrence n - lag (initial before),
    checked point by point in Fortran at every step."""
    c = dict(LAGGED, lag_u=lags[0], lag_v=lags[1])
    out = launch(toolchain, toy_args(toolchain, c, tmp_path), 4, c, c["workers"], tmp_path)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "toy_model: PASS (4 model ranks, 7 steps)" in out.stdout


def test_fortran_and_python_restarts_are_the_same_file(toolchain, tmp_path):
    """A Fortran run split in two by a restart passes the same per-step checks as the whole run,
    its restart is byte for byte the Python client's after the same steps, and each client
    restarts from the other's file."""
    c = dict(LAGGED, outdir=str(tmp_path))
    p = 4

    def fortran_run(**kw):
        case = dict(c, **kw)
        out = launch(toolchain, toy_args(toolchain, case, tmp_path), p, case, case["workers"],
                     tmp_path)
        assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        assert "toy_model: PASS" in out.stdout

    def python_run(**kw):
        case = dict(c, **kw)
        cfg = tmp_path / "model.json"
        cfg.write_text(json.dumps(case))
        out = launch(toolchain, [sys.executable, str(APP), "model", str(cfg)], p, case,
                     case["workers"], tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]

    fortran_run(steps=3, restart_out=str(tmp_path / "f3"))
    fortran_run(start=3, steps=4, restart_in=str(tmp_path / "f3"), restart_out=str(tmp_path / "f7"))
    python_run(steps=7, restart_out=str(tmp_path / "p7"))
    python_run(steps=3, restart_out=str(tmp_path / "p3"))
    fortran_run(start=3, steps=4, restart_in=str(tmp_path / "p3"), restart_out=str(tmp_path / "fp7"))
    python_run(start=3, steps=4, restart_in=str(tmp_path / "f3"), restart_out=str(tmp_path / "pf7"))
    for r in range(p):
        want = (tmp_path / f"p7_r{r:04d}.ehr").read_bytes()
        for other in ("f7", "fp7", "pf7"):
            assert (tmp_path / f"{other}_r{r:04d}.ehr").read_bytes() == want, (other, r)
        assert (tmp_path / f"f3_r{r:04d}.ehr").read_bytes() == \
            (tmp_path / f"p3_r{r:04d}.ehr").read_bytes()


def test_fortran_refuses_a_mismatching_restart(toolchain, tmp_path):
    c = dict(LAGGED, steps=2)
    out = launch(toolchain, toy_args(toolchain, dict(c, restart_out=str(tmp_path / "r")), tmp_path),
                 4, c, c["workers"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    again = dict(c, lag_u=2, start=2, restart_in=str(tmp_path / "r"))
    out = launch(toolchain, toy_args(toolchain, again, tmp_path), 4, again, again["workers"],
                 tmp_path, timeout=60)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "eh_enddef failed with status 6" in text
    assert (f"model rank 0: coupling restart {tmp_path}/r_r0000.ehr: field 'su' has lag=1 in the "
            "file, lag=2 in this run") in text
    (tmp_path / "r_r0002.ehr").write_bytes((tmp_path / "r_r0002.ehr").read_bytes()[:100])
    again = dict(c, start=2, restart_in=str(tmp_path / "r"))
    out = launch(toolchain, toy_args(toolchain, again, tmp_path), 4, again, again["workers"],
                 tmp_path, timeout=60)
    assert out.returncode != 0
    assert f"model rank 2: coupling restart {tmp_path}/r_r0002.ehr: truncated (100 bytes, the " \
        "number of records needs bytes 96..104)" in out.stdout + out.stderr
