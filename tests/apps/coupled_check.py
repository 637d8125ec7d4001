"""MPMD test program: model ranks put random fields and check what comes back; workers check
the tiles they receive against the reference semantics and return a halo-using stencil.

Usage: python coupled_check.py model|worker config.json. Exits non-zero on any mismatch.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np

import eophis_hpc as eh
from eophis_hpc.reference import extend, lagged, reference_tile


def field(cfg, name: str, step: int, levels: int, dtype) -> np.ndarray:
    """The global value of ``name`` at ``step`` (both sides can compute it)."""
    seed = cfg["seed"] + 1000 * step + sum(map(ord, name))
    g = grid_of(cfg)
    return np.random.default_rng(seed).standard_normal((levels, g.ny, g.nx)).astype(dtype)


def grid_of(cfg, point=None) -> eh.Grid:
    g = eh.Grid(**cfg["grid"])
    return g if point is None else g.with_point(point)


def stencil(x: np.ndarray, h: int) -> np.ndarray:
    """Centred differences that read one cell of the halo on every side (needs h >= 1)."""
    core = x[..., h:x.shape[-2] - h, h:x.shape[-1] - h]
    north = x[..., h + 1:x.shape[-2] - h + 1, h:x.shape[-1] - h]
    south = x[..., h - 1:x.shape[-2] - h - 1, h:x.shape[-1] - h]
    east = x[..., h:x.shape[-2] - h, h + 1:x.shape[-1] - h + 1]
    west = x[..., h:x.shape[-2] - h, h - 1:x.shape[-1] - h - 1]
    return (north - south) + 2 * (east - west) + core


def rss_kb() -> int:
    """Resident memory of this process in KiB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def exchanges(cfg):
    return [eh.Exchange(**ex) for ex in cfg["exchanges"]]


def output_name(name: str) -> str:
    return "f" + name


def run_model(cfg) -> None:
    g = eh.Grid(**cfg.get("model_grid", cfg["grid"]))
    dec = eh.Decomposition.blocks(g, *cfg["model_blocks"])
    # the coupler's own communicator gives the rank; peek with a throwaway world rank is not
    # allowed (the split is collective), so pick the box after connecting through the rank order
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.rank  # model ranks come first in an MPMD launch
    box = dec.boxes[rank]
    if "model_boxes" in cfg:  # explicit (possibly wrong) boxes
        box = eh.Box(*cfg["model_boxes"][rank])
    mh = cfg.get("model_halo", 0)
    cpl = eh.connect(g, box, check_finite=cfg.get("check_finite", False),
                     fields=cfg.get("declare"), restart=cfg.get("restart_in"),
                     strategy=cfg.get("model_strategy"))
    assert cpl.comm.rank == rank
    h = cfg["halo"]
    static = [ex for ex in exchanges(cfg) if ex.static]
    for ex in static:
        for name in ex.inputs:
            cpl.put(name, np.ascontiguousarray(field(cfg, name, 0, ex.levels, ex.dtype)[:, box.j0:box.j1, box.i0:box.i1]), 0)
    rss_start = None
    start = cfg.get("start", 0)  # a restarted run goes on from the step the first one reached
    for step in range(start, start + cfg["steps"]):
        if step == start + cfg["steps"] // 4:
            rss_start = rss_kb()
        if cfg.get("get_first"):  # lagged exchanges: the result of an earlier step comes first
            check_outputs(cfg, cpl, box, rank, step)
        for ex in exchanges(cfg):
            if ex.static:
                continue
            for name in ex.inputs:
                glb = field(cfg, name, step, ex.levels, ex.dtype)
                if cfg.get("kill_model") == [rank, step]:
                    os.kill(os.getpid(), signal.SIGKILL)
                if cfg.get("stall_model") == [rank, step]:  # alive but never puts again
                    time.sleep(3600)
                if cfg.get("nan_put") == [rank, step]:
                    glb = glb.copy()
                    glb[0, box.j0 + 1, box.i0 + 2] = np.nan
                if cfg.get("bad_put") == [rank, step]:  # a wrong shape on one rank only
                    cpl.put(name, np.zeros((ex.levels, 2, 2), dtype=ex.dtype), step)
                if cfg.get("bad_dtype") == [rank, step]:
                    cpl.put(name, np.zeros((ex.levels,) + box.shape, dtype=np.int32), step)
                if cfg.get("bad_layout") == [rank, step]:
                    cpl.put(name, np.zeros((ex.levels, box.shape[1], box.shape[0])).T, step)
                if cfg.get("use_buffers"):  # compute in the window-backed array, no copy
                    buf = cpl.buffer(name)
                    buf[...] = glb[:, box.j0:box.j1, box.i0:box.i1]
                    sent = cpl.put(name, buf, step)
                elif mh:  # the model's own halo around the box: put with an offset, no copy
                    arr = np.full((ex.levels, box.j1 - box.j0 + 2 * mh, box.i1 - box.i0 + 2 * mh),
                                  np.nan, dtype=ex.dtype)
                    arr[:, mh:-mh, mh:-mh] = glb[:, box.j0:box.j1, box.i0:box.i1]
                    sent = cpl.put(name, arr, step, offset=(mh, mh))
                else:
                    sent = cpl.put(name, np.ascontiguousarray(glb[:, box.j0:box.j1, box.i0:box.i1]), step)
                assert sent == cpl.schedule.due(cpl.schedule.fields[name].exchange, step)
                if cfg.get("kill_model_after_put") == [rank, step]:  # the worker reads its window
                    os.kill(os.getpid(), signal.SIGKILL)
        if not cfg.get("get_first"):
            check_outputs(cfg, cpl, box, rank, step)
    if rss_start is not None:
        print(f"model rank {rank}: rss growth {rss_kb() - rss_start} KiB", flush=True)
    cpl.close(restart=cfg.get("restart_out"))
    if cfg.get("dump"):  # every get of this run, to compare runs with each other
        np.savez(f"{cfg['dump']}_{rank}.npz", **GOT)
    print(f"model rank {rank}: OK", flush=True)


GOT: dict = {}  # "name@step" -> what get returned


def expected_source(cpl, e: int, step: int) -> int | None:
    """The step whose inputs produce what get returns at ``step`` (None: the initial value),
    by the single-process semantics of a lagged exchange: every due step from step 0 on is an
    occurrence, the first run starting at 0."""
    sched = cpl.schedule
    due = [s for s in range(step + 1) if sched.due(e, s)]
    return lagged(due, sched.exchanges[e].lag, None)[-1]


def check_outputs(cfg, cpl, box, rank: int, step: int) -> None:
    h = cfg["halo"]
    for ex in exchanges(cfg):
        if ex.static:
            continue
        for name in ex.inputs:
            e = cpl.schedule.fields[name].exchange
            out = cpl.buffer(output_name(name)) if cfg.get("use_buffers") else None
            got = cpl.get(output_name(name), step, out=out)
            if not cpl.schedule.due(e, step):
                assert got is None
                continue
            if cfg.get("dump"):
                GOT[f"{output_name(name)}@{step}"] = got
            source = expected_source(cpl, e, step)
            if source is None:
                want = np.full((ex.levels,) + box.shape, ex.initial, dtype=ex.dtype)
            elif cfg.get("identity"):
                want = field(cfg, name, source, ex.levels, ex.dtype)[:, box.j0:box.j1, box.i0:box.i1]
            else:
                sign = float(ex.signs.get(name, 1.0))
                gp = grid_of(cfg, ex.point)
                glb = field(cfg, name, source, ex.levels, ex.dtype)
                want = stencil(extend(glb, gp, h, sign), h)[:, box.j0:box.j1, box.i0:box.i1]
            if not np.array_equal(got, want):
                bad = np.argwhere(got != want)
                sys.exit(f"model rank {rank}: {output_name(name)} at step {step} (from step "
                         f"{source}) differs at {len(bad)} points, first {bad[0].tolist()}: "
                         f"{got[tuple(bad[0])]} vs {want[tuple(bad[0])]}")


def run_worker(cfg) -> None:
    g = grid_of(cfg)
    h = cfg["halo"]
    tunnel = eh.Tunnel(g, halo=h, exchanges=exchanges(cfg), tiles=cfg.get("tiles"), dt=cfg.get("dt"),
                       check_finite=cfg.get("check_finite", False),
                       strategy=cfg["strategy"], backend=cfg.get("backend"), verbose=False,
                       pipeline=cfg.get("pipeline"),
                       pipeline_chunk=cfg.get("pipeline_chunk"))
    seen = {"calls": 0}

    def closure(step, **inputs):
        if cfg.get("raise_at") == step:
            raise RuntimeError(f"injected failure at step {step}")
        if cfg.get("kill_worker_at") == step:
            os.kill(os.getpid(), signal.SIGKILL)
        layout = tunnel.layout
        tiles = layout.tiles_of[tunnel.rank]
        out = {}
        for name, batch in inputs.items():
            if name in tunnel.static:
                continue
            spec = tunnel.schedule.fields[name]
            gp = grid_of(cfg, spec.point)
            glb = field(cfg, name, step, spec.levels, spec.dtype)
            for k, d in enumerate(tiles):
                want = reference_tile(glb, gp, layout.plan(spec.point).read_boxes[d], h, spec.sign)
                if not np.array_equal(batch[k], want):
                    raise AssertionError(f"worker {tunnel.rank}: tile {d} of {name} at step "
                                         f"{step} differs from the reference")
            out[output_name(name)] = stencil(batch, h)
            if cfg.get("identity"):  # the batch itself, halo included: sends read the batch
                out[output_name(name)] = batch
            if cfg.get("missing_output_at") == step:
                return {}
            if cfg.get("int_output_at") == step:
                out[output_name(name)] = stencil(batch, h).astype(np.int64)
                continue
            if cfg.get("extra_output_at") == step:
                out["bogus"] = stencil(batch, h)
            if cfg.get("bad_output_at") == step:
                out[output_name(name)] = out[output_name(name)][:, :, 1:]
            if cfg.get("nan_output_at") == step:
                out[output_name(name)][0, 0, h, h] = np.inf
        # static fields reach the model too
        for ex in exchanges(cfg):
            if ex.static:
                for name in ex.inputs:
                    assert name in tunnel.static
        seen["calls"] += 1
        if seen["calls"] == cfg["steps"] // 4:
            seen["rss"] = rss_kb()
        if "rss" in seen:
            seen["rss_last"] = rss_kb()
        return out

    if cfg.get("router"):  # Eophis-style: one call per step, None for inputs not due
        @tunnel.router
        def router(step, **inputs):
            for ex in exchanges(cfg):
                if not ex.static:
                    due = tunnel.schedule.due(exchanges(cfg).index(ex), step)
                    for name in ex.inputs:
                        assert (inputs[name] is not None) == due, (name, step)
            return closure(step, **{k: v for k, v in inputs.items() if v is not None})
    else:
        tunnel.model(closure)

    if cfg.get("receive_static"):  # Eophis-style: static fields before the loop
        for ex in exchanges(cfg):
            for name in ex.inputs if ex.static else ():
                got = tunnel.receive(name)
                glb = field(cfg, name, 0, ex.levels, ex.dtype)
                for k, d in enumerate(tunnel.layout.tiles_of[tunnel.rank]):
                    box = tunnel.layout.plan(g.point).read_boxes[d]
                    if not np.array_equal(got[k], reference_tile(glb, g, box, h)):
                        raise AssertionError(f"static {name}: tile {d} differs")
    tunnel.run()
    if cfg.get("describe"):
        print(f"worker {tunnel.rank}: {tunnel.describe()}", flush=True)
    print(f"worker {tunnel.rank}: settings strategy={tunnel.strategy} "
          f"backend={tunnel.backend} tiles={len(tunnel.layout.dst.boxes)}", flush=True)
    print(f"worker {tunnel.rank}: my tiles {tunnel.layout.tiles_of[tunnel.rank]}", flush=True)
    if "rss" in seen:
        print(f"worker {tunnel.rank}: rss growth {seen['rss_last'] - seen['rss']} KiB",
              flush=True)
    print(f"worker {tunnel.rank}: OK after {seen['calls']} calls", flush=True)


if __name__ == "__main__":
    role, path = sys.argv[1], sys.argv[2]
    with open(path) as fh:
        config = json.load(fh)
    (run_model if role == "model" else run_worker)(config)
