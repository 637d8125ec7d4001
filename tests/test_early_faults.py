"""Failures before the coupling starts end the whole job within seconds, with the default
timeout and the failing program's own message, however it fails: an exception, an exit with a
message, an exit 0 without coupling; a rank that hangs is named once the timeout runs out. And
a job whose model and workers couple on a communicator they split off COMM_WORLD themselves,
next to a third program that never touches eophis_hpc."""
from __future__ import annotations

import os
import time

import pytest

from mpi_util import APPS, run_mpmd

pytestmark = pytest.mark.mpi
APP = str(APPS / "early.py")


def launch(model_how: str, worker_how: str, limit: float = 60, env=None):
    os.environ.pop("EOPHIS_HPC_TIMEOUT", None)  # the default timeout
    t0 = time.monotonic()
    res = run_mpmd((2, [APP, "model", model_how]), (1, [APP, "worker", worker_how]), limit, env)
    return res, time.monotonic() - t0


def test_the_programs_couple_when_nothing_fails():
    res, _ = launch("ok", "ok")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count(": OK") == 3


@pytest.mark.parametrize("side", ["model", "worker"])
def test_an_exception_before_coupling_ends_the_job(side):
    res, wall = launch(*(("raise", "ok") if side == "model" else ("ok", "raise")))
    err = res.stdout + res.stderr
    assert res.returncode != 0 and wall < 30
    # the program's own message, once per failing rank (two model ranks, one worker)
    assert err.count(f"{side}: cannot read closure_weights.pth") == (2 if side == "model" else 1)
    assert "ending the whole job" in err


def test_an_exit_with_a_message_before_coupling_ends_the_job():
    res, wall = launch("ok", "exit-msg")
    err = res.stdout + res.stderr
    assert res.returncode != 0 and wall < 30
    assert "worker: bad settings, giving up" in err
    assert "ended before it coupled" in err


def test_an_exit_0_without_coupling_ends_the_job():
    res, wall = launch("exit0", "ok")
    err = res.stdout + res.stderr
    assert res.returncode != 0 and wall < 30
    assert "model: nothing to do" in err and "ended before it coupled" in err


def test_a_rank_that_hangs_before_coupling_is_named():
    res, wall = launch("ok", "hang", env={"EOPHIS_HPC_TIMEOUT": "5"})
    err = res.stdout + res.stderr
    assert res.returncode != 0 and wall < 40
    assert "no answer from world rank [2]" in err and "never reached connect()/Tunnel()" in err


def test_coupling_on_the_callers_communicator_beside_a_third_program():
    import subprocess
    import sys

    from mpi_util import mpiexec
    cmd = [mpiexec(), "-n", "2", sys.executable, APP, "model", "sub", ":", "-n", "1",
           sys.executable, APP, "third", ":", "-n", "1", sys.executable, APP, "worker", "sub"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count(": OK") == 3 and "third: done" in out.stdout


def test_eophis_hpc_run_ends_the_job_when_a_script_fails_before_importing_eophis_hpc(tmp_path):
    """``eophis-hpc run`` starts Python programs with the fault handling in place, so even an
    import error on the script's first line ends the job at once, with its message."""
    import subprocess
    import sys
    bad = tmp_path / "closure.py"
    bad.write_text("import no_such_module_for_eophis_tests  # the user's typo\n")
    os.environ.pop("EOPHIS_HPC_TIMEOUT", None)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "eophis_hpc.cli", "run", "-n", "2", "-w", "1",
                          APP, str(bad), "--model-args", "model"], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    err = res.stdout + res.stderr
    assert res.returncode != 0 and time.monotonic() - t0 < 30
    assert err.count("No module named 'no_such_module_for_eophis_tests'") == 1


def test_python_m_mpi4py_launch_ends_the_job_too():
    """``python -m mpi4py`` aborts only once MPI runs; the hook installed at import does it."""
    import subprocess
    import sys

    from mpi_util import mpiexec
    os.environ.pop("EOPHIS_HPC_TIMEOUT", None)
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", APP, "model", ":", "-n", "1",
           sys.executable, "-m", "mpi4py", APP, "worker", "raise"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    err = res.stdout + res.stderr
    assert res.returncode != 0 and time.monotonic() - t0 < 30
    assert err.count("RuntimeError: worker: cannot read closure_weights.pth") == 1
