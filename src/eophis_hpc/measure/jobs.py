"""Running measurement jobs: the round-trip probe (:mod:`eophis_hpc.measure.roundtrip`) and the
ping-pong (:mod:`eophis_hpc.measure.pingpong`) as MPI jobs of their own, each with a hard time
limit, in a folder of its own (so no ``eophis_hpc.toml`` is picked up); and the load other
processes put on a shared machine during a job. Used by ``eophis-hpc tune``, ``eophis-hpc bench``
(which launches its own probes with :func:`launch` too) and the cost model's calibration
(``eophis-hpc plan --calibrate``)."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..launch import find_mpiexec

QUIET_CORES = 0.25  # other processes below this: the machine counts as quiet


def launch(cmd: list[str], workdir: Path, rec_path: Path,
           timeout: float) -> tuple[dict | None, str]:
    """Run ``cmd`` in ``workdir``; returns ``(the JSON at rec_path, "")`` or ``(None, why)``.
    Past ``timeout`` seconds the job's whole process group is killed."""
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


def job_files(workdir, ident: str, cfg: dict, timeout: float) -> tuple[Path, Path, Path]:
    """The job's folder, configuration file (written, with ``out`` and ``time_limit``) and
    record file (removed if an older one is there)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path, rec_path = workdir / f"config-{ident}.json", workdir / f"record-{ident}.json"
    if rec_path.exists():
        rec_path.unlink()
    cfg = dict(cfg, out=str(rec_path), time_limit=max(10.0, timeout - 5.0))
    cfg_path.write_text(json.dumps(cfg, indent=1))
    return workdir, cfg_path, rec_path


def run_roundtrip(cfg: dict, workdir: Path, timeout: float, ident: str) -> tuple[dict | None, str]:
    """Run one round-trip configuration (keys of ``eophis_hpc.measure.roundtrip``, with ``P`` and
    ``Q``); returns ``(record, "")`` or ``(None, why it failed)``."""
    workdir, cfg_path, rec_path = job_files(workdir, ident, cfg, timeout)
    prog = [sys.executable, "-m", "eophis_hpc.measure.roundtrip"]
    cmd = [find_mpiexec(), "-n", str(cfg["P"]), *prog, "model", str(cfg_path),
           ":", "-n", str(cfg["Q"]), *prog, "worker", str(cfg_path)]
    return launch(cmd, workdir, rec_path, timeout)


def run_pingpong(sizes: list[int], workdir: Path, timeout: float,
                 **options) -> tuple[dict | None, str]:
    """Raw MPI ping-pong between two ranks for each message size in bytes
    (``eophis_hpc.measure.pingpong``; ``options`` are its other configuration keys, e.g.
    ``strided=True``, ``messages=64``); returns ``(record, "")`` or ``(None, why it failed)``."""
    workdir, cfg_path, rec_path = job_files(workdir, "pingpong", dict(options, sizes=sizes),
                                         timeout)
    cmd = [find_mpiexec(), "-n", "2", sys.executable, "-m", "eophis_hpc.measure.pingpong",
           str(cfg_path)]
    return launch(cmd, workdir, rec_path, timeout)


# --------------------------------------------------------------------------- machine load
def _busy_seconds() -> tuple[float, float] | None:
    """(busy, elapsed) CPU seconds of the whole machine so far, from Linux ``/proc/stat``."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = v[3] + v[4]
    return (sum(v) - idle) / tick, sum(v) / tick


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class LoadProbe:
    """CPU used by *other* processes during a job (the machine may be shared): the machine's
    busy time minus the job's own CPU time (mpiexec and its ranks, reaped children), in cores;
    ``others`` is None where ``/proc/stat`` cannot be read."""

    def __enter__(self):
        self.t0, self.b0, self.c0 = time.perf_counter(), _busy_seconds(), _children_cpu()
        return self

    def __exit__(self, *exc):
        b1 = _busy_seconds()
        wall = time.perf_counter() - self.t0
        self.others = None
        if self.b0 is not None and b1 is not None and wall > 0:
            mine = _children_cpu() - self.c0
            self.others = max(0.0, (b1[0] - self.b0[0] - mine) / wall)


def wait_quiet(max_wait: float, cores: float = QUIET_CORES) -> float:
    """Wait (at most ``max_wait`` s, sampling every 0.5 s) until other processes use under
    ``cores`` cores; returns the load seen last (0 without ``/proc/stat``)."""
    deadline = time.perf_counter() + max_wait
    load = 0.0
    while True:
        b0, t0 = _busy_seconds(), time.perf_counter()
        time.sleep(0.5)
        b1 = _busy_seconds()
        if b0 is None or b1 is None:
            return 0.0
        load = (b1[0] - b0[0]) / (time.perf_counter() - t0)
        if load < cores or time.perf_counter() > deadline:
            return load
