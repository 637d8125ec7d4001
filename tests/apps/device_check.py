"""MPMD test program for the model hand-over (frameworks, devices, dtype, chunks, stacked
inputs, land tiles left out): workers check, inside the model, that every batch row is exactly
the reference tile of the tile it claims to be (in the framework's tensor type, dtype and
place), that land tiles never reach the model and that each batch is cut into the chunks asked
for; model ranks check that they get back exactly the global stencil, and the fill value over
land tiles.

Usage: python device_check.py model|worker config.json. Exits non-zero on any mismatch.
Config keys beyond coupled_check.py's: framework, device, dtype, chunks, stack, land_rect
(j0, j1, i0, i1 of a zero region of the static mask; enables land=), workers, router.
"""
from __future__ import annotations

import json
import sys

import numpy as np

import eophis_hpc as eh
from coupled_check import exchanges, field, grid_of, output_name, stencil
from eophis_hpc.reference import extend, reference_tile
from eophis_hpc.protocol.layout import Layout


def mask_of(cfg) -> np.ndarray:
    g = grid_of(cfg)
    mask = np.ones((1, g.ny, g.nx))
    if cfg.get("land_rect"):
        j0, j1, i0, i1 = cfg["land_rect"]
        mask[:, j0:j1, i0:i1] = 0.0
    return mask


def model_boxes(cfg):
    return eh.Decomposition.blocks(grid_of(cfg), *cfg["model_blocks"]).boxes


def land_tiles(cfg) -> set:
    """Tiles whose own box is all zero in the mask (the same layout the handshake builds)."""
    if not cfg.get("land_rect"):
        return set()
    lay = Layout(grid_of(cfg), model_boxes(cfg), cfg["workers"], cfg["halo"], cfg.get("tiles"))
    mask = mask_of(cfg)
    return {d for d, b in enumerate(lay.dst.boxes) if not mask[:, b.j0:b.j1, b.i0:b.i1].any()}


def model_dtype(cfg, ex):
    return np.dtype(cfg["dtype"]) if cfg.get("dtype") else np.dtype(ex.dtype)


def run_model(cfg) -> None:
    from mpi4py import MPI
    g = grid_of(cfg)
    rank = MPI.COMM_WORLD.rank
    box = model_boxes(cfg)[rank]
    cpl = eh.connect(g, box)
    h = cfg["halo"]
    cpl.put("mask", np.ascontiguousarray(mask_of(cfg)[:, box.j0:box.j1, box.i0:box.i1]), 0)
    land = land_tiles(cfg)
    lay = Layout(g, model_boxes(cfg), cfg["workers"], h, cfg.get("tiles"))
    dyn = [ex for ex in exchanges(cfg) if not ex.static]
    for step in range(cfg["steps"]):
        for ex in dyn:
            for name in ex.inputs:
                glb = field(cfg, name, step, ex.levels, ex.dtype)
                cpl.put(name, np.ascontiguousarray(glb[:, box.j0:box.j1, box.i0:box.i1]), step)
        for ex in dyn:
            for name in ex.inputs:
                got = cpl.get(output_name(name), step)
                if not cpl.schedule.due(cpl.schedule.fields[name].exchange, step):
                    continue
                sign = float(ex.signs.get(name, 1.0))
                glb = extend(field(cfg, name, step, ex.levels, ex.dtype), grid_of(cfg, ex.point),
                             h, sign)
                want = stencil(glb.astype(model_dtype(cfg, ex)), h).astype(ex.dtype)
                for d in land:  # land tiles come back as the fill value
                    b = lay.dst.boxes[d]
                    want[:, b.j0:b.j1, b.i0:b.i1] = 0.0
                want = want[:, box.j0:box.j1, box.i0:box.i1]
                if not np.array_equal(got, want):
                    bad = np.argwhere(got != want)
                    sys.exit(f"model rank {rank}: {output_name(name)} at step {step} differs at "
                             f"{len(bad)} points, first {bad[0].tolist()}: {got[tuple(bad[0])]} "
                             f"vs {want[tuple(bad[0])]}")
    cpl.close()
    print(f"model rank {rank}: OK", flush=True)


# ---------------------------------------------------------------------- worker side
def to_host(x, framework: str) -> np.ndarray:
    """A test-side copy of a model input or output (the check, not the hot path)."""
    if framework == "torch":
        return x.cpu().numpy()
    if framework == "cupy":
        return x.get()
    if framework == "numba" and hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    return np.asarray(x)


def from_host(y: np.ndarray, like, framework: str, dev: str):
    """The stencil's result in the framework's type, where the model runs."""
    if framework == "jax":
        import jax.numpy as jnp
        return jnp.asarray(y)
    if framework == "cupy":
        import cupy
        return cupy.asarray(y)
    if framework == "numba" and dev != "cpu":
        from numba import cuda
        return cuda.to_device(np.ascontiguousarray(y))
    return y


def check_type(x, cfg) -> None:
    """The batch is the framework's own type, where the model runs."""
    fw, dev = cfg.get("framework", "numpy"), cfg.get("device", "cpu")
    kind = type(x).__module__.split(".")[0] + "." + type(x).__name__
    sim = cfg.get("simulator", False)
    want = {"numpy": "numpy.ndarray", "torch": "torch.Tensor", "jax": "jaxlib.ArrayImpl",
            "cupy": "cupy.ndarray",
            "numba": "numpy.ndarray" if dev == "cpu" else
            ("numba.FakeCUDAArray" if sim else "numba.DeviceNDArray")}[fw]
    if kind != want and not (fw == "jax" and "Array" in kind):
        raise AssertionError(f"the model got a {kind}, expected {want}")
    if fw == "torch" and x.device.type != dev.split(":")[0]:
        raise AssertionError(f"the model got a tensor on {x.device}, expected {dev}")
    if fw == "jax" and dev != "cpu" and next(iter(x.devices())).platform != "gpu":
        raise AssertionError(f"the model got a JAX array on {x.devices()}, expected a GPU")


def run_worker(cfg) -> None:
    g = grid_of(cfg)
    h = cfg["halo"]
    fw, dev = cfg.get("framework", "numpy"), cfg.get("device", "cpu")
    tunnel = eh.Tunnel(g, halo=h, exchanges=exchanges(cfg), tiles=cfg.get("tiles"),
                       strategy=cfg["strategy"], framework=fw, device=dev, dtype=cfg.get("dtype"),
                       chunks=cfg.get("chunks", 1), stack=cfg.get("stack", False),
                       land="mask" if cfg.get("land_rect") else None, verbose=False)
    land = land_tiles(cfg)
    if cfg.get("land_rect") and not land:
        raise AssertionError(f"land_rect {cfg['land_rect']} leaves no tile all land")
    seen: dict = {}  # (exchange keyword set, step) -> [tiles of each call]

    def closure(step, tiles, **inputs):
        layout = tunnel.layout
        mine = set(layout.tiles_of[tunnel.rank])
        if set(tiles.tolist()) - mine or set(tiles.tolist()) & land:
            raise AssertionError(f"rows {tiles.tolist()}: not this worker's sea tiles")
        out = {}
        due = {k: v for k, v in inputs.items() if v is not None and k != "mask"}
        seen.setdefault((tuple(sorted(due)), step), []).append(tiles.tolist())
        for kw, batch in due.items():
            check_type(batch, cfg)
            host = to_host(batch, fw)
            ex = next(e for e in exchanges(cfg) if kw in e.inputs or kw == e.stack_name(
                cfg.get("stack", False)))
            names = list(ex.inputs) if kw not in ex.inputs else [kw]
            dtype = model_dtype(cfg, ex)
            if host.dtype != dtype or host.shape[1] != ex.levels * len(names):
                raise AssertionError(f"{kw}: {host.dtype} {host.shape}, expected {dtype} with "
                                     f"{ex.levels * len(names)} channels")
            for c, name in enumerate(names):
                spec = tunnel.schedule.fields[name]
                glb = field(cfg, name, step, spec.levels, spec.dtype)
                part = host[:, c * ex.levels:(c + 1) * ex.levels]
                for r, d in enumerate(tiles.tolist()):
                    want = reference_tile(glb, grid_of(cfg, spec.point),
                                          layout.plan(spec.point).read_boxes[d], h, spec.sign)
                    if not np.array_equal(part[r], want.astype(dtype)):
                        raise AssertionError(f"worker {tunnel.rank}: tile {d} of {name} at "
                                             f"step {step} differs from the reference")
                if fw == "torch":  # the framework computes: same operations, same rounding
                    res = stencil(batch[:, c * ex.levels:(c + 1) * ex.levels], h)
                else:
                    res = from_host(stencil(part, h), batch, fw, dev)
                out[output_name(name)] = res
        return out

    if cfg.get("router"):
        @tunnel.router
        def router(step, tiles, **inputs):
            return closure(step, tiles, **inputs)
    else:
        tunnel.model(closure)
    mask = tunnel.receive("mask")
    if cfg.get("land_rect"):  # the static field as the model sees it: sea rows only
        sea = [d for d in tunnel.layout.tiles_of[tunnel.rank] if d not in land]
        if to_host(mask, fw).shape[0] != len(sea):
            raise AssertionError(f"receive('mask'): {to_host(mask, fw).shape[0]} rows, "
                                 f"{len(sea)} sea tiles")
    tunnel.run()
    sea = [d for d in tunnel.layout.tiles_of[tunnel.rank] if d not in land]
    want_calls = min(cfg.get("chunks", 1), len(sea))
    for key, calls in seen.items():
        if sorted(t for c in calls for t in c) != sea or len(calls) != want_calls:
            raise AssertionError(f"{key}: the model saw tiles {calls}, expected {sea} in "
                                 f"{want_calls} chunks")
    if tunnel.rank == 0:
        print(tunnel.describe(), flush=True)
        print("phases:", " ".join(sorted(tunnel.timings.total)), flush=True)
    print(f"worker {tunnel.rank}: OK after {len(seen)} occurrences", flush=True)


if __name__ == "__main__":
    role, path = sys.argv[1], sys.argv[2]
    with open(path) as fh:
        config = json.load(fh)
    (run_model if role == "model" else run_worker)(config)
