"""Launch MPMD jobs from the tests with the virtual environment's own mpiexec and a hard time
limit, so a hang fails the test instead of blocking the suite."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

APPS = Path(__file__).parent / "apps"


def mpiexec() -> str:
    exe = Path(sys.executable).parent / "mpiexec"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpiexec")
    if found is None:
        pytest.fail("no mpiexec next to the Python interpreter nor on PATH: install the 'mpich' wheel")
    return found


def run_mpmd(model: tuple[int, list[str]], workers: tuple[int, list[str]], timeout: float = 120,
             env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """``mpiexec -n P python <model args> : -n Q python <worker args>``; fails after ``timeout``."""
    (p, margs), (q, wargs) = model, workers
    cmd = [mpiexec(), "-n", str(p), sys.executable, *margs, ":", "-n", str(q), sys.executable, *wargs]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                              cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"MPI job did not end within {timeout} s (hang?): {' '.join(cmd)}\n"
                    f"--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}")


def run_app(tmp_path, config: dict, p: int, q: int, timeout: float = 120, app: str = "coupled_check.py",
            env: dict | None = None, cwd=None):
    """Run ``tests/apps/<app>`` as model (P ranks) and worker (Q ranks) with ``config``."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    script = str(APPS / app)
    return run_mpmd((p, [script, "model", str(cfg)]), (q, [script, "worker", str(cfg)]), timeout,
                    env, cwd)
