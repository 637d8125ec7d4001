"""Coupled runs under mpiexec: what the workers receive equals the reference tiles bit for bit
(checked inside the workers) and what the model ranks get back equals the global result of the
same stencil (checked inside the model ranks); both exit non-zero otherwise."""
from __future__ import annotations

import re

import pytest

from mpi_util import run_app

from eophis_hpc.transport.mpi.strategies import names as strategy_names

pytestmark = pytest.mark.mpi

GRIDS = {
    "closed": {"nx": 26, "ny": 18},
    "cyclic": {"nx": 24, "ny": 17, "east_west": "cyclic", "south": "cyclic", "north": "cyclic"},
    "foldT": {"nx": 30, "ny": 20, "east_west": "cyclic", "north": "fold", "pivot": "T"},
    "foldF": {"nx": 31, "ny": 19, "east_west": "cyclic", "north": "fold", "pivot": "F"},
}

EXCHANGES = [
    {"inputs": ["u", "v"], "outputs": ["fu", "fv"], "levels": 3, "signs": {"u": -1, "v": -1},
     "point": "V"},
    {"inputs": ["t"], "outputs": ["ft"], "levels": 1, "every": 2, "dtype": "float32"},
    {"inputs": ["mask"], "static": True},
]


def config(grid: str, blocks, strategy: str, halo: int = 2, tiles=None, model_halo: int = 0,
           steps: int = 4, exchanges=None):
    return {"seed": 11, "grid": GRIDS[grid], "model_blocks": list(blocks), "halo": halo,
            "steps": steps, "strategy": strategy, "tiles": tiles, "model_halo": model_halo,
            "exchanges": exchanges or EXCHANGES,
            # small chunks: the pipelined strategy cuts blocks along levels and rows here
            "pipeline_chunk": 200}


def check_ok(res, p: int, q: int):
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    assert res.stdout.count(": OK") == p + q, res.stdout


@pytest.mark.parametrize("strategy", strategy_names())
@pytest.mark.parametrize("grid,blocks,q,tiles,model_halo", [
    ("foldT", (1, 1), 1, None, 0),     # 1:1
    ("closed", (2, 1), 1, None, 1),    # 2:1, model arrays with their own halo
    ("foldF", (3, 1), 2, 3, 0),        # 3:2, uneven tiles stacked into batches
    ("cyclic", (2, 2), 2, 4, 2),       # 4:2
    ("foldT", (2, 2), 2, None, 0),     # 4:2
])
def test_coupled_round_trip(tmp_path, strategy, grid, blocks, q, tiles, model_halo):
    p = blocks[0] * blocks[1]
    res = run_app(tmp_path, config(grid, blocks, strategy, tiles=tiles, model_halo=model_halo), p, q)
    check_ok(res, p, q)


def test_halo_wider_than_a_model_box(tmp_path):
    res = run_app(tmp_path, config("foldT", (3, 1), "packed", halo=12), 3, 1)
    check_ok(res, 3, 1)


def test_frequency_in_seconds(tmp_path):
    ex = [{"inputs": ["u"], "outputs": ["fu"], "levels": 2, "freq": 3600}]
    cfg = config("foldT", (2, 1), "datatype", exchanges=ex, steps=7)
    cfg["dt"] = 1200
    res = run_app(tmp_path, cfg, 2, 1)
    check_ok(res, 2, 1)
    assert "OK after 3 calls" in res.stdout  # steps 0, 3 and 6


def test_grid_mismatch_stops_every_rank(tmp_path):
    cfg = config("foldT", (2, 1), "packed")
    cfg["model_grid"] = dict(GRIDS["foldT"], nx=32)
    res = run_app(tmp_path, cfg, 2, 1, timeout=60)
    assert res.returncode != 0
    assert res.stderr.count("grid mismatch: the model says nx=32, the workers' tunnel says nx=30") == 1


def test_model_exception_ends_the_job(tmp_path):
    cfg = config("closed", (2, 1), "packed")
    cfg["raise_at"] = 2
    res = run_app(tmp_path, cfg, 2, 1, timeout=60)
    assert res.returncode != 0
    assert "injected failure at step 2" in res.stderr


def test_bad_put_on_one_rank_ends_the_job(tmp_path):
    cfg = config("foldT", (2, 1), "packed")
    cfg["bad_put"] = [1, 2]
    res = run_app(tmp_path, cfg, 2, 1, timeout=60)
    assert res.returncode != 0
    assert "put('u'): shape (3, 2, 2) does not match the box (3, 20, 15)" in res.stderr
    assert "uncaught exception on world rank 1; ending the whole job" in res.stderr
    assert "ValueError: put('u')" in res.stderr


def test_no_worker_ranks_is_a_clear_error(tmp_path):
    import json
    import subprocess
    import sys

    from mpi_util import APPS, mpiexec

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config("closed", (2, 1), "packed")))
    res = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(APPS / "coupled_check.py"),
                          "model", str(cfg)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert res.stderr.count("no worker rank in this MPI job") == 1, res.stderr


@pytest.mark.parametrize("strategy", strategy_names())
def test_router_gets_every_due_exchange_at_once(tmp_path, strategy):
    cfg = config("foldF", (2, 1), strategy, steps=5)
    cfg["router"] = True
    cfg["receive_static"] = True
    res = run_app(tmp_path, cfg, 2, 2)
    check_ok(res, 2, 2)
    assert "OK after 5 calls" in res.stdout  # one call per step, both exchanges at even steps


def test_explicit_uneven_tiles(tmp_path):
    """Tiles given as boxes (e.g. Eophis' own layout), uneven, two per worker."""
    tiles = [[0, 7, 0, 30], [7, 20, 0, 11], [7, 20, 11, 13], [7, 20, 13, 30]]
    res = run_app(tmp_path, config("foldT", (2, 1), "datatype", tiles=tiles), 2, 2)
    check_ok(res, 2, 2)


@pytest.mark.parametrize("grid,blocks,q,tiles,buffers", [
    ("cyclic", (2, 2), 2, 4, False),   # 4:2, two virtual nodes: half the peers over MPI
    ("foldT", (3, 1), 2, 3, True),     # 3:2, buffers on the node, MPI to the others
])
def test_shm_with_peers_on_other_nodes(tmp_path, grid, blocks, q, tiles, buffers):
    """Ranks spread over two virtual nodes: peers on the same node go through the windows, the
    others over MPI, in the same exchange; results equal the reference bit for bit."""
    p = blocks[0] * blocks[1]
    cfg = config(grid, blocks, "shm", tiles=tiles)
    cfg.update(describe=True, use_buffers=buffers)
    # 64-byte staging steps: the model ranks read rows while the worker stages the next ones
    res = run_app(tmp_path, cfg, p, q, env={"EOPHIS_HPC_SHM_NODES": "2",
                                            "EOPHIS_HPC_SHM_STAGE": "64"})
    check_ok(res, p, q)
    notes = [line for line in res.stdout.splitlines() if "share memory with it" in line]
    assert len(notes) == q, res.stdout
    # world ranks alternate between the two virtual nodes: every worker has peers on its node
    # and peers elsewhere
    assert all("others over MPI (datatype)" in line for line in notes), notes
    assert all("0 model rank(s)" not in line and f"{p} model rank(s)" not in line
               for line in notes), notes


@pytest.mark.parametrize("grid,blocks,q,buffers", [("foldT", (1, 1), 1, True),
                                                   ("foldF", (2, 2), 2, True),
                                                   ("foldT", (2, 2), 2, False)])
def test_shm_buffers_and_staged_rows(tmp_path, grid, blocks, q, buffers):
    """``cpl.buffer`` arrays: the workers read the model's window and write into it; without
    them, the model ranks read the worker's output window rows while it stages the next ones
    (64-byte steps here)."""
    p = blocks[0] * blocks[1]
    cfg = config(grid, blocks, "shm")
    cfg["use_buffers"] = buffers
    res = run_app(tmp_path, cfg, p, q, env={"EOPHIS_HPC_SHM_STAGE": "64"})
    check_ok(res, p, q)


@pytest.mark.parametrize("model,workers,paired", [("datatype", "shm", "shm"),
                                                  ("shm", "packed", "shm"),
                                                  ("packed", "pipelined", "pipelined")])
def test_paired_strategies_need_both_sides(tmp_path, model, workers, paired):
    cfg = config("foldT", (2, 1), workers)
    cfg["model_strategy"] = model
    res = run_app(tmp_path, cfg, 2, 1, timeout=60)
    assert res.returncode != 0
    msg = (f"the model asks for strategy={model!r}, the workers use {workers!r}: {paired!r} "
           "works only when both sides use it")
    assert res.stderr.count(msg) == 1, res.stderr[-3000:]


def test_note_group_rule():
    from eophis_hpc.protocol.wire import note_group
    assert [note_group(q) for q in (1, 2, 16)] == [1, 1, 1]  # the root sends to each
    assert note_group(17) == 5 and note_group(1000) == 32 and note_group(1024) == 32
    assert note_group(1025) == 33
    for q in range(17, 3000):  # every worker in a group, the root sends about sqrt(q) notes
        g = note_group(q)
        assert (g - 1) ** 2 < q <= g * g
    assert note_group(1000, "3") == 3
    assert note_group(1000, " 7 ") == 7
    for bad in ("0", "-2", "x", "+3", "4 x", "4,5", "1" * 12):
        with pytest.raises(ValueError, match="EOPHIS_HPC_NOTE_GROUP"):
            note_group(4, bad)


@pytest.mark.parametrize("lag", [0, 1])
def test_notes_passed_on_by_group_leaders(tmp_path, lag):
    """Notes in groups of 2 over 3 workers: the root sends to workers 0 and 2, worker 0 passes
    each on to worker 1; every exchange (static, every 2 steps, lagged) and the stop arrive."""
    ex = [dict(e) for e in EXCHANGES]
    ex[0]["lag"] = lag
    cfg = config("foldF", (3, 1), "packed", tiles=3, exchanges=ex, steps=5)
    cfg["describe"] = True
    res = run_app(tmp_path, cfg, 3, 3, env={"EOPHIS_HPC_NOTE_GROUP": "2"})
    check_ok(res, 3, 3)
    assert "control notes from the model root, passed on to workers [1]" in res.stdout
    assert "control notes from worker 0 (its note group leader)" in res.stdout
    # worker 2, a group of its own (the ranks' lines may run together: no newline to count on)
    assert len(re.findall(r"control notes from the model root(?!, passed)", res.stdout)) == 1


def test_root_sends_each_note_to_the_group_leaders_only():
    from types import SimpleNamespace

    from eophis_hpc.transport.mpi import notes
    sent = []
    inter = SimpleNamespace(Send=lambda buf, dest, tag: sent.append((dest, tuple(buf), tag)))
    link = SimpleNamespace(inter=inter, remote_size=10)
    notes.send_to_workers(link, (3, 7), 4)
    assert [d for d, _, _ in sent] == [0, 4, 8]
    assert {n for _, n, _ in sent} == {(3, 7)}
