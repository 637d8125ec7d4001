"""An Eophis tunnel with several grids (tests/apps/eophis_grids_script.py: closed/cyclic with 2
halo cells, cyclic/north fold on an F pivot at V points and at F points with 1 halo cell), run
unchanged through eophis_hpc.compat: the grid groups, the namcouple Eophis writes for it, and
the coupled run checked bit for bit against the router's computation on the global field over
the in-process OASIS stand-in (1-2 workers), over MPI, and over a real OASIS3-MCT where pyoasis
is installed."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import eophis_hpc.compat as eophis
from eophis_hpc.oasis import namcouple as nc
from eophis_hpc.compat import group_grids
from eophis_hpc.compat.tunnels import EophisTunnel
from eophis_hpc.oasis import engine as oasis_worker

from mpi_util import APPS, mpiexec
from test_oasis_worker_loopback import _Comm  # the same communicator stand-in

sys.path.insert(0, str(APPS))
import eophis_grids_script as script  # noqa: E402
from eophis_grids_common import expected, field  # noqa: E402

NAMELIST = """&namrun
   nn_it000 = 1
   nn_itend = 6
/
&namdom
   rn_Dt = 2.
/
"""
STEP, NITER = 2, 6
DATES = [STEP * it for it in range(NITER)]  # psi at every date, phi and zeta every other one


@pytest.fixture(autouse=True)
def fresh_compat(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EOPHIS_HPC_TRANSPORT", raising=False)
    (tmp_path / "earth_namelist").write_text(NAMELIST)
    eophis.reset()
    yield
    eophis.reset()


def config() -> dict:
    (cfg,), _ = script.earth_info()
    return cfg


def test_grids_make_groups_in_order_of_first_use():
    cfg = config()
    groups = [g for _, g in group_grids(cfg)]
    assert [(g.grid_names, g.exchanges, g.halo) for g in groups] == [
        (("grid_cycl",), (0,), 2), (("grid_fold", "grid_foldF"), (1, 2), 1)]
    assert (groups[0].grid.east_west, groups[0].grid.south, groups[0].grid.north) == \
        ("closed", "cyclic", "cyclic")
    assert (groups[1].grid.north, groups[1].grid.pivot) == ("fold", "F")
    t = EophisTunnel(**cfg)
    assert [[e.point for e in sub.exchanges] for sub in t.tunnels] == [["T"], ["V", "F"]]
    assert [sub.halo for sub in t.tunnels] == [2, 1]
    assert t.arriving_list() == ["psi", "phi", "zeta"]
    assert t.departure_list() == ["dxpsi", "dypsi", "dxphi", "dyphi", "dxzeta"]
    # a different pivot, or the same grid with another halo, is another group
    other = dict(cfg["grids"], grid_foldF=dict(cfg["grids"]["grid_foldF"], folding=("F", "T")))
    assert len(EophisTunnel(cfg["label"], other, cfg["exchs"]).tunnels) == 3


def test_the_namcouple_is_the_one_eophis_writes():
    """Eophis 1.0.2 (coupling/namcouple.py): one block per field, in exchange order, each with
    its exchange's grid name and size; inputs E_OUT_n -> M_IN_n, outputs M_OUT_n -> E_IN_n."""
    eophis.set_mode("preprod")
    script.preproduction()
    text = open("namcouple").read()
    blocks = []
    n_in = n_out = 0
    for ex in config()["exchs"]:
        for name in ex["in"]:
            blocks += [f"# Earth -- {name} --> Models",
                       f"E_OUT_{n_in} M_IN_{n_in} 1 {ex['freq']} 0 rst.nc EXPORTED"]
            n_in += 1
            blocks += [f"12 10 12 10 {ex['grd']} {ex['grd']} LAG=0", "R 0 R 0"]
        for name in ex["out"]:
            blocks += [f"# Earth <-- {name} -- Models",
                       f"M_OUT_{n_out} E_IN_{n_out} 1 {ex['freq']} 0 rst.nc EXPORTED"]
            n_out += 1
            blocks += [f"12 10 12 10 {ex['grd']} {ex['grd']} LAG=0", "R 0 R 0"]
    want = ["$STRINGS", "# ======= Tunnel TO_EARTH =======", *blocks, "#", "$END"]
    lines = text.splitlines()
    start = lines.index("$STRINGS")
    assert lines[start:start + len(want)] == want
    doc = nc.read_namcouple("namcouple")
    assert doc.nfields == 8 and doc.runtime == int(NITER * STEP * 1.01)


# ---------------------------------------------------------------------- the OASIS stand-in
class Loopback:
    """Stand-in for transport.oasis.Component (NOT OASIS: see test_oasis_worker_loopback.py):
    ``get`` answers the points of the variable's partition from the global field of the input
    the namcouple alias names, ``put`` records the points into a global array."""

    def __init__(self, rank, size, log, aliases):
        self.localcomm = _Comm(rank, size)
        self.log, self.aliases = log, aliases

    def orange_partition(self, offsets, sizes, global_size):
        return np.concatenate([np.arange(o, o + s) for o, s in zip(offsets, sizes)]), global_size

    def box_partition(self, offset, nx_loc, ny_loc, nx_glb, global_size=-1):
        pts = (offset + np.arange(ny_loc)[:, None] * nx_glb + np.arange(nx_loc)[None, :]).ravel()
        return pts, global_size

    def variable(self, name, part, direction, bundle):
        return LoopbackVariable(self, name, part, direction, bundle)

    def enddef(self):
        pass

    def terminate(self):
        pass


class LoopbackVariable:
    def __init__(self, comp, alias, part, direction, bundle):
        self.comp, self.alias, self.direction, self.bundle = comp, alias, direction, bundle
        self.points, self.global_size = part
        self.active = True
        comp.log.setdefault("vars", []).append((alias, direction, bundle))

    def periods(self):
        return []

    def get(self, date, buf):
        f = self.comp.aliases[self.alias]
        assert buf.flags.f_contiguous and buf.shape == (self.points.size, self.bundle)
        glb = field(f.name, date, self.bundle, f.nx, f.ny).reshape(self.bundle, -1)
        buf[...] = glb[:, self.points].T

    def put(self, date, buf):
        f = self.comp.aliases[self.alias]
        out = self.comp.log.setdefault("puts", {}).setdefault(
            (f.name, date), np.full((self.bundle, self.global_size), np.nan))
        assert np.all(np.isnan(out[:, self.points])), "a point was sent twice"
        out[:, self.points] = buf.T


@pytest.mark.parametrize("workers", [1, 2])
def test_two_grid_tunnel_over_the_oasis_stand_in(monkeypatch, workers):
    eophis.set_mode("preprod")
    script.preproduction()
    cfg = config()
    aliases = {f.py_alias: f for f in nc.coupling_fields([cfg])}
    log: dict = {}
    for rank in reversed(range(workers)):  # each worker in turn (the stand-in never blocks);
        # worker 0 last, since it writes eophis.out
        eophis.reset()
        monkeypatch.setattr(oasis_worker.oasis, "Component",
                            lambda name, comm, r=rank: Loopback(r, workers, log, aliases))
        eophis.set_mode("prod")
        eophis.set_transport("oasis")
        script.production()
        eophis.close_tunnels()
    # the variables of both groups, named as Eophis numbers them over the whole tunnel
    assert sorted({a for a, _, _ in log["vars"]}) == sorted(aliases)
    for date in DATES:
        want = expected(cfg, date)
        assert sorted(n for (n, d) in log["puts"] if d == date) == sorted(want)
        for name, glb in want.items():
            got = log["puts"][(name, date)].reshape(glb.shape)
            np.testing.assert_array_equal(got, glb, err_msg=f"{name} at date {date}")
    out = open("eophis.out").read()
    assert "Router called 6 times" in out  # once per date, whichever groups are due
    assert "Iteration 1: 0s -- 0:00:00 \n   Treating psi, phi, zeta received through tunnel " \
           "TO_EARTH\n   Sending back dxpsi, dypsi, dxphi, dyphi, dxzeta through tunnel TO_EARTH" in out
    assert "Iteration 2: 2s -- 0:00:02 \n   Treating psi received through tunnel TO_EARTH\n" \
           "   Sending back dxpsi, dypsi through tunnel TO_EARTH" in out
    assert out.rstrip().endswith("Closing tunnels")


def test_eophis_out_ends_as_eophis_at_exit(tmp_path):
    """Eophis closes the tunnels and writes 'EOPHIS run finished' when Python exits."""
    code = ("import eophis_hpc.compat as eophis\n"
            "eophis.set_mode('preprod')\n"
            "eophis.info('hello')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "eophis.out").read_text().splitlines()[-5:] == [
        "hello", "", "  Closing tunnels", "", "EOPHIS run finished"]


# ---------------------------------------------------------------------- coupled runs
def _run(cmd, cwd, timeout, env=None):
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"did not end within {timeout} s (hang?): {' '.join(cmd)}\n{exc.stdout}\n"
                    f"{exc.stderr}")


def _coupled(tmp_path, model_app, px, py, workers, env=None):
    s = str(APPS / "eophis_grids_script.py")
    pre = _run([sys.executable, s, "--exec", "preprod"], tmp_path, 60)
    assert pre.returncode == 0, pre.stderr
    res = _run([mpiexec(), "-n", str(px * py), sys.executable, str(APPS / model_app), str(px),
                str(py), ":", "-n", str(workers), sys.executable, s, "--exec", "prod"],
               tmp_path, 180, env)
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    assert res.stdout.count(f"OK after {NITER} coupled dates") == px * py, res.stdout
    assert res.stdout.count("eophis grids script: OK") == workers
    out = (tmp_path / "eophis.out").read_text()
    assert f"Router called {NITER} times" in out and out.rstrip().endswith("EOPHIS run finished")
    assert "ERROR" not in (tmp_path / "eophis.err").read_text()


@pytest.mark.mpi
@pytest.mark.parametrize("px,py,workers", [(2, 1, 2), (1, 2, 1)])
def test_two_grid_tunnel_over_mpi(tmp_path, px, py, workers):
    _coupled(tmp_path, "eophis_grids_model.py", px, py, workers)


@pytest.mark.mpi
@pytest.mark.skipif(importlib.util.find_spec("pyoasis") is None,
                    reason="pyoasis (OASIS3-MCT's Python API) is not installed: it is built with "
                           "OASIS3-MCT from source (docs/usage.md, 'OASIS transport')")
@pytest.mark.parametrize("px,py,workers", [(2, 1, 2), (1, 1, 1)])
def test_two_grid_tunnel_over_real_oasis(tmp_path, px, py, workers):
    _coupled(tmp_path, "eophis_grids_oasis_model.py", px, py, workers,
             {"EOPHIS_HPC_TRANSPORT": "oasis"})
