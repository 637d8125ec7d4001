"""Launching one round-trip measurement (``eophis_hpc.bench.roundtrip``) as its own MPMD job,
with a hard time limit, in a folder of its own (so no ``eophis_hpc.toml`` is picked up)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ..launch import find_mpiexec


def run_job(cfg: dict, workdir: Path, timeout: float, ident: str) -> tuple[dict | None, str]:
    """Run one configuration (keys of ``eophis_hpc.bench.roundtrip``, with ``P`` and ``Q``);
    returns ``(record, "")`` or ``(None, why it failed)``. Past ``timeout`` seconds the job's
    whole process group is killed."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path, rec_path = workdir / f"config-{ident}.json", workdir / f"record-{ident}.json"
    if rec_path.exists():
        rec_path.unlink()
    cfg = dict(cfg, out=str(rec_path), time_limit=max(10.0, timeout - 5.0))
    cfg_path.write_text(json.dumps(cfg, indent=1))
    prog = [sys.executable, "-m", "eophis_hpc.bench.roundtrip"]
    cmd = [find_mpiexec(), "-n", str(cfg["P"]), *prog, "model", str(cfg_path),
           ":", "-n", str(cfg["Q"]), *prog, "worker", str(cfg_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("EOPHIS_HPC_CONFIG", None)  # the options are the configuration's, not a file's
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=workdir, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the job's own process group (mpiexec + ranks)
        text, _ = proc.communicate()
        return None, f"timed out after {timeout:.0f} s\n{text[-2000:]}"
    if proc.returncode != 0 or not rec_path.exists():
        return None, f"exit status {proc.returncode}\n{text[-2000:]}"
    return json.loads(rec_path.read_text()), ""
