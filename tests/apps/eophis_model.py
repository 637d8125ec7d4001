"""The model side of tests/apps/eophis_script.py, in Python with ``eh.connect``: puts a static
mask, an hourly SST and a daily 3-level field at dates ``it * rn_Dt`` seconds (the step unit of
compat tunnels is the second), gets the results, and checks them bit for bit against the same
computation on the global field (``reference.extend`` adds the cyclic and folded halo).

Usage (in the directory holding earth_namelist): mpiexec -n P python eophis_model.py PX PY :
-n Q python eophis_script.py --exec prod. Exits non-zero on any difference.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from mpi4py import MPI

import eophis_hpc as eh
from eophis_hpc.compat import FortranNamelist
from eophis_hpc.reference import extend

GRID = eh.Grid(24, 14, "cyclic", "closed", "fold", pivot="T", point="T")
HALO = 1


def field(name: str, date: int, levels: int) -> np.ndarray:
    seed = 1000 * date + sum(map(ord, name))
    return np.random.default_rng(seed).standard_normal((levels, GRID.ny, GRID.nx))


def mask() -> np.ndarray:
    return (np.random.default_rng(7).random((1, GRID.ny, GRID.nx)) > 0.3).astype(np.float64)


def gradient_glb(glb: np.ndarray, msk_glb: np.ndarray) -> np.ndarray:
    """What the router computes, on the whole field (z, y, x): same operations, same order."""
    e = extend(glb, GRID, HALO)
    m = extend(msk_glb, GRID, HALO)
    out = np.zeros_like(e)
    out[:, 1:-1, 1:-1] = (e[:, 1:-1, 2:] - e[:, 1:-1, :-2]) + (e[:, 2:, 1:-1] - e[:, :-2, 1:-1])
    return (out * m)[:, HALO:-HALO, HALO:-HALO]


def main() -> None:
    px, py = (int(v) for v in sys.argv[1:3])
    nml = FortranNamelist(os.path.join(os.getcwd(), "earth_namelist"))
    step, it_end, it_0 = nml.get("rn_Dt", "nn_itend", "nn_it000")
    niter = it_end - it_0 + 1
    rank = MPI.COMM_WORLD.rank  # model ranks come first in the MPMD launch
    box = eh.Decomposition.blocks(GRID, px, py).boxes[rank]
    cpl = eh.connect(GRID, box)
    own = np.s_[:, box.j0:box.j1, box.i0:box.i1]
    msk = mask()
    assert cpl.put("msk", np.ascontiguousarray(msk[own]), 0)
    calls = 0
    for it in range(niter):
        date = int(it * step)
        sst, svt = field("sst", date, 1), field("svt", date, 3)
        sent = [cpl.put("sst", np.ascontiguousarray(sst[own]), date),
                cpl.put("svt", np.ascontiguousarray(svt[own]), date)]
        assert sent == [date % 3600 == 0, date % 86400 == 0], (date, sent)
        calls += any(sent)
        got = cpl.get("sst_grad", date)
        if sent[0]:
            want = gradient_glb(sst, msk)[own]
            if not np.array_equal(got, want):
                sys.exit(f"model rank {rank}: sst_grad differs at date {date} "
                         f"(max {np.max(np.abs(got - want))})")
        else:
            assert got is None
        got = cpl.get("svt_var", date)
        if sent[1]:
            if not np.array_equal(got, (svt + 100.0)[own]):
                sys.exit(f"model rank {rank}: svt_var differs at date {date}")
        else:
            assert got is None
    cpl.close()
    print(f"model rank {rank}: OK after {calls} coupled steps", flush=True)


if __name__ == "__main__":
    main()
