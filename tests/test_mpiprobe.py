"""eophis-hpc info --probe: the MPI library's round trips (contiguous, over an
intercommunicator, subarray, struct of subarrays) between two ranks, each checked to bring back
what went out, one line per kind with its ratio to contiguous."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mpi_util import mpiexec

pytestmark = pytest.mark.mpi


def test_info_probe_names_the_library_and_each_kind():
    res = subprocess.run([sys.executable, "-m", "eophis_hpc.cli", "info", "--probe"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert re.search(r"MPI probe MPICH Version: \S+: eORCA025 1 level\(s\) float64, halo 10", out)
    for kind in ("contiguous", "inter", "subarray", "struct"):
        assert re.search(rf"^\s+{kind}\s+[\d.]+ ms\s+[\d.]+x contiguous$", out, re.M), out


def test_probe_on_a_small_grid_checks_every_kind(tmp_path):
    cfg = tmp_path / "c.json"
    rec = tmp_path / "r.json"
    cfg.write_text(json.dumps({"grid": "ORCA2", "levels": 3, "halo": 2, "rounds": 2,
                               "dtype": "float32", "out": str(rec)}))
    res = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "eophis_hpc.bench.mpiprobe",
                          str(cfg)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads(rec.read_text())
    assert set(record["results"]) == {"contiguous", "inter", "subarray", "struct"}
    assert all(len(v["samples"]) == 2 for v in record["results"].values())
