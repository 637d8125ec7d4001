"""The namcouple: written as Eophis writes it, an existing one completed (kept as namcouple_ref),
read back and checked against the tunnels with errors naming the field and the line."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eophis_hpc as eh
from eophis_hpc.oasis import namcouple as nc

TUNNEL = {"label": "TO_EARTH",
          "grids": {"demo": {"npts": (720, 603)}},
          "exchs": [{"freq": 3600, "grd": "demo", "lvl": 1, "in": ["sst"], "out": ["sst_var"]},
                    {"freq": 86400, "grd": "demo", "lvl": 3, "in": ["svt"], "out": ["svt_var"]},
                    {"freq": nc.STATIC, "grd": "demo", "lvl": 1, "in": ["msk"], "out": []}]}
SECOND = {"label": "TO_OCEAN", "grids": {"g": {"npts": (10, 10)}},
          "exchs": [{"freq": 1200, "grd": "g", "in": ["u", "v"], "out": ["uv"]}],
          "py_aliases": {"uv": "MY_UV"}}
SIM = 2000 * 1200  # 2000 steps of 1200 s: $RUNTIME = int(1.01 * 2400000) = 2424000

EXPECTED_BLOCKS = """$STRINGS
# ======= Tunnel TO_EARTH =======
# Earth -- sst --> Models
E_OUT_0 M_IN_0 1 3600 0 rst.nc EXPORTED
720 603 720 603 demo demo LAG=0
R 0 R 0
# Earth <-- sst_var -- Models
M_OUT_0 E_IN_0 1 3600 0 rst.nc EXPORTED
720 603 720 603 demo demo LAG=0
R 0 R 0
# Earth -- svt --> Models
E_OUT_1 M_IN_1 1 86400 0 rst.nc EXPORTED
720 603 720 603 demo demo LAG=0
R 0 R 0
# Earth <-- svt_var -- Models
M_OUT_1 E_IN_1 1 86400 0 rst.nc EXPORTED
720 603 720 603 demo demo LAG=0
R 0 R 0
# Earth -- msk --> Models
E_OUT_2 M_IN_2 1 2424000 0 rst.nc EXPORTED
720 603 720 603 demo demo LAG=0
R 0 R 0
#
$END
"""

USER_NAMCOUPLE = """# A model's own namcouple (ocean <-> atmosphere)
$NFIELDS
1
$END
$RUNTIME
86400
$END
$NLOGPRT
2 0
$END
$STRINGS
O_SSTSST A_SST 1 3600 1 sstoc.nc EXPORTED
182 149 96 72 torc lmdz LAG=3600 SEQ=1
P 2 P 0
SCRIPR
BILINEAR LR SCALAR LATLON 1
$END
"""


def test_fresh_namcouple_has_eophis_layout(tmp_path):
    fields = nc.coupling_fields([TUNNEL])
    path = nc.write_namcouple(fields, SIM, str(tmp_path))
    text = open(path).read()
    assert text.startswith(nc.HEADER + "\n$NFIELDS\n5\n$END\n")
    assert "$RUNTIME\n2424000\n$END\n" in text
    assert "$NLOGPRT\n1 0\n$END\n" in text
    assert text.endswith(EXPECTED_BLOCKS)
    assert not os.path.exists(tmp_path / "namcouple_ref")  # nothing existed: nothing to keep
    doc = nc.read_namcouple(path)
    assert (doc.nfields, doc.runtime) == (5, 2424000)
    nc.check_namcouple(doc, fields)


def test_aliases_count_over_every_tunnel():
    fields = nc.coupling_fields([TUNNEL, SECOND])
    names = [(f.name, f.source, f.target) for f in fields]
    assert names[-3:] == [("u", "E_OUT_3", "M_IN_3"), ("v", "E_OUT_4", "M_IN_4"),
                          ("uv", "MY_UV", "E_IN_2")]
    with pytest.raises(ValueError, match="alias 'M_IN_0' is used by field"):
        nc.coupling_fields([TUNNEL, dict(SECOND, py_aliases={"u": "M_IN_0"})])
    with pytest.raises(ValueError, match="whole number of seconds"):
        nc.coupling_fields([dict(SECOND, exchs=[dict(SECOND["exchs"][0], freq=1.5)])])
    with pytest.raises(ValueError, match="uses grid 'h'"):
        nc.coupling_fields([dict(SECOND, exchs=[dict(SECOND["exchs"][0], grd="h")])])


def test_existing_namcouple_is_kept_and_completed(tmp_path):
    (tmp_path / "namcouple").write_text(USER_NAMCOUPLE)
    fields = nc.coupling_fields([TUNNEL, SECOND])
    nc.write_namcouple(fields, SIM, str(tmp_path))
    assert (tmp_path / "namcouple_ref").read_text() == USER_NAMCOUPLE
    doc = nc.read_namcouple(str(tmp_path / "namcouple"))
    assert doc.nfields == 1 + len(fields) and doc.runtime == 2424000
    user = doc.block("O_SSTSST", "A_SST")  # the model's own field is untouched
    assert [t for _, t in user.body] == ["182 149 96 72 torc lmdz LAG=3600 SEQ=1", "P 2 P 0",
                                          "SCRIPR", "BILINEAR LR SCALAR LATLON 1"]
    nc.check_namcouple(doc, fields)
    first = (tmp_path / "namcouple").read_text()
    # a second preproduction completes namcouple_ref again: same file, no duplicated field
    nc.write_namcouple(fields, SIM, str(tmp_path))
    assert (tmp_path / "namcouple").read_text() == first
    assert (tmp_path / "namcouple_ref").read_text() == USER_NAMCOUPLE
    # and one over our own output (namcouple_ref removed) replaces our fields, not duplicates
    os.remove(tmp_path / "namcouple_ref")
    nc.write_namcouple(fields, SIM, str(tmp_path))
    assert not os.path.exists(tmp_path / "namcouple_ref")
    assert nc.read_namcouple(str(tmp_path / "namcouple")).nfields == 1 + len(fields)


def test_runtime_is_never_shortened(tmp_path):
    (tmp_path / "namcouple_ref").write_text(USER_NAMCOUPLE.replace("86400\n$END",
                                                                    "99999999\n$END"))
    fields = nc.coupling_fields([TUNNEL])
    nc.write_namcouple(fields, SIM, str(tmp_path))
    doc = nc.read_namcouple(str(tmp_path / "namcouple"))
    assert doc.runtime == 99999999
    assert doc.block("E_OUT_2", "M_IN_2").freq == 99999999  # static: the run length
    nc.check_namcouple(doc, fields)


def _written(tmp_path, tunnels=(TUNNEL,)):
    fields = nc.coupling_fields(list(tunnels))
    path = nc.write_namcouple(fields, SIM, str(tmp_path))
    return fields, open(path).read()


@pytest.mark.parametrize("old,new,field,message", [
    ("E_OUT_1 M_IN_1 1 86400", "E_OUT_1 M_IN_1 1 43200", "svt", "period 43200 s, expected 86400"),
    ("E_OUT_2 M_IN_2 1 2424000", "E_OUT_2 M_IN_2 1 3600", "msk", "the run length"),
    ("M_OUT_0 E_IN_0 1 3600 0 rst.nc EXPORTED\n720 603", "M_OUT_0 E_IN_0 1 3600 0 rst.nc "
     "EXPORTED\n720 602", "sst_var", "grid sizes 720 602 720 603"),
    ("E_OUT_1 M_IN_1 1 86400 0 rst.nc EXPORTED\n720 603 720 603 demo demo LAG=0",
     "E_OUT_1 M_IN_1 1 86400 0 rst.nc EXPORTED\n720 603 720 603 demo demo LAG=1200", "svt",
     "LAG=1200, expected LAG=0"),
    ("E_OUT_0 M_IN_0 1 3600 0 rst.nc EXPORTED", "E_OUT_0 M_IN_0 1 3600 0 rst.nc EXPOUT", "sst",
     "status EXPOUT"),
    ("E_OUT_0 M_IN_0 1 3600 0 rst.nc EXPORTED\n720 603 720 603 demo demo LAG=0\nR 0 R 0",
     "E_OUT_0 M_IN_0 1 3600 0 rst.nc EXPORTED\n720 603 720 603 demo demo LAG=0\nP 2 P 2", "sst",
     "periodicity P 2 P 2"),
    ("E_OUT_1 M_IN_1", "E_OUT_1 M_IN_9", "svt", "not in the namcouple"),
])
def test_mismatch_names_the_first_field_that_differs(tmp_path, old, new, field, message):
    fields, text = _written(tmp_path)
    assert old in text
    bad = text.replace(old, new)
    doc = nc.Namcouple(bad, "namcouple")
    with pytest.raises(nc.NamcoupleError, match=message) as err:
        nc.check_namcouple(doc, fields)
    assert err.value.field == field
    assert f"{field!r} of tunnel TO_EARTH" in str(err.value)
    if err.value.line is not None:  # the line named is the one that differs
        changed = [n for n, (a, b) in enumerate(zip(text.split("\n"), bad.split("\n")), 1) if a != b]
        assert err.value.line in changed


def test_tunnel_grid_change_is_caught(tmp_path):
    fields, text = _written(tmp_path)
    moved = dict(TUNNEL, grids={"demo": {"npts": (720, 604)}})
    with pytest.raises(nc.NamcoupleError, match="'sst' of tunnel TO_EARTH.*grid sizes"):
        nc.check_namcouple(nc.Namcouple(text), nc.coupling_fields([moved]))


@pytest.mark.parametrize("mutate,line_of,message", [
    (lambda t: t.replace("$NFIELDS\n5", "$NFIELDS\nfive"), "five", "expected an integer"),
    (lambda t: t.replace("$NFIELDS\n5", "$NFIELDS\n4"), "4", "says 4 fields"),
    (lambda t: t.replace("1 86400 0 rst.nc", "1 day 0 rst.nc"), "1 day 0", "coupling period"),
    (lambda t: t.replace("R 0 R 0\n# Earth -- svt", "R 0 X 0\n# Earth -- svt"), "R 0 X 0",
     "periodicity line"),
    (lambda t: t.replace("720 603 720 603 demo demo LAG=0\nR 0 R 0\n# Earth -- msk",
                         "720 six 720 603 demo demo LAG=0\nR 0 R 0\n# Earth -- msk"),
     "720 six", "NX_SRC"),
    (lambda t: t.replace("$RUNTIME\n2424000\n$END", "$RUNTIME\n2424000"), "$NLOGPRT",
     "section \\$RUNTIME \\(line 6\\) is not closed by \\$END"),
    (lambda t: t.replace("$NLOGPRT", "$nlog prt"), "$nlog prt", "expected a \\$SECTION"),
    (lambda t: t.replace("# Earth -- svt --> Models\n", "# Earth -- svt --> Models\n\n"), "",
     "blank line"),
    (lambda t: t.replace("$NLOGPRT\n1 0", "$NLOGPRT\n1 x"), "1 x", "integers"),
    (lambda t: t.replace("$STRINGS\n", "$STRINGS\nhello world\n"), "hello world",
     "expected a field line"),
    (lambda t: "stray\n" + t, "stray", "expected a \\$SECTION"),
])
def test_parse_errors_give_the_line(tmp_path, mutate, line_of, message):
    _, text = _written(tmp_path)
    bad = mutate(text)
    assert bad != text
    with pytest.raises(nc.NamcoupleError, match=message) as err:
        nc.Namcouple(bad, "nc")
    lines = bad.split("\n")
    assert err.value.line is not None
    assert lines[err.value.line - 1].strip() == line_of or line_of in lines[err.value.line - 1]
    assert str(err.value).startswith(f"nc:{err.value.line}: ")


def test_missing_file_says_run_preproduction(tmp_path):
    with pytest.raises(nc.NamcoupleError, match="preproduction"):
        nc.read_namcouple(str(tmp_path / "namcouple"))


def test_tunnel_dict_of_an_eophis_hpc_tunnel():
    g = eh.Grid.preset("ORCA2")
    t = eh.Tunnel(g, 1, [eh.Exchange(inputs=["u"], outputs=["fu"], every=3),
                         eh.Exchange(inputs=["m"], static=True)], dt=1200)
    fields = nc.coupling_fields([nc.tunnel_dict(t, "T")])
    assert [(f.name, f.freq, f.grid, f.nx, f.ny) for f in fields] == [
        ("u", 3600, "ORCA2", 180, 148), ("fu", 3600, "ORCA2", 180, 148),
        ("m", nc.STATIC, "ORCA2", 180, 148)]
    no_dt = eh.Tunnel(g, 1, [eh.Exchange(inputs=["u"], every=3)])
    with pytest.raises(ValueError, match="needs dt"):
        nc.tunnel_dict(no_dt)


# ---------------------------------------------------------------------- malformed, at random
MUTATIONS = ("replace_token", "delete_line", "duplicate_line", "blank_line", "swap_lines")


@settings(max_examples=300, deadline=None)
@given(data=st.data(), kind=st.sampled_from(MUTATIONS),
       junk=st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                           blacklist_characters="\n\r"), min_size=1, max_size=8))
def test_malformed_namcouples_fail_with_a_line_or_a_field(tmp_path_factory, data, kind, junk):
    fields = nc.coupling_fields([TUNNEL, SECOND])
    text = nc.complete(None, fields, nc.runtime_of(SIM))
    lines = text.split("\n")[:-1]
    k = data.draw(st.integers(0, len(lines) - 1), label="line")
    if kind == "replace_token":
        tok = lines[k].split() or [""]
        p = data.draw(st.integers(0, len(tok) - 1), label="token")
        tok[p] = junk.strip() or "x"
        lines[k] = " ".join(tok)
    elif kind == "delete_line":
        del lines[k]
    elif kind == "duplicate_line":
        lines.insert(k, lines[k])
    elif kind == "blank_line":
        lines.insert(k, "")
    else:
        j = data.draw(st.integers(0, len(lines) - 1), label="other")
        lines[k], lines[j] = lines[j], lines[k]
    bad = "\n".join(lines) + "\n"
    try:
        doc = nc.Namcouple(bad, "nc")
        nc.check_namcouple(doc, fields)
    except nc.NamcoupleError as err:
        # a parse error names a line of the file; a check error names a field of the tunnels
        assert err.line is None or 1 <= err.line <= len(lines)
        assert (err.line is not None or err.field in {f.name for f in fields}
                or "no $" in str(err))
        return
    # accepted: then every field really is there as the tunnels want it
    for f in fields:
        b = doc.block(f.source, f.target)
        assert b is not None and b.status == "EXPORTED"
        assert b.freq == (doc.runtime if f.freq == nc.STATIC else f.freq)
        assert b.grid_line()[1] == (f.nx, f.ny, f.nx, f.ny)


def test_static_fields_and_very_long_runs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="static fields"):
        nc.write_namcouple(nc.coupling_fields([TUNNEL]), 10**8, str(tmp_path))
    no_static = dict(TUNNEL, exchs=TUNNEL["exchs"][:2])
    nc.write_namcouple(nc.coupling_fields([no_static]), 10**8, str(tmp_path))


def test_a_lagged_exchange_is_oasis_lag_on_its_outputs(tmp_path):
    """Exchange(lag=L) over OASIS: LAG = L periods (seconds) on the fields the workers send
    back, 0 on the model's; a namcouple whose LAG differs is refused naming the field."""
    g = eh.Grid(20, 10, name="g")
    t = eh.Tunnel(g, 1, [eh.Exchange(inputs=["u"], outputs=["fu", "gu"], every=3, lag=2),
                         eh.Exchange(inputs=["v"], outputs=["fv"], freq=7200, lag=1)],
                  dt=600, transport="oasis")
    fields = nc.coupling_fields([nc.tunnel_dict(t, "T")])
    assert {f.name: f.lag for f in fields} == {"u": 0, "fu": 3600, "gu": 3600, "v": 0, "fv": 7200}
    path = nc.write_namcouple(fields, 36000, str(tmp_path))
    text = open(path).read()
    assert "M_OUT_0 E_IN_0 1 1800 0 rst.nc EXPORTED\n20 10 20 10 g g LAG=+3600" in text
    assert "E_OUT_0 M_IN_0 1 1800 0 rst.nc EXPORTED\n20 10 20 10 g g LAG=0" in text
    nc.check_namcouple(nc.read_namcouple(path), fields)
    stale = nc.Namcouple(text.replace("LAG=+7200", "LAG=0"), path)
    with pytest.raises(nc.NamcoupleError, match=r"LAG=0, expected LAG=\+7200") as err:
        nc.check_namcouple(stale, fields)
    assert err.value.field == "fv"


def test_oasis_lag_takes_its_first_values_from_the_oasis_restart():
    from eophis_hpc.oasis.engine import OasisSession
    g = eh.Grid(20, 10, name="g")
    t = eh.Tunnel(g, 1, [eh.Exchange(inputs=["u"], outputs=["fu"], lag=1, initial=2.0)], dt=600,
                  transport="oasis")
    with pytest.raises(ValueError, match="OASIS reads the first 1 value.* coupling restart file"):
        OasisSession([t])
