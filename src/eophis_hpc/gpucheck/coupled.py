"""gpu-check sections that launch MPI jobs: a coupled run (two model ranks, two workers on one
GPU, torch and JAX: what several workers per GPU need, JAX's memory setting included) checked
exactly on the model ranks, and the test behind the ``direct`` opt-in: a device buffer sent
through MPI in a separate process, where a library that only claims CUDA support crashes
harmlessly.

Also the program those jobs run: ``python -m eophis_hpc.gpucheck.coupled model|worker CONFIG``
or ``... probe FRAMEWORK``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .. import device
from ..launch import find_mpiexec, mpmd_command
from .report import Result

GRID = {"nx": 48, "ny": 32, "east_west": "cyclic", "north": "fold", "pivot": "T"}
HALO, LEVELS, STEPS = 2, 4, 3


def _grid():
    from ..grid import Grid
    return Grid(**GRID)


def _field(step: int, box) -> np.ndarray:
    g = _grid()
    glb = np.random.default_rng(11 + step).standard_normal((LEVELS, g.ny, g.nx)).astype(np.float32)
    return np.ascontiguousarray(glb[:, box.j0:box.j1, box.i0:box.i1])


def _exchanges():
    from ..protocol.schedule import Exchange
    return [Exchange(inputs=["u"], outputs=["fu"], levels=LEVELS, dtype="float32")]


def run_model() -> None:
    """Model rank: put u, get fu, which must be exactly 2 u on this rank's block."""
    from mpi4py import MPI

    from ..client import connect
    from ..decomposition import Decomposition
    box = Decomposition.blocks(_grid(), 2, 1).boxes[MPI.COMM_WORLD.rank]
    cpl = connect(_grid(), box)
    for step in range(STEPS):
        u = _field(step, box)
        cpl.put("u", u, step)
        got = cpl.get("fu", step)
        if got.tobytes() != (u * 2).tobytes():
            sys.exit(f"model rank {MPI.COMM_WORLD.rank}: fu at step {step} differs at "
                     f"{int(np.sum(got != u * 2))} points")
    cpl.close()
    print(f"model rank {MPI.COMM_WORLD.rank}: OK", flush=True)


def run_worker(cfg: dict) -> None:
    """Worker: the model doubles the tile's own points on the framework's device."""
    from ..tunnel import Tunnel
    tunnel = Tunnel(_grid(), halo=HALO, exchanges=_exchanges(), tiles=4, strategy="packed",
                    framework=cfg["framework"], device=cfg["device"], dtype="float32", chunks=2,
                    verbose=False)

    @tunnel.model
    def double(u):
        return {"fu": u[:, :, HALO:-HALO, HALO:-HALO] * 2}
    tunnel.run()
    if tunnel.rank == 0:
        print(tunnel.describe(), flush=True)
    print(f"worker {tunnel.rank}: OK", flush=True)


def probe(framework: str) -> None:
    """A device buffer of ``framework`` sent to this rank and received into another device
    buffer through MPI (COMM_SELF); exits non-zero (or crashes) when the MPI cannot."""
    from mpi4py import MPI
    host = np.arange(1024, dtype=np.float32)
    index = device.staging_policy(framework, "cuda", cuda_aware=False).index
    from .device_cases import to_gpu
    src, dst = to_gpu(framework, host, index), to_gpu(framework, np.zeros_like(host), index)
    device.synchronize() if framework == "numba" else None
    MPI.COMM_SELF.Sendrecv([src, MPI.FLOAT], 0, 7, [dst, MPI.FLOAT], 0, 7)
    from .device_cases import to_numpy
    if to_numpy(dst).tobytes() != host.tobytes():
        sys.exit("the device buffer came back different")
    print("probe OK", flush=True)


# ---------------------------------------------------------------------- sections
def coupled_run(framework: str, dev: str, timeout: float, env: dict | None = None) -> Result:
    """Launch 2 model ranks and 2 workers of ``framework`` on ``dev``; pass when both sides
    report exact results."""
    name = f"{framework} on {dev}, 2 workers"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.json"
        cfg.write_text(json.dumps({"framework": framework, "device": dev}))
        me = [sys.executable, "-m", "eophis_hpc.gpucheck.coupled"]
        cmd = mpmd_command(2, me + ["model", str(cfg)], 2, me + ["worker", str(cfg)],
                           mpiexec=find_mpiexec())
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                 env=dict(os.environ, **(env or {})))
        except subprocess.TimeoutExpired:
            return Result("coupled", name, "fail", f"no result after {timeout:.0f} s (hang)")
    ok = res.returncode == 0 and res.stdout.count(": OK") == 4
    found = re.search(r"staging: (.*)", res.stdout)  # ranks' lines may run together
    policy = found.group(1) if found else ""
    detail = policy if ok else (res.stdout[-600:] + res.stderr[-1500:])
    return Result("coupled", name, "pass" if ok else "fail", detail)


def coupled(frameworks: list, quick: bool) -> list:
    out = []
    for fw in ("torch", "jax"):
        if fw not in frameworks:
            out.append(Result("coupled", fw, "skip", f"no GPU for {fw}"))
            continue
        out.append(coupled_run(fw, "cuda:0", 240))
    return out


def direct(frameworks: list, quick: bool) -> list:
    """Whether the MPI moves device memory: asked of the library, then tried in a separate
    process; when it works, a coupled run in direct mode."""
    aware, why = device.mpi_cuda_aware()
    cands = [fw for fw in ("torch", "cupy", "numba") if fw in frameworks]
    if not cands:
        return [Result("direct", "device buffers through MPI", "skip", "no GPU for torch, cupy "
                       "or numba")]
    if not aware:
        return [Result("direct", "device buffers through MPI", "skip",
                       f"the MPI library does not say it is CUDA-aware ({why}): staged mode")]
    out = []
    for fw in cands:
        try:
            res = subprocess.run([sys.executable, "-m", "eophis_hpc.gpucheck.coupled", "probe",
                                  fw], capture_output=True, text=True, timeout=120)
            ok = res.returncode == 0 and "probe OK" in res.stdout
            detail = (f"works: {device.ENV_CUDA_AWARE}=1 turns direct mode on" if ok else
                      f"MPI says CUDA-aware ({why}) but a device buffer failed (exit "
                      f"{res.returncode}): keep staged mode; {res.stderr[-800:]}")
        except subprocess.TimeoutExpired:
            ok, detail = False, "the device-buffer send hung: keep staged mode"
        out.append(Result("direct", f"{fw} device buffer through MPI", "pass" if ok else "fail",
                          detail))
    if "torch" in frameworks and out[0].status == "pass":
        out.append(coupled_run("torch", "cuda:0", 240, {device.ENV_CUDA_AWARE: "1"}))
        out[-1].section, out[-1].name = "direct", "torch coupled run in direct mode"
    return out


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "probe":
        probe(sys.argv[2])
    else:
        config = json.loads(Path(sys.argv[2]).read_text())
        run_model() if role == "model" else run_worker(config)
