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
    for row in ("bytes per step", "model time / step", "exchange time / step",
                "inference time / step", "coupling overhead"):
        assert row in res.stdout
    png = tmp_path / "demo.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_bad_arguments():
    res = cli("demo", "--model-ranks", "0")
    assert res.returncode == 2 and "expected a positive integer" in res.stderr
    res = cli("demo", "--strategy", "magic")
    assert res.returncode == 2 and "invalid choice" in res.stderr
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
