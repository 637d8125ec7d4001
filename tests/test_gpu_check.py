"""``eophis-hpc gpu-check`` on a CPU-only machine: the no-GPU path (says so, every section
skipped with why, exit 0, both report files), the report files and exit codes for failures,
the byte-comparing sections run for real under Numba's CUDA simulator, and the coupled-run
program of the ``coupled`` section on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from eophis_hpc import gpucheck
from eophis_hpc.gpucheck.report import Report, Result


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "eophis_hpc.cli", "gpu-check", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def test_without_a_gpu_every_section_is_skipped_with_why(tmp_path):
    from eophis_hpc.gpucheck.environment import gpu_frameworks
    env = {"NUMBA_ENABLE_CUDASIM": "0"}
    if gpu_frameworks()[0]:
        pytest.skip("a GPU is present: tests/test_gpu.py runs gpu-check there")
    res = cli("--quick", "--out", str(tmp_path / "r"), env=env)
    assert res.returncode == 0, res.stderr
    assert "[gpu-check] no GPU here: " in res.stdout and "torch" in res.stdout
    data = json.loads((tmp_path / "r" / "gpu-check.json").read_text())
    assert [r["section"] for r in data["results"]] == list(gpucheck.SECTIONS)
    assert all(r["status"] == "skip" and r["detail"].startswith("no GPU here")
               for r in data["results"])
    assert data["counts"] == {"pass": 0, "fail": 0, "skip": len(gpucheck.SECTIONS)}
    assert set(data["environment"]) >= {"nvidia-smi", "cuda", "frameworks", "mpi",
                                        "XLA_PYTHON_CLIENT_PREALLOCATE", "node-local rank"}
    md = (tmp_path / "r" / "gpu-check.md").read_text()
    assert "**no GPU: nothing was checked**" in md and "| kernels | SKIP | no GPU here" in md


def test_report_files_and_exit_codes(tmp_path, monkeypatch, capsys):
    report = Report(environment={"gpu_frameworks": ["torch"], "mpi": {"library": "X | Y"}})
    report.add(Result("feed", "torch: identity", "pass", "bytes equal"))
    report.add(Result("feed", "torch: cropped", "fail", "3 values differ | x"))
    report.add(Result("bandwidth", "torch h2d", "skip", "no timings", {"ratio": None}))
    md, js = report.write(tmp_path / "new" / "folder")
    text = md.read_text()
    assert "**FAILED**: 1 passed, 1 failed, 1 skipped" in text
    assert "| torch: cropped | FAIL | 3 values differ \\| x |" in text and "## bandwidth" in text
    data = json.loads(js.read_text())
    assert data["counts"] == {"pass": 1, "fail": 1, "skip": 1}
    assert data["results"][2]["figures"] == {"ratio": None}
    with pytest.raises(ValueError, match="status must be one of"):
        Result("feed", "x", "ok")
    monkeypatch.setattr(gpucheck, "run", lambda quick: report)
    args = types.SimpleNamespace(quick=True, out=str(tmp_path / "o"))
    assert gpucheck.main(args) == 1
    assert "1 passed, 1 failed, 1 skipped" in capsys.readouterr().out
    report.results.pop(1)
    assert gpucheck.main(args) == 0
    afile = tmp_path / "a-file"
    afile.write_text("")
    assert gpucheck.main(types.SimpleNamespace(quick=True, out=str(afile))) == 2
    assert "cannot write the report" in capsys.readouterr().err


def test_sections_compare_bytes_under_the_cuda_simulator(tmp_path):
    """The kernels and feed sections, run for real on Numba's simulated GPU (the bandwidth
    section has no timings there and says so)."""
    res = cli("--quick", "--out", str(tmp_path),
              env={"NUMBA_ENABLE_CUDASIM": "1", "EOPHIS_HPC_GPU_CHECK_SIMULATOR": "1"})
    data = json.loads((tmp_path / "gpu-check.json").read_text())
    status = {(r["section"], r["name"]): r["status"] for r in data["results"]}
    assert res.returncode == 0, res.stdout[-3000:]
    assert status[("kernels", "numba")] == "pass"
    for case in ("identity", "cropped (non-contiguous)", "NaN-poisoned pool"):
        assert status[("feed", f"numba: {case}")] == "pass"
    assert status[("bandwidth", "numba h2d")] == "skip"
    assert status[("coupled", "torch")] == "skip" and data["counts"]["fail"] == 0


@pytest.mark.mpi
def test_coupled_section_program_on_the_cpu():
    """The coupled section's job (2 model ranks, 2 workers, exact results) with torch on the
    CPU: the same program the section launches on one GPU."""
    pytest.importorskip("torch")
    from eophis_hpc.gpucheck.coupled import coupled_run
    r = coupled_run("torch", "cpu", 120)
    assert r.status == "pass", r.detail
    assert r.detail.startswith("torch on cpu: host")
