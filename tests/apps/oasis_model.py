"""Model side of the OASIS coupled check, written with pyoasis only (as a Fortran model coupled
with OASIS would be): each rank defines a BoxPartition over its block, puts the tunnel's inputs
(E_OUT_n) at dates ``it * dt`` and gets the outputs (E_IN_n), which must equal, bit for bit, the
workers' stencil applied to the global field with its halo (reference.extend).

Usage: mpiexec -n P python oasis_model.py config.json : -n Q python oasis_workers.py config.json
(run in the directory holding the namcouple). Exits non-zero on any difference.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pyoasis
from mpi4py import MPI

import eophis_hpc as eh
from eophis_hpc.reference import extend

from oasis_workers import field, output_name, stencil


def main(cfg: dict) -> None:
    eh.errors.release_exit_guard()  # the model side is plain pyoasis: it never joins eophis_hpc
    params = getattr(pyoasis, "OASIS", None) or pyoasis.OasisParameters
    grid = eh.Grid(**cfg["grid"])
    h = cfg["halo"]
    comp = pyoasis.Component("ocean", True, MPI.COMM_WORLD)
    rank = comp.localcomm.rank
    box = eh.Decomposition.blocks(grid, *cfg["model_blocks"]).boxes[rank]
    bj, bi = box.shape
    part = pyoasis.BoxPartition(box.j0 * grid.nx + box.i0, bi, bj, grid.nx)
    put_vars, get_vars = {}, {}
    for f in cfg["fields"]:  # in the tunnel's field order, as the namcouple lists them
        if f["direction"] == "in":
            put_vars[f["name"]] = pyoasis.Var(f["geo_alias"], part, params.OUT,
                                              bundle_size=f["levels"])
        else:
            get_vars[f["name"]] = pyoasis.Var(f["geo_alias"], part, params.IN,
                                              bundle_size=f["levels"])
    comp.enddef()
    own = np.s_[:, box.j0:box.j1, box.i0:box.i1]
    ins = [f for f in cfg["fields"] if f["direction"] == "in"]
    for f in ins:  # static fields: once, at date 0
        if f["static"]:
            piece = np.ascontiguousarray(field(cfg, f["name"], 0, f["levels"])[own])
            put_vars[f["name"]].put(0, pyoasis.asarray(piece.reshape(f["levels"], -1).T))
    for it in range(cfg["steps"]):
        date = int(it * cfg["dt"])
        for f in ins:
            if not f["static"] and date % f["period"] == 0:
                piece = np.ascontiguousarray(field(cfg, f["name"], date, f["levels"])[own])
                put_vars[f["name"]].put(date, pyoasis.asarray(piece.reshape(f["levels"], -1).T))
        for f in ins:
            if f["static"] or date % f["period"] or output_name(f["name"]) not in get_vars:
                continue
            L = f["levels"]
            buf = pyoasis.asarray(np.zeros((bi * bj, L)))
            get_vars[output_name(f["name"])].get(date, buf)
            got = np.ascontiguousarray(buf.T).reshape(L, bj, bi)
            gp = grid.with_point(f["point"])
            glb = field(cfg, f["name"], date, L)
            want = stencil(extend(glb, gp, h, f["sign"]), h)[own]
            if not np.array_equal(got, want):
                bad = np.argwhere(got != want)
                sys.exit(f"model rank {rank}: {output_name(f['name'])} at date {date} differs at "
                         f"{len(bad)} points, first {bad[0].tolist()}")
    term = getattr(comp, "terminate", None)
    if term is not None:
        term()
    del comp
    print(f"model rank {rank}: OK", flush=True)


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        main(json.load(fh))
