"""eophis-hpc tune: candidates, clear errors on bad arguments, and a real (tiny) tuning whose
settings file the runtime then uses."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from eophis_hpc import config
from mpi_util import run_app
from test_mpi_runtime import config as app_config

EXE = [sys.executable, "-m", "eophis_hpc.cli", "tune"]


def tune(*args, cwd=None, timeout=240):
    return subprocess.run(EXE + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def test_dry_run_lists_candidates():
    res = tune("--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--dry-run")
    assert res.returncode == 0, res.stderr
    # (packed, datatype, shm + pipelined at 3 chunk sizes) x 3 backends x 3 tile counts
    assert "54 candidates" in res.stdout
    assert "datatype  cython 1 tile(s)/worker" in res.stdout
    assert "shm       cython 1 tile(s)/worker" in res.stdout
    assert "pipelined cython 2 tile(s)/worker 1024 KiB chunks" in res.stdout


@pytest.mark.parametrize("args,message", [
    (["--grid", "ORCA3", "--model-ranks", "2", "--workers", "1"], "unknown grid 'ORCA3'"),
    (["--grid", "DINO", "--model-ranks", "2", "--workers", "20000"], "more workers than"),
    (["--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--time-budget", "1"],
     "--time-budget 1 s is too small"),
    (["--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--halo", "500"],
     "--halo=500 is wider than the grid allows"),
    (["--grid", "ORCA2", "--model-ranks", "0", "--workers", "1"], "expected a positive integer"),
])
def test_bad_arguments_fail_clearly(args, message):
    res = tune(*args)
    assert res.returncode == 2
    assert message in res.stderr


@pytest.mark.mpi
def test_tuned_settings_are_written_and_used(tmp_path):
    res = tune("--grid", "ORCA2", "--model-ranks", "1", "--workers", "1", "--halo", "2",
               "--time-budget", "20", "--out", "eophis_hpc.toml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "winner:" in res.stdout and re.search(r"^\s+1\s+\w+", res.stdout, re.M)
    settings = config.parse((tmp_path / "eophis_hpc.toml").read_text())
    want_keys = {"strategy", "backend", "tiles_per_worker"}
    if settings["strategy"] == "pipelined":
        want_keys.add("pipeline_chunk")
    assert set(settings) == want_keys
    # a coupled run started in that folder, with no strategy/backend/tiles given, uses them
    cfg = app_config("closed", (1, 1), None, steps=2)
    run = run_app(tmp_path, cfg, 1, 1, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    want = (f"settings strategy={settings['strategy']} backend={settings['backend']} "
            f"tiles={settings['tiles_per_worker']}")
    assert want in run.stdout, run.stdout
