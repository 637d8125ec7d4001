"""``eophis-hpc bench``: a run of the real code path with the fewest rounds (the hidden
``--smoke`` flag: ``--quick``'s sections, smaller) writes the report files and plots; the report
without matplotlib; the staging measurement's code path under Numba's CUDA simulator; bad
arguments."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

EXE = [sys.executable, "-m", "eophis_hpc.cli", "bench"]
PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ("bandwidth.png", "roundtrip.png", "step-split.png")


def bench(*args, env=None, timeout=240):
    return subprocess.run(EXE + list(args), capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else dict(os.environ, **env))


def check_pytest_benchmark_layout(doc: dict) -> None:
    """The keys ``pytest-benchmark compare`` reads."""
    assert set(doc) >= {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert doc["benchmarks"]
    for b in doc["benchmarks"]:
        assert set(b) >= {"group", "name", "fullname", "params", "param", "extra_info",
                          "options", "stats"}
        st = b["stats"]
        assert set(st) >= {"min", "max", "mean", "stddev", "rounds", "median", "iqr", "q1",
                           "q3", "iqr_outliers", "stddev_outliers", "outliers", "ld15iqr",
                           "hd15iqr", "ops", "total", "data", "iterations"}
        assert st["rounds"] == len(st["data"]) > 0 and st["min"] <= st["median"] <= st["max"]


@pytest.mark.mpi
def test_bench_writes_the_report(tmp_path):
    out = tmp_path / "report"
    res = bench("--smoke", "--out", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # progress: one line per kernel case and per MPI job, with its elapsed time
    assert "[kernels] unpack nz1" in res.stdout and "[1/2] eORCA05" in res.stdout
    timed = re.findall(r"\[\d+\.\d s[],]", res.stdout)
    # 4 kernel cases, plan, ping-pong, 2 round-trip jobs, 7 overlap jobs
    assert len(timed) == 2 * 2 + 1 + 1 + 2 + 7, res.stdout
    doc = json.loads((out / "benchmarks.json").read_text())
    check_pytest_benchmark_layout(doc)
    groups = {b["group"] for b in doc["benchmarks"]}
    assert "plan build" in groups and "raw MPI one way" in groups
    assert "overlap (model time per step)" in groups
    assert any(b["name"] == "test_overlap[lag1-Y/X=0.5]" for b in doc["benchmarks"])
    assert any(g.startswith("pack ") for g in groups)
    assert any(g.startswith("unpack ") for g in groups)
    names = {b["name"] for b in doc["benchmarks"]}
    for path in ("eophis", "raw", "naive"):
        assert f"test_roundtrip[eORCA05-nz1-f64-h10-packed-P1Q1-{path}]" in names
    cython = [b for b in doc["benchmarks"] if b["params"].get("method") == "cython"]
    assert cython and all(b["extra_info"]["ratio_to_copyto"] > 0 for b in cython)
    machine = json.loads((out / "machine.json").read_text())
    assert machine["cpu_count"] == os.cpu_count() and machine["eophis_hpc_info"]
    text = (out / "summary.md").read_text()
    for part in ("## Targets", "## Pack and unpack kernels", "/copyto", "x fancy", "## Plan build",
                 "## MPI round trips", "raw MPI ms", "exchange (wait+recv+send)", "## GPU staging",
                 "## OASIS", "## Overlap (lagged exchanges)", "| 1.5 | 2 | 3 |",
                 "lag 1, Y/X=0.5: step <=", "## Machine", "MPICH"):
        assert part in text, part
    try:
        import pyoasis  # noqa: F401
    except ImportError:
        assert "skipped: pyoasis" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "eophis_hpc[plot]" in text
    else:
        for name in PLOTS:
            assert (out / name).read_bytes()[:8] == PNG, name
            assert f"]({name})" in text
    pytest.importorskip("pytest_benchmark.cli")
    res = subprocess.run([sys.executable, "-c", "import sys; from pytest_benchmark.cli import "
                          "main; sys.argv[0] = 'pytest-benchmark'; main()", "compare",
                          str(out / "benchmarks.json")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "test_roundtrip" in res.stdout, res.stderr[-2000:]


def test_bench_without_matplotlib_says_how_to_install_it(tmp_path):
    blocker = tmp_path / "block" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib blocked by the test')\n")
    path = os.pathsep.join(filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "report"
    res = bench("--smoke", "--only", "plan", "--only", "oasis", "--out", str(out),
                env={"PYTHONPATH": path})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "pip install 'eophis_hpc[plot]'" in res.stdout
    assert "pip install 'eophis_hpc[plot]'" in (out / "summary.md").read_text()
    check_pytest_benchmark_layout(json.loads((out / "benchmarks.json").read_text()))
    assert (out / "machine.json").exists() and not list(out.glob("*.png"))


def test_staging_measurement_runs_under_the_cuda_simulator():
    """The code path of the GPU section (no timings there: the simulator has no events)."""
    code = ("from eophis_hpc.bench import staging\n"
            "fw, why = staging.gpu_framework()\n"
            "assert fw is None and 'simulator' in why, why\n"
            "r = staging.bandwidth('numba', 1, repeats=2)\n"
            "assert r['bytes'] > 0 and set(r) >= {'h2d', 'd2h'}, r\n"
            "print('ok', r['h2d']['ratio'])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]


def test_bench_rejects_bad_arguments(tmp_path):
    res = bench("--only", "magic")
    assert res.returncode == 2 and "invalid choice: 'magic'" in res.stderr
    res = bench("--timeout", "0")
    assert res.returncode == 2 and "expected a positive integer" in res.stderr
    res = bench("--quick", "--unknown")
    assert res.returncode == 2 and "unrecognized arguments: --unknown" in res.stderr
    afile = tmp_path / "a-file"
    afile.write_text("")
    res = bench("--quick", "--out", str(afile / "report"))
    assert res.returncode == 2 and "cannot write there" in res.stderr, res.stderr
    assert "[kernels]" not in res.stdout  # failed before measuring anything
    res = bench("--quick", "--out", str(afile))
    assert res.returncode == 2 and "exists and is not a folder" in res.stderr, res.stderr
