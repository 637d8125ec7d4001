"""Coupled checks through a real OASIS3-MCT exchange (pyoasis): a Python model component on 2
ranks with BoxPartitions, workers on 1-2 ranks with ``eh.Tunnel(transport="oasis")`` (orange
partitions with halo, kernel reorder, box/orange send partitions), checked bit for bit on both
sides against the reference semantics.

pyoasis is OASIS3-MCT's Python API; it is built with OASIS3-MCT from source and cannot be
installed from the package registries, so these tests skip where it is absent. They are written
against the documented pyoasis 5.x API (Component, BoxPartition, OrangePartition, Var with
bundle_size, put/get, enddef) and have not been run where pyoasis was missing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pyoasis = pytest.importorskip(
    "pyoasis", reason="pyoasis (OASIS3-MCT's Python API) is not installed: it is built with "
                      "OASIS3-MCT from source (see docs/usage.md, 'OASIS transport')")

import eophis_hpc as eh  # noqa: E402
from eophis_hpc.oasis import namcouple as nc  # noqa: E402

from mpi_util import APPS, mpiexec  # noqa: E402

pytestmark = pytest.mark.mpi

GRIDS = {
    "closed": {"nx": 20, "ny": 12},
    "cyclic": {"nx": 18, "ny": 11, "east_west": "cyclic", "south": "cyclic", "north": "cyclic"},
    "foldT": {"nx": 24, "ny": 14, "east_west": "cyclic", "north": "fold", "pivot": "T"},
    "foldF": {"nx": 23, "ny": 13, "east_west": "cyclic", "north": "fold", "pivot": "F"},
}
EXCHANGES = [
    {"inputs": ["u"], "outputs": ["fu"], "levels": 3, "signs": {"u": -1}, "point": "V"},
    {"inputs": ["t"], "outputs": ["ft"], "levels": 1, "every": 2},
    {"inputs": ["mask"], "static": True},
]


def config(grid: str, q: int, tiles=None, halo: int = 2, steps: int = 4, dt: int = 600) -> dict:
    g = eh.Grid(**GRIDS[grid])
    tunnel = eh.Tunnel(g, halo, [eh.Exchange(**ex) for ex in EXCHANGES], dt=dt,
                       transport="oasis", verbose=False)
    fields = nc.coupling_fields([nc.tunnel_dict(tunnel, "CHECK")])
    specs = tunnel.schedule.fields
    out = []
    for f in fields:
        spec = specs[f.name]
        ex = tunnel.exchanges[spec.exchange]
        out.append({"name": f.name, "direction": f.direction, "geo_alias": f.geo_alias,
                    "levels": spec.levels, "sign": spec.sign, "point": spec.point,
                    "static": ex.static, "period": None if ex.static else (ex.every or 1) * dt})
    return {"seed": 5, "grid": GRIDS[grid], "halo": halo, "dt": dt, "steps": steps,
            "tiles": tiles, "model_blocks": [2, 1], "exchanges": EXCHANGES, "fields": out,
            "namcouple_fields": fields}


@pytest.mark.parametrize("grid,q,tiles", [("foldT", 1, None), ("closed", 2, None),
                                          ("cyclic", 2, None), ("foldF", 1, 2), ("foldT", 2, 4)])
def test_oasis_round_trip(tmp_path, grid, q, tiles):
    cfg = config(grid, q, tiles)
    nc.write_namcouple(cfg.pop("namcouple_fields"), cfg["steps"] * cfg["dt"], str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    cmd = [mpiexec(), "-n", "2", sys.executable, str(APPS / "oasis_model.py"), "config.json",
           ":", "-n", str(q), sys.executable, str(APPS / "oasis_workers.py"), "config.json"]
    try:
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"OASIS job did not end within 180 s: {exc.stdout}\n{exc.stderr}")
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    assert res.stdout.count("model rank") == 2 and res.stdout.count("worker: OK") == q
