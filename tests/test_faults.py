"""Fault injection under mpiexec: every fault ends the whole job within a bound, with a non-zero
exit and a message naming the cause; the test itself fails (not hangs) past its time limit."""
from __future__ import annotations

import time

import pytest

from mpi_util import run_app
from test_mpi_runtime import config

from eophis_hpc.transport.mpi.strategies import names as strategy_names

pytestmark = pytest.mark.mpi
FAST = {"EOPHIS_HPC_TIMEOUT": "4"}


def run_fault(tmp_path, p=2, q=1, limit=60, env=None, strategy="packed", **fault):
    cfg = config("foldT", (p, 1), strategy, steps=4)
    cfg.update(fault)
    t0 = time.monotonic()
    res = run_app(tmp_path, cfg, p, q, timeout=limit, env=env)
    return res, time.monotonic() - t0


@pytest.mark.parametrize("strategy", strategy_names())
def test_killed_worker_ends_the_job(tmp_path, strategy):
    res, wall = run_fault(tmp_path, kill_worker_at=2, env=FAST, strategy=strategy)
    assert res.returncode != 0
    assert "BAD TERMINATION" in res.stdout + res.stderr and "signal 9" in (res.stdout + res.stderr)
    assert wall < 30


@pytest.mark.parametrize("strategy", strategy_names())
def test_killed_model_rank_ends_the_job(tmp_path, strategy):
    res, wall = run_fault(tmp_path, kill_model=[1, 2], env=FAST, strategy=strategy)
    assert res.returncode != 0
    assert wall < 30


def test_rank_killed_while_its_window_is_read_ends_the_job(tmp_path):
    """shm with buffers: model rank 1 dies right after its put, while the worker copies out of
    its window; the job ends within the bound, with the launcher's message."""
    res, wall = run_fault(tmp_path, kill_model_after_put=[1, 2], use_buffers=True, env=FAST,
                          strategy="shm")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "BAD TERMINATION" in out and "signal 9" in out, out[-3000:]
    assert wall < 30


@pytest.mark.parametrize("strategy", strategy_names())
def test_stalled_model_rank_times_out_on_the_workers(tmp_path, strategy):
    res, wall = run_fault(tmp_path, stall_model=[1, 2], env=FAST, strategy=strategy)
    assert res.returncode != 0
    err = res.stderr
    assert "no answer from model rank [1] after 4 s" in err, err[-3000:]
    assert wall < 30


def test_wrong_output_shape_names_the_output(tmp_path):
    res, _ = run_fault(tmp_path, bad_output_at=1)
    assert res.returncode != 0
    assert "output 'fu': shape" in res.stderr and "expected" in res.stderr


def test_non_finite_put_is_refused_with_its_global_index(tmp_path):
    res, _ = run_fault(tmp_path, nan_put=[1, 2], check_finite=True)
    assert res.returncode != 0
    # rank 1 owns i in [15, 30): the NaN sits at local (1, 2) -> global j=1, i=17
    assert "put('u', step=2): nan at level 0, global j=1, i=17 (model rank 1)" in res.stderr


def test_non_finite_output_is_refused_with_its_global_index(tmp_path):
    res, _ = run_fault(tmp_path, nan_output_at=3, check_finite=True)
    assert res.returncode != 0
    assert "output 'fu': the model returned inf at level 0, global j=2, i=2" in res.stderr


@pytest.mark.parametrize("strategy", strategy_names())
def test_normal_end_exits_zero_without_abort(tmp_path, strategy):
    res, _ = run_fault(tmp_path, strategy=strategy)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Abort" not in res.stderr and "aborting" not in res.stderr


def test_soak_memory_stays_flat(tmp_path):
    """Many small steps: no rank's resident memory grows between a quarter of the run and its
    end (no per-step buffers, bounded timing records), synchronous and lagged (the model ranks'
    rings, the workers' two sets of batches). EOPHIS_HPC_SOAK_STEPS makes it longer."""
    import os
    import re

    steps = int(os.environ.get("EOPHIS_HPC_SOAK_STEPS", "1000"))
    cases = [(s, 0) for s in strategy_names()] + [("datatype", 2), ("packed", 1), ("shm", 1)]
    for strategy, lag in cases:
        ex = [{"inputs": ["u"], "outputs": ["fu"], "levels": 1, "lag": lag}]
        cfg = config("foldT", (2, 1), strategy, exchanges=ex, steps=steps)
        res = run_app(tmp_path, cfg, 2, 1, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        growth = [int(g) for g in re.findall(r"rss growth (-?\d+) KiB", res.stdout)]
        assert len(growth) == 3, res.stdout
        assert max(growth) < 1024, f"{strategy}, lag {lag}: resident memory grew by {growth} KiB"


@pytest.mark.parametrize("change,message", [
    ({"declare": {"u": {"levels": 3, "dtype": "float64", "direction": "in"},
                  "fu": {"levels": 3, "direction": "out"}, "fv": {"levels": 3, "direction": "out"},
                  "v": {"levels": 3, "direction": "in"}, "t": {"levels": 1, "direction": "in"},
                  "ft": {"levels": 1, "direction": "out"}, "mask": {}, "w": {}}},
     "field 'w' is declared by the model but not by the workers' tunnel"),
    ({"declare": {"u": {"levels": 5}}}, "field 'u': the model declares levels=5, the workers' tunnel levels=3"),
    ({"declare": {"t": {"dtype": "float64"}}}, "field 't': the model declares dtype='float64'"),
    ({"declare": {"u": {}}}, "declared by the workers' tunnel but not by the model"),
    ({"model_boxes": [[0, 20, 0, 16], [0, 20, 15, 30]]}, "overlap"),
    ({"model_boxes": [[0, 20, 0, 14], [0, 20, 15, 30]]}, "uncovered (first: j=0, i=14)"),
    ({"model_boxes": [[0, 20, 0, 15], [0, 21, 15, 30]]}, "falls outside the 20x30"),
    ({"tiles": 1, "q": 2}, "2 workers for 1 tiles"),
])
def test_handshake_mismatch_stops_every_rank_with_one_message(tmp_path, change, message):
    change = dict(change)
    q = change.pop("q", 1)
    cfg = config("foldT", (2, 1), "packed", steps=2)
    cfg.update(change)
    res = run_app(tmp_path, cfg, 2, q, timeout=60)
    assert res.returncode != 0
    assert res.stderr.count(message) == 1, res.stderr[-3000:]


@pytest.mark.parametrize("fault,message", [
    ({"bad_dtype": [0, 1]}, "put('u'): dtype int32, the exchange expects float64"),
    ({"bad_layout": [1, 0]}, "put('u'): the array must be C-contiguous"),
    ({"missing_output_at": 2}, "missing ['fu', 'fv']"),
    ({"extra_output_at": 1}, "extra ['bogus']"),
    ({"int_output_at": 1}, "output 'fu': dtype int64 is not float32/float64"),
])
def test_bad_data_names_the_field(tmp_path, fault, message):
    res, _ = run_fault(tmp_path, **fault)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr[-3000:]


def test_halo_the_grid_cannot_provide_ends_the_job(tmp_path):
    cfg = config("foldT", (2, 1), "packed", halo=25)   # ny=20: the fold allows 19
    res = run_app(tmp_path, cfg, 2, 1, timeout=60)
    assert res.returncode != 0
    assert "Tunnel: halo=25 is wider than the grid allows (19" in res.stderr


ARRIVE = """
import time
from mpi4py import MPI
from eophis_hpc.errors import CouplingError, release_exit_guard
from eophis_hpc.transport.mpi.waits import arrive
release_exit_guard()
w = MPI.COMM_WORLD
arrive(w, 30, "start")
t0 = time.monotonic()
if w.rank == 1:
    time.sleep(4)
try:
    arrive(w, 1.0, f"rank {w.rank}: setting up")
    print(f"rank {w.rank}: arrived after {time.monotonic() - t0:.1f} s", flush=True)
except CouplingError as exc:
    print(f"rank {w.rank}: {exc} [{time.monotonic() - t0:.1f} s]", flush=True)
"""


def test_set_up_collectives_are_entered_with_a_bounded_wait(tmp_path):
    """``arrive``, what every set-up collective (merge, node split, windows, close) is entered
    through: a rank that is late is an error after the timeout, not a hang inside MPI."""
    from mpi_util import run_mpmd
    script = tmp_path / "arrive.py"
    script.write_text(ARRIVE)
    res = run_mpmd((1, [str(script)]), (1, [str(script)]), timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("rank 0:"))
    assert "rank 0: setting up: not every rank got there within 1 s" in line
    assert float(line.rsplit("[", 1)[1].split()[0]) < 3.5
    assert "rank 1: arrived after" in res.stdout
