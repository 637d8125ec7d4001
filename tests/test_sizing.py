"""The sizing package: per-message traffic against the plan's own count and a brute-force
contiguity oracle, the cost model on a case worked by hand and its monotonicity, memory, the
machine file, the plateau."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import eophis_hpc as eh
from eophis_hpc.decomposition import split_balanced
from eophis_hpc.measure.copyjobs import flat_index
from eophis_hpc.sizing import cost, job as jobmod, memory, traffic
from eophis_hpc.sizing.machine import Machine, builtin_names

from strategies import decompositions, grids, halos

SETTINGS = settings(max_examples=80, deadline=None)

MACHINE = Machine(name="test", cores_per_node=4, latency_s=1e-6, network_latency_s=3e-6,
                  onnode_bandwidth=8e9, network_bandwidth=2e9, nic_bandwidth=3e9,
                  node_memory_bandwidth=40e9, copy_bandwidth=10e9, datatype_bandwidth=4e9,
                  message_overhead_s=2e-6, exchange_overhead_s=50e-6, source="test figures")


def owners(n_tiles: int, n_workers: int) -> np.ndarray:
    starts = split_balanced(n_tiles, n_workers)
    return np.repeat(np.arange(n_workers), np.diff(starts))


@st.composite
def layouts(draw):
    g = draw(grids(max_n=20))
    src = draw(decompositions(g))
    dst = draw(decompositions(g, allow_holes=False))
    halo = draw(halos(g, cap=4))
    n_workers = draw(st.integers(1, len(dst.boxes)))
    try:
        plan = eh.Plan(g, src, dst, halo, tile_shape=dst.max_shape())
    except ValueError:  # a max-shape tile would reach past the fold: the runtime refuses it too
        assume(False)
    return plan, n_workers


@SETTINGS
@given(case=layouts(), nz=st.integers(1, 3), itemsize=st.sampled_from((4, 8)),
       seed=st.integers(0, 2**31))
def test_messages_match_the_plans_own_traffic_count(case, nz, itemsize, seed):
    """Same messages and bytes per rank as Plan.traffic (an independent, loop-based count)."""
    plan, q = case
    rng = np.random.default_rng(seed)
    owner = owners(plan.n_dst, q)
    model_node = rng.integers(0, 3, plan.n_src)
    worker_node = rng.integers(0, 3, q)
    t = traffic.messages(plan, nz, itemsize, owner, model_node, worker_node)
    ref = plan.traffic(nz=nz, itemsize=itemsize, dst_ranks=owner)
    for name, msg, n_send, n_recv in (("scatter", t.scatter, plan.n_src, q),
                                      ("gather", t.gather, q, plan.n_src)):
        sm, sb = msg.per_rank("sender", n_send)
        rm, rb = msg.per_rank("receiver", n_recv)
        r = ref[name]
        assert {k: v for k, v in enumerate(sm.tolist()) if v} == r["send_messages"]
        assert {k: v for k, v in enumerate(rm.tolist()) if v} == r["recv_messages"]
        assert {k: int(v) for k, v in enumerate(sb.tolist()) if v} == r["send_bytes"]
        assert {k: int(v) for k, v in enumerate(rb.tolist()) if v} == r["recv_bytes"]
    # on-node flags from the node maps
    assert np.array_equal(t.scatter.onnode,
                          model_node[t.scatter.sender] == worker_node[t.scatter.receiver])
    assert np.array_equal(t.gather.onnode,
                          worker_node[t.gather.sender] == model_node[t.gather.receiver])


def _is_range(idx: np.ndarray) -> bool:
    return idx.size == 0 or np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size))


@SETTINGS
@given(case=layouts(), nz=st.integers(1, 3))
def test_contiguity_flags_are_sound(case, nz):
    """A message called contiguous is one increasing range of flat indices in the sender's and
    the receiver's arrays (model box; worker batch of tile_shape + halo), in wire order; a
    message of one block is called contiguous exactly when it is."""
    plan, q = case
    owner = owners(plan.n_dst, q)
    t = traffic.messages(plan, nz, 8, owner, np.zeros(plan.n_src, int), np.zeros(q, int))
    tiles_of = [np.flatnonzero(owner == w).tolist() for w in range(q)]
    hh, ww = plan.tile_shape_of(0)
    batch_tile = nz * hh * ww
    for k in range(len(t.scatter)):
        s, w = int(t.scatter.sender[k]), int(t.scatter.receiver[k])
        box = (nz,) + plan.src.boxes[s].shape
        send_idx, recv_idx, folded = [], [], False
        for slot, d in enumerate(tiles_of[w]):
            if (s, d) in plan.pairs:
                send_idx.append(flat_index(plan.pack_runs(s, d), box))
                runs = plan.unpack_runs(s, d)
                recv_idx.append(slot * batch_tile + flat_index(runs, (nz, hh, ww)))
                folded |= bool(runs[:, 4].any())
        send_idx, recv_idx = np.concatenate(send_idx), np.concatenate(recv_idx)
        if t.scatter.contig_send[k]:
            assert _is_range(send_idx)
        if t.scatter.contig_recv[k]:
            assert _is_range(recv_idx)
        if t.scatter.blocks[k] == 1:
            assert t.scatter.contig_send[k] == _is_range(send_idx)
            assert t.scatter.contig_recv[k] == (_is_range(recv_idx) and not folded)
    for k in range(len(t.gather)):
        w, s = int(t.gather.sender[k]), int(t.gather.receiver[k])
        box = (nz,) + plan.src.boxes[s].shape
        send_idx, recv_idx = [], []
        for slot, d in enumerate(tiles_of[w]):
            if (d, s) in plan.back_pairs:
                send_idx.append(slot * batch_tile + flat_index(
                    plan.back_pack_runs(d, s, offset=plan.halo), (nz, hh, ww)))
                recv_idx.append(flat_index(plan.back_unpack_runs(d, s), box))
        send_idx, recv_idx = np.concatenate(send_idx), np.concatenate(recv_idx)
        if t.gather.contig_send[k]:
            assert _is_range(send_idx)
        if t.gather.contig_recv[k]:
            assert _is_range(recv_idx)
        if t.gather.blocks[k] == 1:
            assert t.gather.contig_send[k] == _is_range(send_idx)
            assert t.gather.contig_recv[k] == _is_range(recv_idx)


def test_model_halo_makes_multi_row_boxes_non_contiguous():
    g = eh.Grid(16, 8)
    plan = eh.Plan(g, eh.Decomposition.auto(g, 1), eh.Decomposition.auto(g, 1))
    args = (plan, 1, 8, np.zeros(1, int), np.zeros(1, int), np.zeros(1, int))
    assert traffic.messages(*args).scatter.contig_send.all()
    assert not traffic.messages(*args, model_halo=1).scatter.contig_send.any()


def test_cost_of_a_one_to_one_exchange_worked_by_hand():
    """8x4 closed grid, 1 model rank and 1 worker on one node, 2 levels float64: each way one
    contiguous message of 512 bytes."""
    g = eh.Grid(8, 4)
    dec = eh.Decomposition.auto(g, 1)
    plan = eh.Plan(g, dec, dec)
    t = traffic.messages(plan, 2, 8, np.zeros(1, int), np.zeros(1, int), np.zeros(1, int))
    m = MACHINE
    b = 8 * 4 * 2 * 8
    rate = min(m.onnode_bandwidth, m.copy_bandwidth, m.node_memory_bandwidth / 1)
    one_way = m.latency_s + m.message_overhead_s + b / rate
    dt = cost.predict(t, m, "datatype", inference_s=1e-3)
    assert dt.phases["scatter"] == pytest.approx(one_way)
    assert dt.phases["gather"] == pytest.approx(one_way)
    note = m.message_overhead_s
    assert dt.exchange_s == pytest.approx(max(note, one_way) + 1e-3 + one_way
                                          + m.exchange_overhead_s)
    packed = cost.predict(t, m, "packed", inference_s=1e-3)
    copy = b / min(m.copy_bandwidth, m.node_memory_bandwidth)
    for phase in ("model_pack", "worker_unpack", "worker_pack", "model_unpack"):
        assert packed.phases[phase] == pytest.approx(copy)
    assert packed.exchange_s == pytest.approx(dt.exchange_s + 4 * copy)
    # lag 1 hides the exchange behind a long enough model step, lag 0 adds it
    slow = cost.predict(t, m, "datatype", inference_s=1e-3, model_step_s=1.0)
    assert slow.step_lag0_s == pytest.approx(1.0 + dt.exchange_s)
    assert slow.step_lag1_s == pytest.approx(1.0 + slow.model_cpu_s)
    fast = cost.predict(t, m, "datatype", inference_s=1e-3, model_step_s=1e-6)
    assert fast.step_lag1_s == pytest.approx(dt.exchange_s)


@SETTINGS
@given(case=layouts(), strategy=st.sampled_from(cost.STRATEGIES),
       field=st.sampled_from(("onnode_bandwidth", "network_bandwidth", "nic_bandwidth",
                              "copy_bandwidth", "datatype_bandwidth", "node_memory_bandwidth")),
       seed=st.integers(0, 2**31))
def test_more_bytes_never_faster_and_faster_hardware_never_slower(case, strategy, field, seed):
    plan, q = case
    rng = np.random.default_rng(seed)
    owner = owners(plan.n_dst, q)
    mn, wn = rng.integers(0, 2, plan.n_src), rng.integers(0, 2, q)
    t1 = traffic.messages(plan, 1, 8, owner, mn, wn)
    t3 = traffic.messages(plan, 3, 8, owner, mn, wn)
    base = cost.predict(t1, MACHINE, strategy).exchange_s
    assert cost.predict(t3, MACHINE, strategy).exchange_s >= base
    faster = replace(MACHINE, **{field: getattr(MACHINE, field) * 2})
    assert cost.predict(t1, faster, strategy).exchange_s <= base * (1 + 1e-12)


def test_network_and_shared_cores_cost_more():
    g = eh.Grid(64, 32)
    plan = eh.Plan(g, eh.Decomposition.auto(g, 4), eh.Decomposition.auto(g, 2), halo=1)
    owner = owners(2, 2)
    same = traffic.messages(plan, 4, 8, owner, np.zeros(4, int), np.zeros(2, int))
    apart = traffic.messages(plan, 4, 8, owner, np.zeros(4, int), np.ones(2, int))
    for s in cost.STRATEGIES:
        base = cost.predict(same, MACHINE, s).exchange_s
        assert cost.predict(apart, MACHINE, s).exchange_s > base
        crowded = replace(MACHINE, cores_per_node=2)  # 6 ranks on 2 cores
        assert cost.predict(same, crowded, s).exchange_s > base


def test_memory_counts_the_batches_and_buffers():
    g = eh.Grid(40, 30, "cyclic")
    plan = eh.Plan(g, eh.Decomposition.auto(g, 6), eh.Decomposition.auto(g, 4), halo=2,
                   tile_shape=eh.Decomposition.auto(g, 4).max_shape())
    owner = owners(4, 3)  # worker 0 holds 2 tiles
    t = traffic.messages(plan, 5, 4, owner, np.zeros(6, int), np.zeros(3, int))
    mem = memory.estimate(plan, t, owner, 5, 4, fields_in=2, fields_out=1)
    hh, ww = plan.tile_shape_of(0)
    assert mem["tiles_per_worker_max"] == 2
    assert mem["worker"]["batches"] == 2 * 5 * hh * ww * 4 * (2 + 1)
    _, recv = t.scatter.per_rank("receiver", 3)
    _, send = t.gather.per_rank("sender", 3)
    assert mem["worker"]["packed_buffers"] == max(recv * 2 + send)
    assert mem["worker"]["total_packed"] > mem["worker"]["batches"] + memory.RUNTIME_BYTES
    # shm: every rank on one node, so no datatypes; the output segments are the own boxes of
    # the worker's tiles, a model rank's segments its box per field
    own = [0] * 3
    for d, w in enumerate(owner):
        own[w] += plan.dst.boxes[d].size * 5 * 4
    assert mem["worker"]["shm_segments"] == max(own) * 1
    assert mem["worker"]["total_shm"] == (memory.RUNTIME_BYTES + mem["worker"]["layout"]
                                          + mem["worker"]["batches"] + max(own))
    box = max(b.size for b in plan.src.boxes)
    assert mem["model_rank"]["total_shm"] == (memory.RUNTIME_BYTES + mem["model_rank"]["layout"]
                                              + box * 5 * 4 * 3)
    assert mem["worker"]["total_pipelined"] == mem["worker"]["total_packed"]
    # off the node, shm's routes keep their datatypes
    far = traffic.messages(plan, 5, 4, owner, np.zeros(6, int), np.ones(3, int))
    far_mem = memory.estimate(plan, far, owner, 5, 4, fields_in=2, fields_out=1)
    assert far_mem["worker"]["total_shm"] == (mem["worker"]["total_shm"]
                                              + far_mem["worker"]["datatypes"])


def test_plateau_is_the_fewest_workers_near_the_best():
    counts = [1, 2, 4, 8, 16]
    assert jobmod.plateau(counts, [8.0, 4.0, 2.05, 2.0, 2.01], 0.05) == 4
    assert jobmod.plateau(counts, [8.0, 4.0, 3.0, 2.5, 2.0], 0.05) == 16
    assert jobmod.plateau(counts, [None] * 5, 0.05) is None


def test_inference_time_scales_with_tile_cells():
    g = eh.Grid.preset("eORCA025")
    job = jobmod.Job(g, eh.Decomposition.auto(g, 16), halo=1, inference_s_per_tile=0.1,
                     reference_workers=4)
    r4 = jobmod.evaluate(job, MACHINE, 4)
    r16 = jobmod.evaluate(job, MACHINE, 16)
    assert r4["inference_s"] == pytest.approx(0.1)
    (h4, w4), (h16, w16) = (eh.Decomposition.auto(g, n).max_shape() for n in (4, 16))
    assert (h16, w16) != (h4, w4)
    assert r16["inference_s"] == pytest.approx(0.1 * (h16 + 2) * (w16 + 2) / ((h4 + 2) * (w4 + 2)))


def test_machine_files_round_trip_and_bad_ones_are_named(tmp_path):
    p = tmp_path / "m.json"
    MACHINE.save(p)
    assert Machine.load(p) == MACHINE
    toml = tmp_path / "m.toml"
    toml.write_text("[machine]\n" + "\n".join(
        f"{k} = {json.dumps(v)}" for k, v in MACHINE.to_dict().items()) + "\n")
    assert Machine.load(toml) == MACHINE
    for name in builtin_names():
        assert Machine.load(name).name == name
    bad = MACHINE.to_dict()
    del bad["copy_bandwidth"]
    p.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="missing 'copy_bandwidth'"):
        Machine.load(p)
    p.write_text(json.dumps(dict(MACHINE.to_dict(), latency_s=-1)))
    with pytest.raises(ValueError, match="latency_s must be a non-negative number"):
        Machine.load(p)
    p.write_text(json.dumps(dict(MACHINE.to_dict(), speed=3)))
    with pytest.raises(ValueError, match="unknown key 'speed'"):
        Machine.load(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Machine.load(p)
    with pytest.raises(ValueError, match="no such file"):
        Machine.load(tmp_path / "absent.json")


def test_bandwidth_tables_interpolate_in_log_size(tmp_path):
    m = replace(MACHINE, onnode_bandwidth=[[2**20, 20e9], [2**26, 5e9], [2**23, 10e9]])
    assert m.onnode_bandwidth == ((2.0**20, 20e9), (2.0**23, 10e9), (2.0**26, 5e9))
    got = m.bandwidth("onnode_bandwidth", [1, 2**20, 2**21.5, 2**23, 2**24.5, 2**26, 2**40])
    assert got.tolist() == pytest.approx([20e9, 20e9, 15e9, 10e9, 7.5e9, 5e9, 5e9])
    assert m.bandwidth("copy_bandwidth", [1, 2**30]).tolist() == [10e9, 10e9]
    p = tmp_path / "m.json"
    m.save(p)
    assert Machine.load(p) == m
    with pytest.raises(ValueError, match="every size and bandwidth of the table must be positive"):
        replace(MACHINE, datatype_bandwidth=[[0, 1e9]])
    with pytest.raises(ValueError, match="must be a number or a table"):
        replace(MACHINE, datatype_bandwidth=[[1, 2, 3]])
    # a bigger message of the same layout never goes faster per byte here, so it costs more
    g = eh.Grid(64, 32)
    plan = eh.Plan(g, eh.Decomposition.auto(g, 2), eh.Decomposition.auto(g, 1))
    t1, t8 = (traffic.messages(plan, nz, 8, np.zeros(1, int), np.zeros(2, int), np.zeros(1, int))
              for nz in (1, 8))
    for s in cost.STRATEGIES:
        assert cost.predict(t8, m, s).exchange_s > cost.predict(t1, m, s).exchange_s


# ----------------------------------------------------------------- shm and pipelined
def one_to_one(nz=2, halo=0, model_halo=0, worker_node=0, grid=(8, 4)):
    g = eh.Grid(*grid)
    dec = eh.Decomposition.auto(g, 1)
    plan = eh.Plan(g, dec, dec, halo)
    return traffic.messages(plan, nz, 8, np.zeros(1, int), np.zeros(1, int),
                            np.full(1, worker_node), model_halo=model_halo)


def test_strategy_names_and_defaults_are_the_transports():
    from eophis_hpc.transport.mpi import pipelined, shared, strategies
    assert set(cost.STRATEGIES) == set(strategies.names())
    assert cost.STRATEGIES[0] == strategies.DEFAULT == "shm"
    assert cost.PIPELINE_CHUNK == pipelined.DEFAULT_CHUNK
    if not os.environ.get("EOPHIS_HPC_SHM_STAGE"):
        assert cost.SHM_STAGE_BYTES == shared.STAGE_BYTES
    assert jobmod.Job(eh.Grid(8, 4), eh.Decomposition.auto(eh.Grid(8, 4), 1)).strategies \
        == cost.STRATEGIES


def test_shm_one_to_one_worked_by_hand():
    """8x4, 1:1 on one node, 2 levels float64 (512 bytes each way): the model rank copies into
    the worker's batch (one copy, READY and DONE); the worker stages its output while the model
    rank reads it (two copies at once, the reads one step behind). With Coupler.buffer arrays
    the worker makes both copies."""
    t = one_to_one()
    m = MACHINE
    b, o, lat = 512, m.message_overhead_s, m.latency_s
    copy = b / min(m.copy_bandwidth, m.node_memory_bandwidth)
    shm = cost.predict(t, m, "shm")
    assert shm.phases["scatter"] == pytest.approx(2 * lat + copy + 2 * o)
    two = b / min(m.copy_bandwidth, m.node_memory_bandwidth / 2)  # two ranks copy at once
    assert shm.phases["gather"] == pytest.approx(2 * lat + two + 2 * o + two)
    assert shm.exchange_s == pytest.approx(shm.phases["scatter"] + shm.phases["gather"]
                                           + m.exchange_overhead_s)
    assert shm.model_cpu_s == pytest.approx(copy + 2 * o + two + 2 * o + o)  # + the note
    buf = cost.predict(t, m, "shm", shm_buffers=True)
    assert buf.phases["scatter"] == pytest.approx(2 * lat + copy + 2 * o)
    assert buf.phases["gather"] == pytest.approx(2 * lat + copy + 2 * o)
    assert buf.model_cpu_s == pytest.approx(4 * o + o)  # tokens only: the worker copies
    assert buf.exchange_s < shm.exchange_s


@pytest.mark.parametrize("buffers", [False, True])
def test_shm_on_one_node_uses_no_mpi_bandwidth(buffers):
    """Every route on a node: no network, no MPI message bandwidth, no datatype walk; copies
    and latency only."""
    g = eh.Grid(256, 128, "cyclic", north="fold")
    plan = eh.Plan(g, eh.Decomposition.auto(g, 4), eh.Decomposition.auto(g, 2), halo=2)
    t = traffic.messages(plan, 20, 8, owners(2, 2), np.zeros(4, int), np.zeros(2, int))
    base = cost.predict(t, MACHINE, "shm", shm_buffers=buffers).exchange_s
    for field in ("onnode_bandwidth", "network_bandwidth", "nic_bandwidth", "datatype_bandwidth",
                  "network_latency_s"):
        other = replace(MACHINE, **{field: getattr(MACHINE, field) * 7})
        assert cost.predict(t, other, "shm", shm_buffers=buffers).exchange_s == base, field
    slower = replace(MACHINE, copy_bandwidth=MACHINE.copy_bandwidth / 4)
    assert cost.predict(t, slower, "shm", shm_buffers=buffers).exchange_s > base
    later = replace(MACHINE, latency_s=MACHINE.latency_s * 10)
    assert cost.predict(t, later, "shm", shm_buffers=buffers).exchange_s > base
    # with fields of megabytes (copies, not messages, dominate) it beats the strategies that
    # go through MPI here (two MPI copies or a datatype walk; small fields: two tokens per
    # peer against one message)
    for s in ("packed", "datatype"):
        assert base < cost.predict(t, MACHINE, s).exchange_s


def test_shm_across_nodes_is_datatype():
    g = eh.Grid(64, 32)
    plan = eh.Plan(g, eh.Decomposition.auto(g, 4), eh.Decomposition.auto(g, 2), halo=1)
    t = traffic.messages(plan, 4, 8, owners(2, 2), np.zeros(4, int), np.array([1, 2]))
    assert not t.scatter.onnode.any() and not t.gather.onnode.any()
    shm, dt = (cost.predict(t, MACHINE, s, 2, 1, 1e-3, 0.5) for s in ("shm", "datatype"))
    for k in ("scatter", "gather"):
        assert shm.phases[k] == pytest.approx(dt.phases[k])
    assert shm.exchange_s == pytest.approx(dt.exchange_s)
    assert shm.step_lag1_s == pytest.approx(dt.step_lag1_s)


@SETTINGS
@given(case=layouts(), nz=st.integers(1, 3), seed=st.integers(0, 2**31),
       buffers=st.booleans())
def test_shm_with_some_routes_off_node_takes_the_slower_of_both(case, nz, seed, buffers):
    """A direction of shm is never faster than its off-node routes alone through datatype, nor
    than its on-node routes alone through the windows."""
    plan, q = case
    rng = np.random.default_rng(seed)
    owner = owners(plan.n_dst, q)
    t = traffic.messages(plan, nz, 8, owner, rng.integers(0, 2, plan.n_src),
                         rng.integers(0, 2, q))

    only = cost._subset  # a direction's messages where keep is true
    full = cost.predict(t, MACHINE, "shm", shm_buffers=buffers)
    for part in (False, True):  # the off-node routes, the on-node ones
        sub = replace(t, scatter=only(t.scatter, t.scatter.onnode == part),
                      gather=only(t.gather, t.gather.onnode == part))
        alone = cost.predict(sub, MACHINE, "datatype" if not part else "shm", shm_buffers=buffers)
        for k in ("scatter", "gather"):
            assert full.phases[k] >= alone.phases[k] * (1 - 1e-12)


def test_shm_rank_with_routes_on_and_off_its_node_does_both_in_turn():
    """One worker sends back to two model ranks, one on its node, one not: it stages its rows
    into its window and walks the datatype of the far one's message one after the other, so the
    walk adds to the gather (a network fast enough that the ranks' work, not the link, takes
    the time)."""
    fast = replace(MACHINE, network_bandwidth=1e12, nic_bandwidth=1e12)
    g = eh.Grid(64, 32, "cyclic")
    plan = eh.Plan(g, eh.Decomposition.auto(g, 2), eh.Decomposition.auto(g, 1), halo=2)
    t = traffic.messages(plan, 40, 8, np.zeros(1, int), np.array([0, 1]), np.zeros(1, int))
    near = t.gather.onnode
    assert near.tolist().count(True) == 1 and len(t.gather) == 2
    assert not t.gather.contig_send[~near].any()  # the tile's own box inside its halo
    free_walk = replace(fast, datatype_bandwidth=1e15)
    quick = cost.predict(t, free_walk, "shm").phases["gather"]
    slow = cost.predict(t, fast, "shm").phases["gather"]
    walk = float(t.gather.nbytes[~near][0]) / fast.datatype_bandwidth
    assert quick + 0.1 * walk < slow <= quick + walk * (1 + 1e-12)


def test_pipelined_with_one_chunk_is_packed():
    """Every end non-contiguous (a tile with a halo, a model array with its own), one chunk
    per message: the pack, transfer and unpack follow one another as in packed."""
    t = one_to_one(nz=3, halo=1, model_halo=1, grid=(16, 12))
    for msg in (t.scatter, t.gather):
        assert not msg.contig_send.any() and not msg.contig_recv.any()
    for args in ((1, 1), (2, 1), (1, 3)):
        packed = cost.predict(t, MACHINE, "packed", *args)
        one = cost.predict(t, MACHINE, "pipelined", *args, chunk=10**9)
        if args == (1, 1):
            assert one.exchange_s == pytest.approx(packed.exchange_s, rel=1e-12)
        else:  # with several fields, the next field's pack overlaps this one's transfer
            assert one.exchange_s <= packed.exchange_s * (1 + 1e-12)
    # a contiguous end is sent from (received into) the caller's memory: no copy there
    plain = one_to_one(nz=3, grid=(16, 12))
    assert plain.scatter.contig_send.all() and plain.scatter.contig_recv.all()
    assert (cost.predict(plain, MACHINE, "pipelined", chunk=10**9).exchange_s
            < cost.predict(plain, MACHINE, "packed").exchange_s)


def test_pipelined_chunks_move_at_the_hot_cache_bandwidth_on_a_node():
    """On a node a pipelined chunk was just packed: it moves at ``onnode_bandwidth_hot``;
    packed and datatype messages keep the (cold) ``onnode_bandwidth``."""
    t = one_to_one(nz=3, halo=1, model_halo=1, grid=(16, 12))
    hot = replace(MACHINE, onnode_bandwidth_hot=MACHINE.onnode_bandwidth * 4)
    assert MACHINE.onnode_bandwidth_hot is None  # left out: onnode_bandwidth stands in
    assert MACHINE.bandwidth("onnode_bandwidth_hot", 1e6) == MACHINE.bandwidth("onnode_bandwidth",
                                                                                1e6)
    for s in ("packed", "datatype"):
        assert cost.predict(t, hot, s).exchange_s == cost.predict(t, MACHINE, s).exchange_s
    b = float(t.scatter.nbytes[0])
    slow = cost.predict(t, MACHINE, "pipelined", chunk=10**9).phases["scatter"]
    fast = cost.predict(t, hot, "pipelined", chunk=10**9).phases["scatter"]
    assert slow - fast == pytest.approx(b / MACHINE.onnode_bandwidth * 0.75, rel=1e-9)


def test_pipelined_chunks_overlap_pack_and_network():
    """Across nodes the chunks' packs overlap their transfers: with cheap messages, more
    chunks shorten the exchange, down to the slowest resource; message costs bring it back."""
    t = one_to_one(nz=16, halo=2, model_halo=1, worker_node=1, grid=(128, 64))
    b = float(t.scatter.nbytes[0])
    cheap = replace(MACHINE, message_overhead_s=0.0)
    times = [cost.predict(t, cheap, "pipelined", chunk=int(b / n)).phases["scatter"]
             for n in (1, 2, 8, 64)]
    assert all(a > c for a, c in zip(times, times[1:])), times
    pack = b / MACHINE.copy_bandwidth
    link = b / MACHINE.network_bandwidth
    unpack = b / MACHINE.copy_bandwidth
    assert times[0] == pytest.approx(cheap.network_latency_s + pack + link + unpack)
    assert times[-1] >= cheap.network_latency_s + max(pack, link, unpack)
    assert times[-1] < cost.predict(t, cheap, "packed").exchange_s
    costly = replace(MACHINE, message_overhead_s=1e-3)
    assert (cost.predict(t, costly, "pipelined", chunk=int(b / 64)).exchange_s
            > cost.predict(t, costly, "pipelined", chunk=int(b / 2)).exchange_s)


def test_bad_chunk_and_strategy_are_named():
    t = one_to_one()
    with pytest.raises(ValueError, match="chunk must be at least 1 byte"):
        cost.predict(t, MACHINE, "pipelined", chunk=0)
    with pytest.raises(ValueError, match="strategy 'mpi' is not one of shm, packed"):
        cost.predict(t, MACHINE, "mpi")


def test_validation_matrix_measures_shm_and_pipelined_at_one_to_one():
    from eophis_hpc.sizing import validate
    rows = validate.matrix()
    by = {}
    for cfg in rows:
        by.setdefault(cfg["strategy"], set()).add((cfg["P"], cfg["Q"]))
    assert by["packed"] == by["datatype"] == set(validate.PQ)
    assert by["shm"] == by["pipelined"] == {(1, 1)}
    assert len(rows) == 2 * 2 * (2 * len(validate.PQ) + 2)
    m = Machine.load("opa100-40core")
    small = dict(rows[0], grid="DINO")
    got = {s: validate.predict_roundtrip(m, dict(small, strategy=s, halo=2))
           for s in cost.STRATEGIES}
    assert all(v > 0 for v in got.values())
    assert got["shm"] < got["datatype"] < got["packed"]
    assert validate.predict_roundtrip(m, dict(small, strategy="shm", halo=2, buffers=True)) \
        < got["shm"]


def test_machine_files_without_the_row_length_get_the_old_default(tmp_path):
    data = MACHINE.to_dict()
    del data["datatype_row_bytes"]
    p = tmp_path / "m.json"
    p.write_text(json.dumps(data))
    assert Machine.load(p).datatype_row_bytes == 8192
    p.write_text(json.dumps(dict(data, datatype_row_bytes=0)))
    with pytest.raises(ValueError, match="datatype_row_bytes must be a positive integer"):
        Machine.load(p)
    from eophis_hpc.sizing.calibrate import tile_rows
    assert tile_rows() == (720 * 8, 20 * 8)
    assert tile_rows(100, 0, 4) == (400, 4)


def test_notes_go_to_group_leaders_who_pass_them_on():
    from eophis_hpc.protocol.wire import note_group
    """The note phase: one message per worker up to 16 workers; beyond, one per group leader
    from the root, then the leader's group; 1,000 workers cost about 64 messages, not 1,000."""
    from types import SimpleNamespace
    nodes = SimpleNamespace(stretch=np.ones(2))
    o = MACHINE.message_overhead_s

    def note(q, worker_node=0):
        t = SimpleNamespace(n_workers=q, model_node=np.zeros(1, int),
                            worker_node=np.full(q, worker_node))
        seconds, root = cost._note_s(t, MACHINE, nodes)
        assert root == pytest.approx(-(-q // note_group(q)) * o)  # the root's sends only
        return seconds

    assert note(16) == pytest.approx(16 * o)
    assert note(1000) == pytest.approx(32 * o + MACHINE.latency_s + 31 * o + MACHINE.latency_s)
    assert note(1000, worker_node=1) == pytest.approx(
        32 * o + MACHINE.network_latency_s + 31 * o + MACHINE.latency_s)
    assert note(1000) < 1000 * o / 10
    # a group whose members sit on another node than its leader pays the network's latency
    nodes_of = np.repeat(np.arange(25), 40)  # 40 workers a node: group 32..63 spans two nodes
    t = SimpleNamespace(n_workers=1000, model_node=np.zeros(1, int), worker_node=nodes_of)
    wide = SimpleNamespace(stretch=np.ones(25))
    assert cost._note_s(t, MACHINE, wide)[0] == pytest.approx(
        32 * o + MACHINE.network_latency_s + 31 * o + MACHINE.network_latency_s)
