"""The foreign-client side of the protocol, without MPI: the per-rank tables the workers send a
Fortran/C client (they must describe exactly the messages the workers expect), the step period
of ``freq`` exchanges, and finding a wrapper's MPI library for the workers."""
from __future__ import annotations

import os
import stat
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eophis_hpc as eh
from eophis_hpc import fortran
from eophis_hpc.protocol import client_table
from eophis_hpc.protocol.layout import Layout
from eophis_hpc.reference import source_points
from eophis_hpc.protocol.schedule import Schedule
from eophis_hpc.protocol.wire import TAG_DATA


@st.composite
def setups(draw):
    ew = draw(st.sampled_from(["closed", "cyclic"]))
    north = draw(st.sampled_from(["closed", "cyclic", "fold"]))
    grid = eh.Grid(draw(st.integers(6, 30)), draw(st.integers(6, 24)), ew, "closed", north,
                   draw(st.sampled_from(["T", "F"])))
    px, py = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    model = eh.Decomposition.blocks(grid, py, px)
    workers = draw(st.integers(1, 3))
    tiles = draw(st.integers(workers, workers + 3))
    halo = draw(st.integers(0, min(3, grid.max_halo() or 3)))
    exchanges = [eh.Exchange(inputs="u", outputs="su", levels=draw(st.integers(1, 3))),
                 eh.Exchange(inputs=["v", "w"], outputs="sv", every=draw(st.integers(1, 4)),
                             point=draw(st.sampled_from(["T", "U", "V", "F"])), dtype="float32",
                             signs={"v": -1}, lag=draw(st.integers(0, 3)),
                             initial=draw(st.floats(allow_nan=False, allow_infinity=False)))]
    if draw(st.booleans()):
        exchanges.append(eh.Exchange(inputs="mask", static=True))
    schedule = Schedule(exchanges)
    layout = Layout(grid, model.boxes, workers, halo, n_tiles=tiles)
    order = draw(st.permutations(list(schedule.fields)))
    return layout, schedule, order


def _sent_points(box, runs) -> list:
    """Global (j, i) of a client message's elements, in order (one level)."""
    return [(box.j0 + j + a, box.i0 + i + b) for j, i, nj, ni in runs.tolist()
            for a in range(nj) for b in range(ni)]


def _received_sources(layout, point, worker, route) -> list:
    """The source point, by the reference semantics, of each element a worker receives."""
    grid = layout.grid.with_point(point)
    plan = layout.plan(point)
    h = layout.halo
    out = []
    for k, runs in route.parts:
        box = plan.read_boxes[layout.tiles_of[worker][k]]
        for dj, di, nj, ni, fold in runs[:, :5].tolist():
            for a in range(nj):
                for b in range(ni):
                    y = dj + (nj - 1 - a if fold else a)
                    x = di + (ni - 1 - b if fold else b)
                    sj, si, _ = source_points(grid, box.j0 - h + y, box.i0 - h + x)
                    out.append((int(sj), int(si)))
    return out


def _cells(runs) -> int:
    runs = np.asarray(runs).reshape(-1, 4)
    return int(np.sum(runs[:, 2] * runs[:, 3]))


@settings(max_examples=60, deadline=None)
@given(setups())
def test_tables_describe_the_messages_the_workers_expect(setup):
    layout, schedule, order = setup
    n_model = len(layout.src.boxes)
    tables = [client_table.decode(client_table.build(layout, schedule, r, order))
              for r in range(n_model)]
    for r, t in enumerate(tables):
        box = layout.src.boxes[r]
        assert t["error"] is None and t["n_workers"] == layout.n_workers
        assert t["box"] == (box.j0, box.j1, box.i0, box.i1)
        assert t["every"] == [0 if ex.static else schedule.every_steps(e)
                              for e, ex in enumerate(schedule.exchanges)]
        assert t["lag"] == [ex.lag for ex in schedule.exchanges]
        assert [np.float64(v).tobytes() for v in t["initial"]] == \
            [np.float64(ex.initial).tobytes() for ex in schedule.exchanges]
        for name, f in zip(order, t["fields"]):
            spec = schedule.fields[name]
            assert f["tag"] == TAG_DATA + spec.index and f["exchange"] == spec.exchange
            assert (f["direction"], f["levels"]) == (spec.direction, spec.levels)
            assert f["itemsize"] == np.dtype(spec.dtype).itemsize
            routes = t["route_sets"][f["route_set"]]["routes"]
            if spec.direction == "in":
                # element n of each message, read by the client from its box, is the source of
                # the tile cell the worker writes element n to (folds reversed): MPI matches
                # the two sides element by element, so this is the whole protocol
                for peer, runs in routes:
                    recv = [rt for rt in layout.worker_recv_routes(spec.point, peer) if rt.peer == r]
                    assert len(recv) == 1
                    assert _sent_points(box, runs) == _received_sources(layout, spec.point, peer,
                                                                        recv[0])
            else:
                # what comes back (plus the fills) covers the box exactly once
                cover = np.zeros(box.shape, dtype=int)
                for peer, runs in routes:
                    send = [rt for rt in layout.worker_send_routes(spec.point, peer) if rt.peer == r]
                    assert len(send) == 1 and _cells(runs) == sum(
                        _cells(x[:, :4]) for _, x in send[0].parts)
                    for j, i, nj, ni in runs.tolist():
                        cover[j:j + nj, i:i + ni] += 1
                for j, i, nj, ni in t["route_sets"][f["route_set"]]["fills"].tolist():
                    cover[j:j + nj, i:i + ni] += 1
                assert np.all(cover == 1)


def test_error_table_round_trip():
    t = client_table.error_table("field 'u': levels differ — see docs")
    assert client_table.decode(t)["error"] == "field 'u': levels differ ? see docs"
    with pytest.raises(ValueError, match="version"):
        client_table.decode(np.array([99, 0]))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 2000))
def test_freq_exchanges_reduce_to_a_step_period(dt_tenths, freq_tenths):
    """``step * dt`` a multiple of ``freq`` <=> ``step`` a multiple of every_steps."""
    dt, freq = dt_tenths / 10, freq_tenths / 10
    s = Schedule([eh.Exchange(inputs="u", freq=freq)], dt=dt)
    q = s.every_steps(0)
    assert q <= freq_tenths
    for step in range(0, 2 * q + 3):
        assert s.due(0, step) == ((step * Fraction(str(dt))) % Fraction(str(freq)) == 0)
    assert s.due(0, q) and (q == 1 or not s.due(0, q - 1))
    with pytest.raises(ValueError, match="static"):
        Schedule([eh.Exchange(inputs="m", static=True)]).every_steps(0)


def _fake_wrapper(tmp_path, line: str, name="mpifort.fake"):
    exe = tmp_path / "bin" / name
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(f"#!/bin/sh\necho '{line}'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_wrapper_library_launcher_and_worker_env(tmp_path, monkeypatch):
    libdir = tmp_path / "lib"
    libdir.mkdir()
    (libdir / "libmpich.so.12.2.2").write_bytes(b"")
    (libdir / "libmpich.so.12").symlink_to("libmpich.so.12.2.2")
    wrapper = _fake_wrapper(tmp_path, f"gfortran -I/x -L{libdir} -lmpichfort -lmpich")
    (wrapper.parent / "mpiexec.fake").write_text("")
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    lib = fortran.libmpi_of("mpifort.fake")
    assert lib == libdir / "libmpich.so.12"
    assert fortran.mpiexec_of("mpifort.fake") == wrapper.parent / "mpiexec.fake"
    env = fortran.worker_env(lib, shim_root=tmp_path / "shim")
    link = env["MPI4PY_LIBMPI"]
    assert link.endswith("libmpi.so.12") and os.path.realpath(link) == str(lib.resolve())
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == os.path.dirname(link)
    # a second call reuses the link
    assert fortran.worker_env(lib, shim_root=tmp_path / "shim")["MPI4PY_LIBMPI"] == link


def test_wrapper_errors_name_the_problem(tmp_path, monkeypatch):
    _fake_wrapper(tmp_path, "gfortran -lfoo", name="mpifort.nolib")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match="no -lmpich or -lmpi"):
        fortran.libmpi_of("mpifort.nolib")
    with pytest.raises(FileNotFoundError, match="not found on PATH"):
        fortran.libmpi_of("mpifort.does-not-exist")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fortran.worker_env(tmp_path / "libmpi.so.12")


def test_the_shipped_sources_are_installed():
    assert fortran.source().is_file() and "module eophis_hpc" in fortran.source().read_text()
    assert "eh_put_double" in fortran.header().read_text()
    assert str(fortran.source()) in fortran.recipe()
