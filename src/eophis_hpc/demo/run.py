"""``eophis-hpc demo``: launch the coupled ocean + CNN job, rerun it in one process, compare,
print the cost table and save a figure (fields and a timeline of the last steps). ``--lag L``
makes the exchange lagged: the model gets the forcing computed from its state L steps earlier
(zero for the first L steps), so it keeps stepping while the workers infer; the single-process
run applies the same lag."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from ..launch import mpmd_command
from .timeline import overlap_fraction


def reference_run(cfg: dict) -> dict:
    """The same simulation on the global arrays, with the CNN applied to the whole field
    extended by the boundary semantics of docs/architecture.md (no decomposition at all) and
    the forcing of step ``n - lag`` (zero before the first) at step n."""
    import torch

    import eophis_hpc as eh
    from eophis_hpc.decomposition import Box
    from eophis_hpc.reference import extend

    from . import gz21
    from .ocean import advance, coriolis, initial_state, wind

    torch.set_num_threads(cfg.get("threads", 1))
    grid = eh.Grid.preset(cfg["grid"])
    nz = cfg["levels"]
    net = gz21.build(cfg["cnn"], weights=cfg.get("weights"))
    u, v = initial_state(grid, nz)
    f = coriolis(grid, 0, grid.ny)
    tx, ty = wind(grid, Box(0, grid.ny, 0, grid.nx), nz)
    lag = cfg.get("lag", 0)
    computed = deque(maxlen=lag + 1)  # the forcings of the last lag + 1 steps
    zero = np.zeros((nz,) + grid.shape)
    su = sv = None
    for step in range(cfg["steps"]):
        ue = extend(u, grid, gz21.HALO, sign=-1.0).astype(np.float32)[None]
        ve = extend(v, grid, gz21.HALO, sign=-1.0).astype(np.float32)[None]
        su_t, sv_t = gz21.apply(net, torch.from_numpy(ue), torch.from_numpy(ve))
        computed.append((su_t.numpy()[0].astype(np.float64), sv_t.numpy()[0].astype(np.float64)))
        su, sv = (zero, zero) if step < lag else computed[0]  # step n uses n - lag's
        u, v = advance(extend(u, grid, 1, -1.0), extend(v, grid, 1, -1.0), su, sv, f, tx, ty)
    return {"u": u, "v": v, "su": su, "sv": sv}


def relative_difference(coupled: np.ndarray, ref: np.ndarray) -> float:
    """Largest ``|coupled - ref|`` over the largest ``|ref|`` (each field on its own scale, so a
    small forcing is checked as strictly as the velocities); NaN when either is not finite."""
    scale = float(np.max(np.abs(ref)))
    diff = float(np.max(np.abs(coupled - ref)))
    return diff / scale if scale > 0 else diff


def plot(out_dir: Path, grid_name: str, coupled: dict, model_spans: list, worker_spans: list,
         lag: int) -> Path:
    """Model field and CNN output side by side on the model grid (level 0), and below them the
    timeline of the last steps (model rank 0 and worker 0)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .timeline import draw

    fig = plt.figure(figsize=(12, 6.8), constrained_layout=True)
    grid_spec = fig.add_gridspec(2, 2, height_ratios=[3, 1.3])
    axes = [fig.add_subplot(grid_spec[0, 0]), fig.add_subplot(grid_spec[0, 1])]
    draw(fig.add_subplot(grid_spec[1, :]), model_spans, worker_spans, steps=5, lag=lag)
    speed = np.hypot(coupled["u"][0], coupled["v"][0])
    for ax, data, title, cmap in ((axes[0], speed, "ocean speed |u| (level 0)", "viridis"),
                                  (axes[1], coupled["su"][0], "CNN forcing Su (level 0)", "RdBu_r")):
        lim = np.max(np.abs(data)) if cmap == "RdBu_r" else None
        im = ax.imshow(data, origin="lower", cmap=cmap, vmin=-lim if lim else None, vmax=lim,
                       aspect="auto")
        ax.set_title(title)
        ax.set_xlabel("i (east)")
        ax.set_ylabel("j (north)")
        fig.colorbar(im, ax=ax, shrink=0.9)
    fig.suptitle(f"eophis_hpc demo on {grid_name}: model ranks + GZ21-shaped CNN workers")
    path = out_dir / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("eophis-hpc demo needs PyTorch for the CNN workers. Install the extra:\n"
              "    python -m pip install 'eophis_hpc[torch]'   (pins the CPU wheel torch==2.13.0)",
              file=sys.stderr)
        return 2
    import eophis_hpc as eh

    from . import gz21

    try:  # a weights file that fits no network is refused here, before the MPI job starts
        arch = (gz21.load(args.weights, args.cnn)[0] if args.weights
                else gz21.ARCHITECTURES[args.cnn or "light"])
    except gz21.WeightsError as exc:
        print(f"eophis-hpc demo: error: {exc}", file=sys.stderr)
        return 2
    weights = str(Path(args.weights).resolve()) if args.weights else None
    grid = eh.Grid.preset(args.grid)
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*_timings.json"):
        old.unlink()
    cfg = {"grid": grid.name, "levels": args.levels, "steps": args.steps,
           "model_ranks": args.model_ranks, "workers": args.workers, "tiles": args.tiles,
           "strategy": args.strategy, "backend": args.backend, "cnn": arch.name,
           "weights": weights, "threads": 1, "lag": args.lag}
    cfg_path = out_dir / "config.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    cmd = mpmd_command(args.model_ranks, [sys.executable, "-m", "eophis_hpc.demo.ocean",
                                          str(out_dir), str(cfg_path)],
                       args.workers, [sys.executable, "-m", "eophis_hpc.demo.closure",
                                      str(out_dir), str(cfg_path)])
    print(f"eophis_hpc demo: {grid.describe()}, {args.levels} level(s), {args.steps} steps, "
          f"{args.model_ranks} model rank(s) -> {args.workers} worker(s), strategy {args.strategy}"
          + (f", lag {args.lag}" if args.lag else ""))
    print(f"  network: {arch.description}, "
          + (f"weights from {weights}" if weights else "fixed-seed weights"))
    print("  $ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(cmd)
    if res.returncode != 0:
        print(f"eophis_hpc demo: the coupled job failed (exit {res.returncode})", file=sys.stderr)
        return res.returncode
    coupled_wall = time.perf_counter() - t0
    print("  reference: the same run in one process on the global field ...", flush=True)
    t1 = time.perf_counter()
    ref = reference_run(cfg)
    ref_wall = time.perf_counter() - t1
    with np.load(out_dir / "coupled.npz") as data:
        coupled = {k: data[k] for k in data.files}
    diff = float(np.max([relative_difference(coupled[k], ref[k]) for k in ref]))  # NaN wins
    tol = 1e-4
    passed = diff <= tol and all(np.all(np.isfinite(coupled[k])) for k in coupled)
    model_t = json.loads((out_dir / "model_timings.json").read_text())
    reports = [json.loads(p.read_text()) for p in sorted(out_dir.glob("worker_*_timings.json"))]
    workers = [r["phases"] for r in reports]
    infer = float(np.median([w["model"]["median"] for w in workers if "model" in w]))
    waited = model_t["coupling_median"]
    step = model_t["model_median"] + waited
    worker0 = json.loads((out_dir / "worker_0_timings.json").read_text()).get("spans", [])
    hidden = overlap_fraction(model_t["spans"], worker0)
    rows = [
        ("grid", grid.describe()),
        ("ranks", f"{args.model_ranks} model : {args.workers} worker(s)"),
        ("steps x levels", f"{args.steps} x {args.levels}"),
        ("lag", f"{args.lag} (the model gets the forcing of step n - {args.lag} at step n)"
         if args.lag else "0 (the model gets this step's forcing: it waits for the CNN)"),
        ("bytes per step", f"{model_t['bytes_per_step'] / 1e6:.2f} MB (put + get, all model ranks)"),
        ("model time / step", f"{1e3 * model_t['model_median']:.2f} ms (computing; median over "
                              "ranks)"),
        ("time waited / step", f"{1e3 * waited:.2f} ms (in put + get)"),
        ("inference time / step", f"{1e3 * infer:.2f} ms (CNN on the workers)"),
        ("overlap achieved", "-" if hidden is None else
         f"{100 * hidden:.0f} % of the inference ran while the model computed"),
        ("coupling overhead", f"{100 * waited / step:.1f} % of the model step"),
        ("wall time", f"coupled {coupled_wall:.1f} s, single-process reference {ref_wall:.1f} s"),
    ]
    print("\n" + "\n".join(f"  {k:<22} {v}" for k, v in rows))
    png = plot(out_dir, grid.name, coupled, model_t["spans"], worker0, args.lag)
    print(f"\n  figure: {png}")
    verdict = "PASS" if passed else "FAIL"
    lagged = f" with the same lag ({args.lag})" if args.lag else ""
    print(f"\n{verdict}: largest difference from the single-process run{lagged} {diff:.3e} of the "
          f"field's largest value (u, v, Su, Sv each; tolerance {tol:.0e}: the CNN runs in "
          "float32 on tiles vs the whole field)")
    return 0 if passed else 1
