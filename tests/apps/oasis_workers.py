"""Worker side of the OASIS coupled check: an ``eh.Tunnel(transport="oasis")`` whose model
checks every tile it receives against the reference semantics (halo, cyclic wrap, north fold
with sign) and returns a stencil that reads the halo.

Usage: see oasis_model.py. Exits non-zero on any difference.
"""
from __future__ import annotations

import json
import sys

import numpy as np

import eophis_hpc as eh
from eophis_hpc.reference import reference_tile

from coupled_check import stencil  # the same halo-reading stencil as the MPI test app


def field(cfg: dict, name: str, date: int, levels: int) -> np.ndarray:
    seed = cfg["seed"] + 1000 * date + sum(map(ord, name))
    g = eh.Grid(**cfg["grid"])
    return np.random.default_rng(seed).standard_normal((levels, g.ny, g.nx))


def output_name(name: str) -> str:
    return "f" + name




def main(cfg: dict) -> None:
    grid = eh.Grid(**cfg["grid"])
    h = cfg["halo"]
    exchanges = [eh.Exchange(**ex) for ex in cfg["exchanges"]]
    tunnel = eh.Tunnel(grid, h, exchanges, dt=cfg["dt"], tiles=cfg.get("tiles"),
                       transport="oasis", verbose=False)
    calls = {"n": 0}

    def check(name: str, batch: np.ndarray, date: int) -> None:
        spec = tunnel.schedule.fields[name]
        ep = tunnel.engine
        glb = field(cfg, name, date, spec.levels)
        gp = grid.with_point(spec.point)
        for k, rb in enumerate(ep.recv_parts[spec.point].read_boxes):
            if not np.array_equal(batch[k], reference_tile(glb, gp, rb, h, spec.sign)):
                raise AssertionError(f"worker {ep.rank}: tile {k} of {name} at date {date} "
                                     "differs from the reference")

    @tunnel.model
    def closure(step, **inputs):
        date = int(step * cfg["dt"])
        out = {}
        for name, batch in inputs.items():
            if name in tunnel.static:
                continue
            check(name, batch, date)
            out[output_name(name)] = stencil(batch, h)
        calls["n"] += 1
        return out

    for ex in exchanges:
        for name in ex.inputs if ex.static else ():
            check(name, tunnel.receive(name), 0)
    tunnel.run(cfg["steps"])
    print(f"worker: OK after {calls['n']} calls", flush=True)


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        main(json.load(fh))
