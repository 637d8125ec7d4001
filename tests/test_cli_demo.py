"""The command line: the demo main job end to end (small), run --dry-run, info, bad arguments."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = [sys.executable, "-m", "eophis_hpc.cli"]


def cli(*args, timeout=300):
    return subprocess.run(EXE + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.mpi
@pytest.mark.parametrize("strategy,ranks", [("packed", ("2", "1")), ("datatype", ("3", "2"))])
def test_demo_passes_and_reports(tmp_path, strategy, ranks):
    pytest.importorskip("torch", reason="the demo's CNN needs torch (the [test] extra installs it)")
    pytest.importorskip("matplotlib", reason="the demo's figure needs matplotlib")
    res = cli("demo", "--steps", "6", "--levels", "2", "--model-ranks", ranks[0], "--workers",
              ranks[1], "--strategy", strategy, "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "PASS: largest difference" in res.stdout
    for row in ("bytes per step", "model time / step", "time waited / step",
                "inference time / step", "overlap achieved", "coupling overhead"):
        assert row in res.stdout
    png = tmp_path / "demo.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.mpi
def test_demo_with_a_lag_passes_against_a_lagged_single_process_run(tmp_path):
    """--lag 1: the coupled run equals the single-process run with the same lag (and differs
    from one without: the check is not blind to the lag); the table and the timeline say how
    much of the inference ran while the model computed."""
    pytest.importorskip("torch", reason="the demo's CNN needs torch (the [test] extra installs it)")
    pytest.importorskip("matplotlib", reason="the demo's figure needs matplotlib")
    import json

    import numpy as np

    from eophis_hpc.demo.run import reference_run, relative_difference
    from eophis_hpc.demo.timeline import overlap_fraction

    res = cli("demo", "--steps", "5", "--levels", "1", "--lag", "1", "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "PASS: largest difference from the single-process run with the same lag (1)" in \
        res.stdout
    assert "lag                    1 (the model gets the forcing of step n - 1" in res.stdout
    assert "% of the inference ran while the model computed" in res.stdout
    cfg = json.loads((tmp_path / "config.json").read_text())
    with np.load(tmp_path / "coupled.npz") as data:
        unlagged = reference_run(dict(cfg, lag=0))
        assert max(relative_difference(data[k], unlagged[k]) for k in unlagged) > 1e-3
    spans = json.loads((tmp_path / "model_timings.json").read_text())["spans"]
    worker = json.loads((tmp_path / "worker_0_timings.json").read_text())["spans"]
    assert {p for p, _, _ in spans} == {"coupling", "compute"}
    assert {"recv", "model", "send"} <= {p for p, _, _ in worker}
    frac = overlap_fraction(spans, worker)
    assert frac is not None and 0.0 <= frac <= 1.0


def test_timeline_overlap_fraction():
    from eophis_hpc.demo.timeline import overlap_fraction
    model = [("coupling", 0.0, 1.0), ("compute", 1.0, 3.0), ("coupling", 3.0, 4.0),
             ("compute", 4.0, 6.0)]
    worker = [("model", 1.0, 2.0), ("model", 2.5, 4.5)]  # 1 + (0.5 + 0.5) of 3 s hidden
    assert overlap_fraction(model, worker) == pytest.approx(2.0 / 3.0)
    assert overlap_fraction(model, []) is None


def test_demo_rejects_bad_arguments():
    res = cli("demo", "--model-ranks", "0")
    assert res.returncode == 2 and "expected a positive integer" in res.stderr
    res = cli("demo", "--strategy", "magic")
    assert res.returncode == 2 and "invalid choice" in res.stderr
    res = cli("demo", "--lag", "-1")
    assert res.returncode == 2 and "--lag" in res.stderr, res.stderr
    res = cli("demo", "--grid", "nope")
    assert res.returncode == 2 and "unknown grid 'nope'" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_run_dry_run_builds_the_mpmd_line(tmp_path):
    ocean, closure = tmp_path / "ocean.py", tmp_path / "closure.py"
    ocean.write_text("")
    closure.write_text("")
    res = cli("run", "-n", "4", "-w", "2", str(ocean), str(closure), "--model-args", "--days 3",
              "--dry-run")
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert "-n 4" in line and f"{ocean} --days 3 : -n 2" in line and line.endswith(str(closure))
    assert Path(line.split()[0]).name == "mpiexec"


def test_info_lists_backends():
    res = cli("info")
    assert res.returncode == 0, res.stderr
    assert "cython  ok" in res.stdout and "MPICH" in res.stdout


class _NotWeights:
    """An arbitrary object: a weights file holding it must be refused, not unpickled."""


def test_cnn_weights_load_safely(tmp_path):
    torch = pytest.importorskip("torch", reason="the demo's CNN needs torch")
    from eophis_hpc.demo import gz21

    net = gz21.build(seed=3)
    good = tmp_path / "w.pt"
    torch.save(net.state_dict(), good)
    again = gz21.build(weights=str(good))
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    bad = tmp_path / "bad.pt"
    torch.save({"x": _NotWeights()}, bad)
    with pytest.raises(gz21.WeightsError, match="weights_only=True.*Unsupported global"):
        gz21.build(weights=str(bad))


def test_fortran_command_recipe_source_and_env_errors():
    res = cli("fortran")
    assert res.returncode == 0, res.stderr
    assert "eophis_hpc.f90" in res.stdout and "mpifort -O2 -c" in res.stdout
    src = cli("fortran", "--source")
    assert src.returncode == 0 and os.path.isfile(src.stdout.strip())
    inc = cli("fortran", "--include")
    assert os.path.isfile(os.path.join(inc.stdout.strip(), "eophis_hpc.h"))
    bad = cli("fortran", "--env", "mpifort.no-such-mpi")
    assert bad.returncode == 2 and "not found on PATH" in bad.stderr
    assert "  fortran  " in cli("info").stdout
