"""The runtime uses the node-aware placement: with node names faked by ``EOPHIS_HPC_NODE_NAME``
(one value per MPMD block), the workers hold the tiles whose model ranks share their node, and
the coupled run stays exact (checked bit for bit inside the ranks by ``coupled_check``)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import eophis_hpc as eh
from eophis_hpc.protocol.layout import Layout
from eophis_hpc.sizing import placement
from eophis_hpc.transport.mpi.strategies import names as strategy_names
from mpi_util import APPS, mpiexec
from test_mpi_runtime import check_ok, config

pytestmark = pytest.mark.mpi


def blocks_on_nodes(cfg_path, blocks):
    """``mpiexec`` MPMD blocks ``(ranks, role, node)`` with the node name set per block."""
    cmd = [mpiexec()]
    for k, (n, role, node) in enumerate(blocks):
        cmd += ([":"] if k else []) + ["-n", str(n), "-env", "EOPHIS_HPC_NODE_NAME", node,
                                       sys.executable, str(APPS / "coupled_check.py"), role,
                                       str(cfg_path)]
    return cmd


@pytest.mark.parametrize("strategy", strategy_names())
def test_workers_get_the_tiles_of_their_node(tmp_path, strategy):
    # 30x20 T-fold grid, 2x2 model boxes: ranks 0, 1 (south) on node a, 2, 3 (north) on node b;
    # two tiles, the south and north halves; worker 0 runs on b, worker 1 on a, so today's
    # order (tile 0 to worker 0) would send nearly every byte across nodes
    cfg = config("foldT", (2, 2), strategy, halo=1, tiles=[[0, 10, 0, 30], [10, 20, 0, 30]])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    cmd = blocks_on_nodes(path, [(2, "model", "a"), (2, "model", "b"), (1, "worker", "b"),
                                 (1, "worker", "a")])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    check_ok(res, 4, 2)
    assert "worker 0: my tiles [1]" in res.stdout and "worker 1: my tiles [0]" in res.stdout


def test_one_node_keeps_todays_order(tmp_path):
    cfg = config("foldT", (2, 2), "datatype", halo=1, tiles=[[0, 10, 0, 30], [10, 20, 0, 30]])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    cmd = blocks_on_nodes(path, [(4, "model", "a"), (2, "worker", "a")])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    check_ok(res, 4, 2)
    assert "worker 0: my tiles [0]" in res.stdout and "worker 1: my tiles [1]" in res.stdout


def test_layout_takes_an_owner_and_checks_it():
    g = eh.Grid(30, 20)
    boxes = eh.Decomposition.auto(g, 4).boxes
    lay = Layout(g, boxes, 2, 1, n_tiles=4, tile_owner=[1, 0, 1, 0])
    assert lay.tiles_of == [[1, 3], [0, 2]]
    assert [r.peer for r in lay.model_send_routes("T", 0)] == sorted(
        {int(lay.tile_owner[d]) for (s, d) in lay.plan("T").pairs if s == 0})
    for bad, msg in (([0, 0, 0, 0], "worker 1 has no tile"), ([0, 1, 2, 0], "must be in"),
                     ([0, 1], "expected 4 worker indices")):
        with pytest.raises(ValueError, match=msg):
            Layout(g, boxes, 2, 1, n_tiles=4, tile_owner=bad)


def test_from_node_names_matches_the_sizing_placement():
    g = eh.Grid.preset("ORCA2")
    src = eh.Decomposition.auto(g, 8)
    dst = eh.Decomposition.auto(g, 4)
    plan = eh.Plan(g, src, dst, 1, tile_shape=dst.max_shape())
    model = ["n0"] * 4 + ["n1"] * 4
    workers = ["n1", "n1", "n0", "n0"]
    got = placement.from_node_names(plan, model, workers)
    w = placement.tile_node_bytes(plan, np.array([0] * 4 + [1] * 4), n_nodes=2)
    want = placement.place(w, np.array([1, 1, 0, 0]))
    assert np.array_equal(got.owner, want.owner) and got.after > got.before
    assert placement.from_node_names(plan, ["x"] * 8, ["x"] * 4) is None
    assert placement.from_node_names(plan, None, workers) is None


@pytest.mark.slow
def test_pingpong_cycles_its_buffers_and_checks_each(tmp_path):
    """A cold ping-pong (``working_set``) goes through several buffers and still checks the
    bytes that came back; the record says which working set it used."""
    from eophis_hpc.measure import jobs, pingpong
    assert pingpong.copies(1 << 20, 8 << 20) == 8 and pingpong.copies(1 << 20, 0) == 1
    assert pingpong.copies(3 << 20, 8 << 20) == 3
    assert pingpong.copies(8, 64 << 20) == 1  # latency: one buffer
    assert pingpong.copies(64 << 10, 1 << 40) == pingpong.COLD_MAX_BUFFERS
    rec, err = jobs.run_pingpong([8, 1 << 16], tmp_path, 120, working_set=1 << 20,
                                 strided=True, strided_ends="one", row_bytes=1024, row_pad=64,
                                 min_rounds=20)
    assert rec is not None, err
    assert rec["working_set"] == 1 << 20
    assert all(t > 0 for t in rec["one_way_median_s"] + rec["strided_one_way_median_s"])


def test_working_set_is_twice_the_largest_cache_within_bounds(tmp_path):
    from eophis_hpc.sizing.calibrate import working_set

    def caches(*sizes):
        base = tmp_path / "-".join(sizes)
        for k, size in enumerate(sizes):
            (base / f"index{k}").mkdir(parents=True)
            (base / f"index{k}" / "size").write_text(size + "\n")
        return base
    assert working_set(caches("32K", "1024K", "49152K")) == 96 << 20  # 48 MiB L3
    assert working_set(caches("48K", "2M", "480M")) == 960 << 20      # the 480 MiB Xeon
    assert working_set(caches("32K", "2G")) == 1 << 30                 # at most 1 GiB
    assert working_set(caches("32K", "512K", "16384K")) == 64 << 20    # at least 64 MiB
    assert working_set(caches("junk", "8M")) == 64 << 20               # unreadable entry skipped
    assert working_set(tmp_path / "missing") == 64 << 20


def test_calibrate_then_validate_one_configuration(tmp_path):
    """The measuring code paths: a calibration (one run of each probe) gives a machine whose
    figures are positive and whose tables grow with size where they should, then one round
    trip measured next to its prediction."""
    from eophis_hpc.sizing.calibrate import calibrate
    from eophis_hpc.sizing.machine import Machine
    from eophis_hpc.sizing.validate import table, validate
    m = calibrate(repeats=1, progress=False, workdir=tmp_path)
    assert isinstance(m.onnode_bandwidth, tuple) and len(m.onnode_bandwidth) == 6
    assert len(m.copy_bandwidth) == 4
    assert m.latency_s > 0 and m.message_overhead_s > 0 and m.exchange_overhead_s >= 0
    assert m.datatype_row_bytes == 720 * 8  # the validated tiles' rows
    assert "messages cold" in m.source
    assert len(m.onnode_bandwidth_hot) == 6 and m.onnode_bandwidth_hot != m.onnode_bandwidth
    m.save(tmp_path / "m.json")
    assert Machine.load(tmp_path / "m.json") == m
    cfg = {"grid": "DINO", "levels": 2, "dtype": "float64", "halo": 1, "P": 1, "Q": 1,
           "strategy": "packed", "backend": None, "tiles": 1, "warmup": 2, "steps": 5,
           "naive": False}
    cfgs = [dict(cfg, strategy=s) for s in ("packed", "shm", "pipelined")]
    rows = validate(m, cfgs, repeats=1, progress=False, workdir=tmp_path, quiet_wait=0)
    assert len(rows) == 3 and all(r["measured_s"] > 0 and r["predicted_s"] > 0 for r in rows)
    for s in ("packed", "shm", "pipelined"):
        assert f"62x199 nz2 h1 {s} 1:1" in table(rows)
