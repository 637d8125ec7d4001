"""eophis_hpc.compat: Fortran namelists, Eophis dictionaries -> tunnels, the Eophis API in
preproduction and production, logs, and an Eophis script run unchanged (but for its import) over
the MPI transport against a Python model side, checked bit for bit against the global field."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eophis_hpc as eh
import eophis_hpc.compat as eophis
from eophis_hpc.oasis import namcouple as nc
from eophis_hpc.compat import Domains, Freqs, FortranNamelist, NamelistError
from eophis_hpc.compat.tunnels import EophisTunnel, from_xyz, grid_from_dict, xyz

from mpi_util import APPS, mpiexec

NEMO_NAMELIST = """!! NEMO/OCE :   Reference namelist_ref
!-----------------------------------------------------------------------
&namrun        !   parameters of the run
!-----------------------------------------------------------------------
   nn_no       =       0   !  Assimilation cycle index
   cn_exp      =  "ORCA2"  !  experience name
   nn_it000    =       1   !  first time step
   nn_itend    =    5475   !  last  time step (std 5475)
   ln_rstart   = .false.   !  start from rest (F) or from a restart file (T)
      nn_euler    =    1   !  = 0 : start with forward time step if ln_rstart=T
   nn_stocklist = 0,0,0,0,0,0,0,0,0,0 ! List of timesteps when a restart file is to be written
   cn_ocerst_indir = "."   !  directory from which to read input ocean restarts
/
&namdom        !   time and space domain
   rn_Dt       =  5400.    !  time step for the dynamics and tracer
   rn_atfp     =  0.1, ln_meshmask = .true., rn_list = 3*1.d0 2.5e1
/
"""


@pytest.fixture(autouse=True)
def fresh_compat(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EOPHIS_HPC_TRANSPORT", raising=False)
    eophis.reset()
    yield
    eophis.reset()


# ---------------------------------------------------------------------- Fortran namelists
def test_nemo_namelist_values():
    nml = FortranNamelist(text=NEMO_NAMELIST)
    assert nml.get("rn_Dt", "nn_itend", "nn_it000") == [5400.0, 5475, 1]
    run = nml["namrun"]
    assert run["cn_exp"] == "ORCA2" and run["ln_rstart"] is False and run["nn_euler"] == 1
    assert run["nn_stocklist"] == [0] * 10 and run["cn_ocerst_indir"] == "."
    dom = nml["NAMDOM"]
    assert dom["rn_atfp"] == 0.1 and dom["ln_meshmask"] is True
    assert dom["rn_list"] == [1.0, 1.0, 1.0, 25.0]
    with pytest.raises(KeyError, match="'rn_rdt' is not in"):
        nml.get("rn_rdt")


def test_namelist_file(tmp_path):
    (tmp_path / "namelist_cfg").write_text(NEMO_NAMELIST)
    assert FortranNamelist(str(tmp_path / "namelist_cfg")).get("rn_Dt") == [5400.0]


@pytest.mark.parametrize("text,line,message", [
    ("&a\n x = 1\n", 1, "not closed"),
    ("x = 1\n", 1, "expected '&group'"),
    ("&a\n x 1 /", 2, "expected '='"),
    ("&a\n\n x = 'abc /", 3, "unterminated string"),
    ("&a\n x = abc /", 2, "not a value"),
    ("&a\n x = /", 2, "no value"),
    ("&a x = 1 /\n&a y = 2 /", 2, "appears twice"),
    ("&a\n x = 0*3 /", 2, "repeat count"),
    ("&a\n x = 1 = 2 /", 2, "unexpected"),
    ("& a x = 1 /", 1, "group name"),
    ("&a x = 1\n&b y = 2 /", 2, "before &a is closed"),
])
def test_malformed_namelists_give_the_line(text, line, message):
    with pytest.raises(NamelistError, match=message) as err:
        FortranNamelist(text=text)
    assert err.value.line == line
    assert str(err.value).startswith(f"namelist:{line}: ")


NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
SCALARS = st.one_of(st.integers(-10**6, 10**6), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False, width=64),
                    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=6))


def _render(v) -> str:
    if isinstance(v, bool):
        return ".true." if v else ".false."
    if isinstance(v, float):
        return repr(v) if ("." in repr(v) or "e" in repr(v)) else repr(v) + "."
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return str(v)


@settings(max_examples=150, deadline=None)
@given(groups=st.dictionaries(NAMES, st.dictionaries(
    NAMES, st.one_of(SCALARS, st.lists(SCALARS, min_size=2, max_size=4)), max_size=4),
    min_size=1, max_size=3), sep=st.sampled_from([",", " ", "\n"]))
def test_namelists_read_back_what_was_written(groups, sep):
    lines = []
    for g, values in groups.items():
        lines.append(f"&{g}  ! group")
        for k, v in values.items():
            vals = v if isinstance(v, list) else [v]
            lines.append(f"  {k} = " + sep.join(_render(x) for x in vals) + " ! comment")
        lines.append("/")
    nml = FortranNamelist(text="\n".join(lines))
    assert set(nml.groups) == set(groups)
    for g, values in groups.items():
        assert nml[g] == values


@settings(max_examples=200, deadline=None)
@given(data=st.data(), junk=st.text(alphabet="&/=,'\"!()*.x1 ", min_size=1, max_size=4))
def test_malformed_namelists_fail_cleanly(data, junk):
    text = NEMO_NAMELIST
    k = data.draw(st.integers(0, len(text)), label="at")
    bad = text[:k] + junk + text[k:]
    try:
        FortranNamelist(text=bad)
    except NamelistError as err:
        assert 1 <= err.line <= bad.count("\n") + 1


# ---------------------------------------------------------------------- dictionaries -> eh
def test_eophis_grids_map_to_eh_grids():
    g, h = grid_from_dict("eORCA025", Domains.eORCA025)
    assert (g.nx, g.ny, g.east_west, g.south, g.north, g.pivot, g.point, h) == \
        (1440, 1206, "cyclic", "closed", "fold", "T", "T", 1)
    assert grid_from_dict("v", Domains.eORCA025_V)[0].point == "V"
    g, h = grid_from_dict("demo", Domains.demo)
    assert (g.east_west, g.south, g.north, h) == ("closed", "closed", "closed", 0)
    g, _ = grid_from_dict("c", {"npts": (10, 10), "halos": 2, "bnd": ("close", "cyclic")})
    assert (g.east_west, g.south, g.north) == ("closed", "cyclic", "cyclic")
    g, _ = grid_from_dict("f", {"npts": (10, 10), "bnd": ("cyclic", "nfold"), "folding": ("V", "F")})
    assert (g.north, g.pivot, g.point) == ("fold", "F", "V")
    for bad, msg in (({"npts": (10,)}, "npts"), ({"npts": (4, 4), "bnd": ("fold", "close")}, "x boundary"),
                     ({"npts": (4, 4), "bnd": ("close", "wall")}, "y boundary"),
                     ({"npts": (4, 4), "halos": 9, "bnd": ("cyclic", "close")}, "halos")):
        with pytest.raises(ValueError, match=msg):
            grid_from_dict("x", bad)


def test_tunnel_dict_maps_to_one_eh_tunnel():
    cfg = {"label": "T", "grids": {"gT": dict(Domains.eORCA025), "gU": dict(Domains.eORCA025_U)},
           "exchs": [{"freq": Freqs.HOURLY, "grd": "gT", "lvl": 3, "in": ["t"], "out": ["ft"]},
                     {"freq": Freqs.DAILY, "grd": "gU", "in": ["u"], "out": []},
                     {"freq": Freqs.STATIC, "grd": "gT", "in": ["m"], "out": []}]}
    t = EophisTunnel(**cfg)
    tun = t.tunnel
    assert tun.transport == "mpi" and tun.halo == 1 and tun.grid.nx == 1440
    assert [(e.every, e.static, e.levels, e.point) for e in tun.exchanges] == [
        (3600, False, 3, "T"), (86400, False, 1, "U"), (None, True, 1, "T")]
    assert tun.schedule.due(0, 7200) and not tun.schedule.due(1, 7200)  # steps are seconds
    assert t.arriving_list() == ["t", "u"] and t.departure_list() == ["ft"]
    two = EophisTunnel("T", {"a": {"npts": (10, 10), "halos": 1}, "b": {"npts": (10, 10), "halos": 2}},
                       [{"freq": 1, "grd": "a", "in": ["x"]}, {"freq": 1, "grd": "b", "in": ["y"]}])
    assert [t.halo for t in two.tunnels] == [1, 2]  # one eh tunnel per grid group
    with pytest.raises(AttributeError, match="2 grid groups"):
        two.tunnel
    with pytest.raises(ValueError, match="whole number of seconds"):
        EophisTunnel("T", {"a": {"npts": (10, 10)}}, [{"freq": 0.5, "grd": "a", "in": ["x"]}])


def test_router_sees_xyz_views_and_returns_without_copy():
    t = EophisTunnel("T", {"g": {"npts": (6, 4), "halos": 1}},
                     [{"freq": 60, "grd": "g", "lvl": 2, "in": ["a", "b"], "out": ["c"]}])
    batch = np.arange(2 * 6 * 8, dtype=np.float64).reshape(1, 2, 6, 8)  # (1, z, y+2h, x+2h)
    seen = {}

    def router(a, b):
        seen["a"], seen["b"] = a, b
        return {"c": a * 2.0}

    joint = t.joint_router(router, 60, "threads")
    out = joint.for_group(0)(step=60, a=batch, b=None, m=batch)
    a = seen["a"]
    assert a.shape == (8, 6, 2) and np.shares_memory(a, batch) and seen["b"] is None
    assert a[3, 2, 1] == batch[0, 1, 2, 3]
    assert out["c"].shape == (1, 2, 6, 8) and out["c"].flags.c_contiguous  # no copy needed
    np.testing.assert_array_equal(out["c"], batch * 2.0)
    assert np.shares_memory(from_xyz(a, "a"), batch) and xyz(batch).base is not None


# ---------------------------------------------------------------------- Eophis API, one process
CFG = {"label": "TO_EARTH", "grids": {"demo": Domains.demo},
       "exchs": [{"freq": Freqs.HOURLY, "grd": "demo", "lvl": 1, "in": ["sst"], "out": ["sst_var"]},
                 {"freq": Freqs.STATIC, "grd": "demo", "lvl": 1, "in": ["msk"], "out": []}]}


def test_preproduction_writes_the_namcouple(tmp_path):
    eophis.set_mode("preprod")
    earth, = eophis.register_tunnels([CFG])
    assert isinstance(earth, EophisTunnel) and earth.label == "TO_EARTH"
    eophis.write_coupling_namelist(simulation_time=100 * 1200)
    doc = nc.read_namcouple(str(tmp_path / "namcouple"))
    assert doc.nfields == 3 and doc.runtime == int(100 * 1200 * 1.01)
    assert doc.block("E_OUT_1", "M_IN_1").freq == doc.runtime  # static: the run length
    assert "Writing namcouple" in (tmp_path / "eophis.out").read_text()
    with pytest.raises(eophis.EophisAbort, match="production mode"):
        eophis.open_tunnels()


def test_production_with_oasis_checks_the_namcouple(tmp_path):
    eophis.set_mode("preprod")
    eophis.register_tunnels([CFG])
    eophis.write_coupling_namelist(simulation_time=3600)
    eophis.reset()
    eophis.set_transport("oasis")
    changed = dict(CFG, exchs=[dict(CFG["exchs"][0], freq=Freqs.DAILY), CFG["exchs"][1]])
    with pytest.raises(eophis.EophisAbort, match="'sst' of tunnel TO_EARTH .*period 3600 s, "
                                                  "expected 86400 s"):
        eophis.register_tunnels([changed])
    err = (tmp_path / "eophis.err").read_text()
    assert err.startswith("ERROR [RANK:0] from ") and "namcouple:" in err
    eophis.reset()
    eophis.set_transport("oasis")
    eophis.register_tunnels([CFG])  # the same tunnels: accepted
    with pytest.raises(eophis.EophisAbort, match="preproduction mode"):
        eophis.write_coupling_namelist(3600)


def test_modes_logs_and_errors(tmp_path):
    eophis.info("hello")
    eophis.warning("careful")
    err = (tmp_path / "eophis.err").read_text()
    assert "WARNING [RANK:0] from " in err and __file__ in err and ": careful" in err
    out = (tmp_path / "eophis.out").read_text()
    assert "hello" in out and "Warning raised by rank 0" in out
    with pytest.raises(eophis.EophisAbort, match="bad config"):
        eophis.abort("bad config")
    with pytest.raises(eophis.EophisAbort, match="register_tunnels: .*grid 'nope'"):
        eophis.register_tunnels([dict(CFG, exchs=[dict(CFG["exchs"][0], grd="nope")])])
    with pytest.raises(ValueError, match="set_transport"):
        eophis.set_transport("udp")
    assert eophis.get_transport() == "mpi"


def test_loop_refuses_to_start_before_static_fields(tmp_path):
    earth, = eophis.register_tunnels([CFG])
    loop = eophis.all_in_all_out(geo_model=earth, step=1200, niter=3)(lambda **kw: {})
    with pytest.raises(eophis.EophisAbort, match="open_tunnels"):
        eophis.starter(loop)
    assert eophis.tunnels_ready() is False


def test_oasis_transport_without_pyoasis_says_how_to_install():
    pytest.importorskip("mpi4py")
    try:
        import pyoasis  # noqa: F401
        pytest.skip("pyoasis is installed here: the missing-pyoasis message cannot be checked")
    except ImportError:
        pass
    t = eh.Tunnel(eh.Grid(8, 6), 1, [eh.Exchange(inputs=["a"], every=1)], dt=60,
                  transport="oasis", verbose=False)
    with pytest.raises(ImportError, match="built with OASIS3-MCT from source.*gitlab.com/cerfacs"):
        t.open()
    with pytest.raises(ValueError, match="transport='udp' is not one of"):
        eh.Tunnel(eh.Grid(8, 6), 1, [eh.Exchange(inputs=["a"])], transport="udp")


# ---------------------------------------------------------------------- the script, over MPI
NAMELIST = """&namrun
   nn_it000 = 1
   nn_itend = 75
/
&namdom
   rn_Dt = 1200.
/
"""


def _run(cmd, cwd, timeout):
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"did not end within {timeout} s (hang?): {' '.join(cmd)}\n{exc.stdout}\n"
                    f"{exc.stderr}")


@pytest.mark.mpi
@pytest.mark.parametrize("px,py,workers", [(2, 1, 2), (1, 3, 1)])
def test_eophis_script_runs_unchanged_over_mpi(tmp_path, px, py, workers):
    (tmp_path / "earth_namelist").write_text(NAMELIST)
    script, model = str(APPS / "eophis_script.py"), str(APPS / "eophis_model.py")
    pre = _run([sys.executable, script, "--exec", "preprod"], tmp_path, 60)
    assert pre.returncode == 0, pre.stderr
    doc = nc.read_namcouple(str(tmp_path / "namcouple"))
    assert doc.nfields == 5 and doc.runtime == int(75 * 1200 * 1.01)
    assert [b.source for b in doc.blocks] == ["E_OUT_0", "M_OUT_0", "E_OUT_1", "M_OUT_1", "E_OUT_2"]
    res = _run([mpiexec(), "-n", str(px * py), sys.executable, model, str(px), str(py), ":",
                "-n", str(workers), sys.executable, script, "--exec", "prod"], tmp_path, 120)
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    # every model rank checked every coupled step bit for bit; the 25 dates are the hourly ones
    assert res.stdout.count("OK after 25 coupled steps") == px * py, res.stdout
    assert res.stdout.count("eophis script: OK") == workers
    out = (tmp_path / "eophis.out").read_text()
    assert "Static receive of msk" in out and "Router called 25 times" in out
    assert "ERROR" not in (tmp_path / "eophis.err").read_text()
