"""Programs for the early-failure and caller's-communicator tests: a model or a worker that
couples correctly (identity closure, checked), or one that fails before coupling in a given way.

Usage: python early.py ROLE [HOW] where ROLE is model | worker | third and HOW is ok (default),
raise, exit0, exit-msg, hang, or sub (couple on a communicator split off COMM_WORLD, with a
third program in the job that never imports eophis_hpc).
"""
from __future__ import annotations

import sys
import time

import numpy as np

role = sys.argv[1]
how = sys.argv[2] if len(sys.argv) > 2 else "ok"

if role == "third":  # a program of the job that knows nothing of eophis_hpc
    from mpi4py import MPI
    MPI.COMM_WORLD.Split(7, MPI.COMM_WORLD.rank).Free()
    print("third: done", flush=True)
    sys.exit(0)

import eophis_hpc as eh  # noqa: E402

if how == "raise":
    raise RuntimeError(f"{role}: cannot read closure_weights.pth (a broken file)")
if how == "exit0":
    print(f"{role}: nothing to do", flush=True)
    sys.exit(0)
if how == "exit-msg":
    sys.exit(f"{role}: bad settings, giving up")
if how == "hang":
    from mpi4py import MPI  # noqa: F401  MPI started, but this rank never joins
    time.sleep(120)

world = None
if how == "sub":
    from mpi4py import MPI
    world = MPI.COMM_WORLD.Split(1, MPI.COMM_WORLD.rank)

grid = eh.Grid(nx=16, ny=8, east_west="cyclic")
exchanges = [eh.Exchange(inputs=["u"], outputs=["fu"], levels=1)]
if role == "model":
    dec = eh.Decomposition.blocks(grid, 2, 1)
    cpl = eh.connect(grid, dec, world=world)
    b = cpl.box
    for step in range(3):
        u = np.arange(b.j0 * 100 + b.i0, b.j0 * 100 + b.i0 + b.shape[0] * b.shape[1],
                      dtype=np.float64).reshape(1, *b.shape) + step
        fu = cpl.get("fu", step) if cpl.put("u", u, step) else None
        if not np.array_equal(fu, 2 * u):
            raise AssertionError(f"model rank {cpl.rank}: wrong result at step {step}")
    cpl.close()
    print(f"model rank {cpl.rank}: OK", flush=True)
else:
    tunnel = eh.Tunnel(grid, 1, exchanges, world=world, verbose=False)

    @tunnel.model
    def double(u):
        return 2 * u[:, :, 1:-1, 1:-1]

    tunnel.run()
    print(f"worker {tunnel.rank}: OK", flush=True)
