"""Lagged exchanges (``Exchange(lag=L)``) and coupling restarts.

The declaration's checks and the restart files are pure; the coupled runs check every ``get``
inside the model ranks against the single-process lagged semantics (``reference.lagged``) bit
for bit, and a run split in two by a restart against the uninterrupted run, byte for byte."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eophis_hpc as eh
from eophis_hpc.protocol import restart
from eophis_hpc.reference import lagged

from mpi_util import run_app
from test_mpi_runtime import EXCHANGES, check_ok, config


# ---------------------------------------------------------------------- the declaration
def test_lag_defaults_and_round_trip():
    ex = eh.Exchange(["u"], ["fu"], lag=2, initial=1.5)
    back = eh.Exchange.from_dict(ex.to_dict())
    assert (back.lag, back.initial) == (2, 1.5)
    assert eh.Exchange(["u"], ["fu"]).lag == 0


@pytest.mark.parametrize("kwargs,message", [
    ({"inputs": ["m"], "outputs": ["fm"], "static": True, "lag": 1},
     "a static exchange happens once, before the first step: it cannot have lag=1"),
    ({"inputs": ["u"], "lag": 1}, "lag=1 delays outputs, and this exchange has none"),
    ({"inputs": ["u"], "outputs": ["fu"], "lag": -1}, "lag must be a whole number"),
    ({"inputs": ["u"], "outputs": ["fu"], "lag": True}, "lag must be a whole number"),
    ({"inputs": ["u"], "outputs": ["fu"], "lag": 1.0}, "lag must be a whole number"),
    ({"inputs": ["u"], "outputs": ["fu"], "lag": 1, "initial": "x"}, "initial must be a number"),
    ({"inputs": ["u"], "outputs": ["fu"], "lag": 1, "initial": float("nan")},
     "initial must be finite"),
])
def test_bad_lag_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        eh.Exchange(**kwargs)


def test_reference_lagged():
    assert lagged([10, 11, 12, 13], 0, None) == [10, 11, 12, 13]
    assert lagged([10, 11, 12, 13], 2, -1) == [-1, -1, 10, 11]
    assert lagged([10], 3, 0) == [0]


# ---------------------------------------------------------------------- restart files
GRID = eh.Grid(nx=12, ny=9, east_west="cyclic", north="fold", pivot="F")
BOX = eh.Box(2, 7, 3, 11)


def records(lag=2, levels=3, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    shape = (lag, levels) + BOX.shape
    return [restart.Record("fu", rng.standard_normal(shape).astype(dtype),
                           np.arange(lag, dtype=np.int64) * 3 - 1)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lag=st.integers(1, 4), levels=st.integers(1, 3), dtype=st.sampled_from(["float32", "float64"]))
def test_restart_file_round_trip(tmp_path, lag, levels, dtype):
    path = str(tmp_path / "r.ehr")
    recs = records(lag, levels, dtype)
    restart.write(path, GRID, BOX, recs)
    back = restart.read(path, GRID, BOX, {"fu": (lag, levels, dtype)})
    assert back["fu"].values.dtype == np.dtype(dtype)
    assert back["fu"].values.tobytes() == recs[0].values.tobytes()
    assert back["fu"].steps.tolist() == recs[0].steps.tolist()


def test_restart_file_layout_is_the_documented_one(tmp_path):
    path = str(tmp_path / "r.ehr")
    recs = records(lag=1, levels=1)
    restart.write(path, GRID, BOX, recs)
    data = open(path, "rb").read()
    words = np.frombuffer(data[8:8 + 8 * 12], dtype="<i8").tolist()
    assert data[:8] == b"EHRESTRT"
    assert words == [1, 12, 9, 1, 0, 2, 1, 2, 7, 3, 11, 1]
    pos = 8 + 8 * 12
    assert data[pos:pos + 64] == b"fu".ljust(64)
    assert np.frombuffer(data[pos + 64:pos + 64 + 32], "<i8").tolist() == [1, 1, 8, -1]
    assert len(data) == pos + 64 + 32 + 8 * BOX.shape[0] * BOX.shape[1]
    assert restart.file_for("out/cpl", 3) == "out/cpl_r0003.ehr"


@pytest.mark.parametrize("change,message", [
    ({"grid": eh.Grid(nx=13, ny=9, east_west="cyclic", north="fold", pivot="F")},
     "grid nx=12 in the file, 13 in this run"),
    ({"grid": eh.Grid(nx=12, ny=9, east_west="cyclic", north="fold", pivot="T")},
     "grid pivot='F' in the file, 'T' in this run"),
    ({"box": eh.Box(2, 7, 3, 10)}, "written for the box (j0, j1, i0, i1) = (2, 7, 3, 11), this rank "
                                   "owns (2, 7, 3, 10)"),
    ({"wanted": {"fu": (3, 3, "float64")}}, "field 'fu' has lag=2 in the file, lag=3 in this run"),
    ({"wanted": {"fu": (2, 2, "float64")}}, "field 'fu' has levels=3 in the file, levels=2"),
    ({"wanted": {"fu": (2, 3, "float32")}}, "field 'fu' has dtype=float64 in the file, "
                                            "dtype=float32 in this run"),
    ({"wanted": {"fv": (2, 3, "float64")}}, "field 'fu' is not an output of a lagged exchange"),
    ({"wanted": {"fu": (2, 3, "float64"), "fv": (1, 1, "float64")}}, "no record for field 'fv'"),
])
def test_restart_mismatch_names_file_and_difference(tmp_path, change, message):
    path = str(tmp_path / "r.ehr")
    restart.write(path, GRID, BOX, records())
    args = {"grid": GRID, "box": BOX, "wanted": {"fu": (2, 3, "float64")}, **change}
    with pytest.raises(restart.RestartError) as err:
        restart.read(path, args["grid"], args["box"], args["wanted"])
    assert str(err.value).startswith(f"coupling restart {path}: ")
    assert message in str(err.value)


def test_restart_missing_truncated_or_foreign(tmp_path):
    path = str(tmp_path / "r.ehr")
    wanted = {"fu": (2, 3, "float64")}
    with pytest.raises(restart.RestartError, match="no such file"):
        restart.read(path, GRID, BOX, wanted)
    restart.write(path, GRID, BOX, records())
    data = open(path, "rb").read()
    for cut in (4, 50, 8 * 14 + 10, len(data) - 1):
        open(path, "wb").write(data[:cut])
        with pytest.raises(restart.RestartError, match="truncated|not an eophis_hpc"):
            restart.read(path, GRID, BOX, wanted)
    open(path, "wb").write(data + b"\0" * 8)
    with pytest.raises(restart.RestartError, match="8 bytes after the last record"):
        restart.read(path, GRID, BOX, wanted)
    open(path, "wb").write(b"NOTOURS!" + data[8:])
    with pytest.raises(restart.RestartError, match="not an eophis_hpc coupling restart"):
        restart.read(path, GRID, BOX, wanted)


# ---------------------------------------------------------------------- coupled runs
def lagged_exchanges(lag_uv: int, lag_t: int, initial: float = 0.25):
    return [dict(EXCHANGES[0], lag=lag_uv, initial=initial), dict(EXCHANGES[1], lag=lag_t),
            EXCHANGES[2]]


@pytest.mark.mpi
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lag_uv=st.integers(0, 3), lag_t=st.integers(0, 2), every=st.integers(1, 3),
       strategy=st.sampled_from(["packed", "datatype"]), router=st.booleans(),
       get_first=st.booleans(), steps=st.integers(1, 8))
def test_lagged_runs_equal_the_single_process_semantics(tmp_path, lag_uv, lag_t, every, strategy,
                                                        router, get_first, steps):
    """Every get of every model rank equals reference.lagged of the stencil (checked in the
    model ranks), over lags, periods, strategies, the router and both call orders."""
    ex = lagged_exchanges(lag_uv, lag_t)
    ex[1]["every"] = every
    cfg = config("foldT", (2, 1), strategy, exchanges=ex, steps=steps)
    cfg["router"] = router
    cfg["get_first"] = get_first and lag_uv > 0 and lag_t > 0  # lag 0: put before get
    res = run_app(tmp_path, cfg, 2, 1)
    check_ok(res, 2, 1)


@pytest.mark.mpi
@pytest.mark.parametrize("pipeline", [True, False])
@pytest.mark.parametrize("lag", [0, 1])
def test_a_model_returning_its_input_batch(tmp_path, pipeline, lag):
    """The outputs are views of the input batch: the in-place sends of occurrence n must end
    before the receives of a later occurrence write that batch (pipelined or not)."""
    ex = [{"inputs": ["u"], "outputs": ["fu"], "levels": 2, "lag": lag}]
    cfg = config("foldT", (2, 1), "datatype", exchanges=ex, steps=9)
    cfg.update(identity=True, pipeline=pipeline)
    check_ok(run_app(tmp_path, cfg, 2, 1), 2, 1)


@pytest.mark.mpi
def test_lag_with_a_frequency_in_seconds_and_two_workers(tmp_path):
    ex = [{"inputs": ["u"], "outputs": ["fu"], "levels": 2, "freq": 3600, "lag": 2,
           "initial": -1.0}]
    cfg = config("foldF", (3, 1), "datatype", exchanges=ex, steps=13, tiles=3)
    cfg["dt"] = 1200
    res = run_app(tmp_path, cfg, 3, 2)
    check_ok(res, 3, 2)


@pytest.mark.mpi
@pytest.mark.parametrize("strategy", ["packed", "datatype"])
def test_a_run_split_by_a_restart_equals_the_uninterrupted_run(tmp_path, strategy):
    ex = lagged_exchanges(2, 1)
    whole = config("foldT", (2, 1), strategy, exchanges=ex, steps=9)
    whole["dump"] = str(tmp_path / "whole")
    check_ok(run_app(tmp_path, whole, 2, 1), 2, 1)
    first = dict(whole, steps=4, dump=str(tmp_path / "first"), restart_out=str(tmp_path / "cpl"))
    check_ok(run_app(tmp_path, first, 2, 1), 2, 1)
    assert sorted(p.name for p in tmp_path.glob("cpl_r*.ehr")) == ["cpl_r0000.ehr", "cpl_r0001.ehr"]
    second = dict(whole, start=4, steps=5, dump=str(tmp_path / "second"),
                  restart_in=str(tmp_path / "cpl"), restart_out=str(tmp_path / "cpl2"))
    check_ok(run_app(tmp_path, second, 2, 1), 2, 1)
    for rank in (0, 1):
        with np.load(tmp_path / f"whole_{rank}.npz") as w, \
                np.load(tmp_path / f"first_{rank}.npz") as a, \
                np.load(tmp_path / f"second_{rank}.npz") as b:
            split = {**{k: a[k] for k in a.files}, **{k: b[k] for k in b.files}}
            assert sorted(split) == sorted(w.files)
            for key in w.files:
                assert split[key].tobytes() == w[key].tobytes(), key
    # the second run's restart equals the one of a run of 9 steps from the start
    whole_rst = dict(whole, restart_out=str(tmp_path / "cpl9"), dump=None)
    check_ok(run_app(tmp_path, whole_rst, 2, 1), 2, 1)
    for rank in (0, 1):
        assert (tmp_path / f"cpl2_r{rank:04d}.ehr").read_bytes() == \
            (tmp_path / f"cpl9_r{rank:04d}.ehr").read_bytes()


@pytest.mark.mpi
def test_a_mismatching_restart_stops_every_rank_with_the_file_and_the_difference(tmp_path):
    first = config("foldT", (2, 1), "packed", exchanges=lagged_exchanges(2, 1), steps=3)
    first["restart_out"] = str(tmp_path / "cpl")
    check_ok(run_app(tmp_path, first, 2, 1), 2, 1)
    again = config("foldT", (2, 1), "packed", exchanges=lagged_exchanges(3, 1), steps=3)
    again.update(start=3, restart_in=str(tmp_path / "cpl"))
    res = run_app(tmp_path, again, 2, 1, timeout=60)
    assert res.returncode != 0
    want = (f"model rank 0: coupling restart {tmp_path}/cpl_r0000.ehr: field 'fu' has lag=2 in "
            "the file, lag=3 in this run")
    assert res.stderr.count(want) == 1, res.stderr[-3000:]
    missing = dict(again, exchanges=lagged_exchanges(2, 1), restart_in=str(tmp_path / "nope"))
    res = run_app(tmp_path, missing, 2, 1, timeout=60)
    assert res.returncode != 0
    assert f"coupling restart {tmp_path}/nope_r0000.ehr: no such file" in res.stderr
