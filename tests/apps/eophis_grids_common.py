"""What the model sides of tests/apps/eophis_grids_script.py put and expect: the fields at each
date and the router's computation on the whole field (``reference.extend`` adds the closed,
cyclic and folded halos), so that the workers' results are compared bit for bit."""
from __future__ import annotations

import numpy as np

from eophis_hpc.compat.tunnels import grid_from_dict
from eophis_hpc.reference import extend


def field(name: str, date: int, levels: int, nx: int, ny: int) -> np.ndarray:
    seed = 1000 * date + sum(map(ord, name))
    return np.random.default_rng(seed).standard_normal((levels, ny, nx))


def inputs(cfg: dict, date: int) -> dict:
    """``{input: (z, y, x) global field}`` of the exchanges due at ``date``."""
    out = {}
    for ex in cfg["exchs"]:
        if date % ex["freq"] == 0:
            nx, ny = cfg["grids"][ex["grd"]]["npts"]
            for name in ex["in"]:
                out[name] = field(name, date, ex["lvl"], nx, ny)
    return out


def expected(cfg: dict, date: int) -> dict:
    """``{output: (z, y, x) global result}`` of the exchanges due at ``date``: the script's
    ``deltaxy`` (one input per exchange, outputs dx then dy) on the field with its halo."""
    glb = inputs(cfg, date)
    out = {}
    for ex in cfg["exchs"]:
        if date % ex["freq"]:
            continue
        grid, halo = grid_from_dict(ex["grd"], cfg["grids"][ex["grd"]])
        e = extend(glb[ex["in"][0]], grid, halo)
        dx, dy = np.zeros_like(e), np.zeros_like(e)
        dx[:, :, 1:-1] = e[:, :, 2:] - e[:, :, :-2]
        dy[:, 1:-1, :] = e[:, 2:, :] - e[:, :-2, :]
        core = np.s_[:, halo:e.shape[1] - halo, halo:e.shape[2] - halo]
        for name, res in zip(ex["out"], (dx[core], dy[core])):
            out[name] = res
    return out
