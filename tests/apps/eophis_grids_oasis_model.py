"""The model side of tests/apps/eophis_grids_script.py over OASIS3-MCT, written with pyoasis only
(as NEMO's OASIS interface or Eophis' toy_earth.py are): one BoxPartition per rank, the namcouple
names E_OUT_n (to the workers) and E_IN_n (back), puts at dates ``it * rn_Dt`` when due, gets of
the results, compared bit for bit with the router's computation on the global field.

Usage (in the directory holding earth_namelist and the namcouple): mpiexec -n P python
eophis_grids_oasis_model.py PX PY : -n Q python eophis_grids_script.py --exec prod, with
EOPHIS_HPC_TRANSPORT=oasis. Ends the MPI job (non-zero) on any difference.
"""
from __future__ import annotations

import sys

import numpy as np
import pyoasis
from mpi4py import MPI

import eophis_hpc as eh
from eophis_hpc.oasis import namcouple as nc

from eophis_grids_common import expected, inputs
from eophis_grids_script import NPTS, earth_info


def fail(message: str) -> None:
    """Report and end the whole MPI job at once (the workers would wait for this rank)."""
    print(message, file=sys.stderr, flush=True)
    MPI.COMM_WORLD.Abort(1)


def main() -> None:
    eh.errors.release_exit_guard()  # the model side is plain pyoasis: it never joins eophis_hpc
    px, py = (int(v) for v in sys.argv[1:3])
    (cfg,), nml = earth_info()
    step, it_end, it_0 = nml.get("rn_Dt", "nn_itend", "nn_it000")
    params = getattr(pyoasis, "OASIS", None) or pyoasis.OasisParameters
    comp = pyoasis.Component("earth", True, MPI.COMM_WORLD)
    rank = comp.localcomm.rank
    nx, ny = NPTS
    box = eh.Decomposition.blocks(eh.Grid(nx, ny), px, py).boxes[rank]
    bj, bi = box.shape
    part = pyoasis.BoxPartition(box.j0 * nx + box.i0, bi, bj, nx)
    levels = {n: ex["lvl"] for ex in cfg["exchs"] for n in ex["in"] + ex["out"]}
    freqs = {n: ex["freq"] for ex in cfg["exchs"] for n in ex["in"] + ex["out"]}
    put_vars, get_vars = {}, {}
    for f in nc.coupling_fields([cfg]):  # E_OUT_n / E_IN_n, as the namcouple names them
        if f.direction == "in":
            put_vars[f.name] = pyoasis.Var(f.geo_alias, part, params.OUT, bundle_size=levels[f.name])
        else:
            get_vars[f.name] = pyoasis.Var(f.geo_alias, part, params.IN, bundle_size=levels[f.name])
    comp.enddef()
    own = np.s_[:, box.j0:box.j1, box.i0:box.i1]
    coupled = 0
    for it in range(it_end - it_0 + 1):
        date = int(it * step)
        for name, arr in inputs(cfg, date).items():
            piece = np.ascontiguousarray(arr[own])
            put_vars[name].put(date, pyoasis.asarray(piece.reshape(levels[name], -1).T))
        want = expected(cfg, date)
        coupled += bool(want)
        for name, var in get_vars.items():
            if date % freqs[name]:
                continue
            L = levels[name]
            buf = pyoasis.asarray(np.zeros((bi * bj, L)))
            var.get(date, buf)
            got = np.ascontiguousarray(buf.T).reshape(L, bj, bi)
            if not np.array_equal(got, want[name][own]):
                bad = np.argwhere(got != want[name][own])
                fail(f"model rank {rank}: {name} differs at date {date} at {len(bad)} points, "
                         f"first {bad[0].tolist()}")
    term = getattr(comp, "terminate", None)
    if term is not None:
        term()
    del comp
    print(f"model rank {rank}: OK after {coupled} coupled dates", flush=True)


if __name__ == "__main__":
    main()
