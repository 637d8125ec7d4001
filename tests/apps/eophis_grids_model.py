"""The model side of tests/apps/eophis_grids_script.py over the MPI transport, in Python with
``eophis_hpc.compat.model_side`` (one connection per grid group): puts the due inputs at dates
``it * rn_Dt`` seconds, gets the results and compares them bit for bit with the router's
computation on the global field.

Usage (in the directory holding earth_namelist): mpiexec -n P python eophis_grids_model.py PX PY
: -n Q python eophis_grids_script.py --exec prod. Ends the MPI job (non-zero) on any difference.
"""
from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

import eophis_hpc as eh
from eophis_hpc.compat import model_side

from eophis_grids_common import expected, inputs
from eophis_grids_script import NPTS, earth_info


def fail(message: str) -> None:
    """Report and end the whole MPI job at once (the workers would wait for this rank)."""
    print(message, file=sys.stderr, flush=True)
    MPI.COMM_WORLD.Abort(1)


def main() -> None:
    px, py = (int(v) for v in sys.argv[1:3])
    (cfg,), nml = earth_info()
    step, it_end, it_0 = nml.get("rn_Dt", "nn_itend", "nn_it000")
    rank = MPI.COMM_WORLD.rank  # model ranks come first in the MPMD launch
    box = eh.Decomposition.blocks(eh.Grid(*NPTS), px, py).boxes[rank]
    own = np.s_[:, box.j0:box.j1, box.i0:box.i1]
    outputs = [n for ex in cfg["exchs"] for n in ex["out"]]
    coupled = 0
    with model_side(cfg, box) as cpl:
        for it in range(it_end - it_0 + 1):
            date = int(it * step)
            due = inputs(cfg, date)
            for ex in cfg["exchs"]:
                for name in ex["in"]:
                    sent = cpl.put(name, np.ascontiguousarray(due[name][own]) if name in due
                                   else np.zeros((ex["lvl"], *box.shape)), date)
                    if sent != (name in due):
                        fail(f"model rank {rank}: put({name!r}, {date}) returned {sent}")
            want = expected(cfg, date)
            coupled += bool(want)
            for name in outputs:
                got = cpl.get(name, date)
                if name not in want:
                    if got is not None:
                        fail(f"model rank {rank}: {name} came back at date {date}")
                    continue
                if not np.array_equal(got, want[name][own]):
                    bad = np.argwhere(got != want[name][own])
                    fail(f"model rank {rank}: {name} differs at date {date} at {len(bad)} "
                             f"points, first {bad[0].tolist()}")
    print(f"model rank {rank}: OK after {coupled} coupled dates", flush=True)


if __name__ == "__main__":
    main()
