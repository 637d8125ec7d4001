"""The OASIS side of ``eophis-hpc info`` and ``eophis-hpc bench --only oasis``: which MPI library
mpi4py loads, whether pyoasis imports over the same one (a second MPI library is named), the
section's skip with its reason, its figures, and (where pyoasis can run) the measurement of the
four paths in one run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from eophis_hpc import fortran
from eophis_hpc.bench import oasis_probe
from eophis_hpc.info import oasis_environment

from test_bench_cli import bench, check_pytest_benchmark_layout

HERE = oasis_environment()
NO_OASIS = HERE["problem"] or ""


def fake_pyoasis(tmp_path, body: str) -> dict:
    """An environment whose ``import pyoasis`` runs ``body``."""
    pkg = tmp_path / "fake" / "pyoasis"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(body)
    path = os.pathsep.join(filter(None, [str(pkg.parent), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def probe_in(env: dict) -> dict:
    code = ("import json; from eophis_hpc.info import oasis_environment; "
            "print('RESULT ' + json.dumps(oasis_environment()))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, **env))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.split("RESULT ", 1)[1])


def test_info_names_the_mpi_library_mpi4py_loads():
    assert HERE["mpi"] and HERE["mpi_libs"], HERE
    assert all(os.path.isfile(p) for p in HERE["mpi_libs"])
    res = subprocess.run([sys.executable, "-m", "eophis_hpc.cli", "info"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"(mpi4py loads {HERE['mpi_libs'][0]}" in res.stdout
    assert "\n  pyoasis  " in res.stdout


def test_a_pyoasis_that_does_not_import_is_named(tmp_path):
    env = probe_in(fake_pyoasis(tmp_path, "raise ImportError('liboasis.cbind.so: cannot open')\n"))
    assert "pyoasis" not in env and "liboasis.cbind.so: cannot open" in env["pyoasis_error"]
    assert env["problem"].startswith("pyoasis does not import")


def test_a_second_mpi_library_is_named_with_the_fix(tmp_path):
    """A pyoasis built against another MPI than mpi4py's (here: a module loading the system
    MPICH behind mpifort while mpi4py loads the wheel's) is reported, not run."""
    wrapper = next((w for w in ("mpifort.mpich", "mpifort") if shutil.which(w)), None)
    if wrapper is None:
        pytest.skip("no mpifort here: no second MPI library to load")
    other = os.path.realpath(fortran.libmpi_of(wrapper))
    if other in HERE["mpi_libs"]:
        pytest.skip(f"mpi4py already loads {other} here (MPI4PY_LIBMPI): no mismatch to make")
    env = probe_in(fake_pyoasis(tmp_path, f"import ctypes\nctypes.CDLL({other!r})\n"))
    assert env["oasis_mpi_libs"] == [other]
    assert f"pyoasis loads {other} but mpi4py loaded" in env["problem"]
    assert "eophis-hpc fortran --env mpifort" in env["problem"]


def test_figures_and_table_are_ratios_of_the_same_run():
    samples = {"pyoasis": [0.010, 0.012, 0.011], "pyoasis_halo": [0.013] * 3,
               "eophis_oasis": [0.0195, 0.0195], "eophis_mpi": [0.004, 0.002, 0.003]}
    row = {"config": oasis_probe.configs("smoke")[0], "samples": samples,
           "raw_samples": [0.001], "bytes": {p: 1000 for p in oasis_probe.PATHS}}
    f = oasis_probe.figures(row)
    assert f["median_s"]["pyoasis"] == 0.011 and f["median_s"]["eophis_mpi"] == 0.003
    assert f["oasis_over_halo"] == pytest.approx(1.5)
    assert f["pyoasis_over_mpi"] == pytest.approx(0.011 / 0.003)
    table = "\n".join(oasis_probe.markdown([row], ""))
    assert "| 720x603 nz1 f64 h1 | 2:1 | 4 x 1 | 11 | 13 | 19.5 | 3 | 1 | 1.50 | 1.77 | 3.7 | 6.5 |" \
        in table
    names = {e["name"] for e in oasis_probe.entries([row])}
    assert names == {f"test_oasis_roundtrip[eORCA05-nz1-f64-h1-P2Q1-{p}]"
                     for p in oasis_probe.PATHS}
    assert oasis_probe.markdown([], "skipped: why") == ["skipped: why"]


def test_bench_oasis_skips_with_the_reason_without_pyoasis(tmp_path):
    out = tmp_path / "report"
    res = bench("--smoke", "--only", "oasis", "--out", str(out),
                env=fake_pyoasis(tmp_path, "raise ImportError('no OASIS build here')\n"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[oasis] skipped: pyoasis does not import (ImportError: no OASIS build here)" in res.stdout
    text = (out / "summary.md").read_text()
    assert "## OASIS\n\nskipped: pyoasis does not import" in text
    assert "x OASIS" not in text  # no comparison with published figures any more


@pytest.mark.mpi
@pytest.mark.skipif(bool(NO_OASIS), reason=f"the OASIS section cannot run here: {NO_OASIS}")
def test_bench_oasis_measures_four_paths_in_one_run(tmp_path):
    out = tmp_path / "report"
    res = bench("--smoke", "--only", "oasis", "--out", str(out), timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for path in oasis_probe.PATHS:
        assert f"eORCA05-nz1-f64-h1-P2Q1 {path} (run 1): " in res.stdout, res.stdout
    doc = json.loads((out / "benchmarks.json").read_text())
    check_pytest_benchmark_layout(doc)
    got = {b["params"]["path"]: b for b in doc["benchmarks"]}
    assert set(got) == set(oasis_probe.PATHS)
    assert all(b["stats"]["rounds"] == 4 and b["stats"]["median"] > 0 for b in got.values())
    assert got["eophis_oasis"]["extra_info"]["ratio_to_pyoasis_halo"] > 0
    text = (out / "summary.md").read_text()
    assert "| 720x603 nz1 f64 h1 | 2:1 | 4 x 1 |" in text
