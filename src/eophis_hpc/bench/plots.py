"""The PNG plots of ``eophis-hpc bench`` (matplotlib, an optional dependency: the ``plot``
extra). Each function takes the report's plain data and writes one file."""
from __future__ import annotations

from pathlib import Path

PLOT_HINT = "pip install 'eophis_hpc[plot]'"
COLORS = {"cython": "tab:blue", "numba": "tab:orange", "numpy": "tab:green",
          "fancy": "tab:gray", "copyto": "black", "mpi": "tab:red"}


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _plain_log(ax, axes: str) -> None:
    """Log scale on ``axes`` ("x", "y" or "xy") with plain numbers (1, 2, 5, 10) as labels."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    for name in axes:
        axis = getattr(ax, f"{name}axis")
        getattr(ax, f"set_{name}scale")("log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())


def bandwidth(plt, kernel_rows: list[dict], mpi_rows: list[dict], path: Path) -> Path:
    """GB/s vs message size for each pack/unpack method, against ``numpy.copyto`` of the same
    bytes (the memory roofline) and the raw MPI one-way transfer of the same bytes."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True, sharey=True)
    for ax, direction in zip(axes, ("pack", "unpack")):
        rows = [r for r in kernel_rows if r["direction"] == direction]
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["bytes"], r["bytes"] / r["median_s"] / 1e9) for r in rows
                         if r["method"] == method)
            style = {"copyto": dict(lw=2.5, ls="-", label="numpy.copyto (memcpy)"),
                     "fancy": dict(ls="--", label="NumPy fancy indexing")}.get(
                method, dict(ls="-", marker="o", label=f"{method} kernels"))
            ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts],
                    color=COLORS.get(method), **style)
        sizes = {r["bytes"] for r in rows}
        pts = sorted((m["bytes"], m["bytes"] / m["median_s"] / 1e9) for m in mpi_rows
                     if m["bytes"] in sizes)
        if pts:
            ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], color=COLORS["mpi"],
                    lw=2.5, ls=":", marker="s", label="raw MPI Send/Recv, one way")
        _plain_log(ax, "xy")
        ax.set_xlabel("message bytes of the rank (MB)")
        ax.set_title(f"{direction}: bandwidth vs message size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("GB/s (bytes / median time)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def roundtrips(plt, rows: list[dict], path: Path) -> Path:
    """Median round trip vs model ranks:workers, one panel per field and halo; eophis_hpc per
    strategy next to the raw MPI exchange of the same bytes in the same job, and the naive path."""
    panels = list(dict.fromkeys((r["field"], r["halo"]) for r in rows))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 0.6, 3.9 * nrows),
                             constrained_layout=True, squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (fld, halo) in zip(axes, panels):
        sub = [r for r in rows if (r["field"], r["halo"]) == (fld, halo)]
        pqs = list(dict.fromkeys(r["pq"] for r in sub))
        x = {pq: n for n, pq in enumerate(pqs)}
        for strategy, color in (("packed", "tab:blue"), ("datatype", "tab:orange")):
            pts = [r for r in sub if r["strategy"] == strategy]
            if not pts:
                continue
            xs = [x[r["pq"]] for r in pts]
            ax.plot(xs, [r["eophis_s"] * 1e3 for r in pts], color=color, marker="o",
                    label=f"eophis_hpc {strategy}")
            ax.plot(xs, [r["raw_s"] * 1e3 for r in pts], color=color, ls=":", marker=".",
                    label=f"raw MPI (same job as {strategy})")
            naive = [(x[r["pq"]], r["naive_s"] * 1e3) for r in pts if r["naive_s"] is not None]
            if naive and strategy == "packed":
                ax.plot(*zip(*naive), color="tab:gray", ls="--", marker="x",
                        label="naive gather/pad/scatter")
        ax.set_xticks(range(len(pqs)), pqs)
        _plain_log(ax, "y")
        ax.set_xlabel("model ranks : workers")
        ax.set_title(f"{fld}, halo {halo}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    for n in range(0, len(panels), ncols):
        axes[n].set_ylabel("round trip, median (ms)")
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def step_split(plt, rows: list[dict], path: Path) -> Path:
    """Time per step on the workers split into exchange, staging and inference (stacked bars),
    with the model side's round trip as a tick; one panel per field (their scales differ)."""
    fields = list(dict.fromkeys(r["field"] for r in rows))
    sizes = [sum(r["field"] == f for r in rows) for f in fields]
    height = 0.36 * len(rows) + 1.2 * len(fields) + 0.8
    fig, axes = plt.subplots(len(fields), 1, figsize=(10, height),
                             layout="constrained", squeeze=False,
                             gridspec_kw={"height_ratios": sizes})
    for ax, fld in zip(axes[:, 0], fields):
        sub = [r for r in rows if r["field"] == fld]
        labels = [r["label"] for r in sub]
        left = [0.0] * len(sub)
        for part, color in (("exchange", "tab:blue"), ("staging", "tab:purple"),
                            ("inference", "tab:green")):
            vals = [r[part] * 1e3 for r in sub]
            ax.barh(labels, vals, left=left, color=color,
                    label=part + {"exchange": " (wait + recv + send)", "staging": " (h2d + d2h)",
                                  "inference": " (model call)"}[part])
            left = [a + b for a, b in zip(left, vals)]
        ax.plot([r["round_trip_s"] * 1e3 for r in sub], labels, "k|", markersize=14,
                label="model-side round trip")
        ax.invert_yaxis()
        ax.set_title(fld, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("ms per step (medians; slowest worker)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle("Where a step goes on the workers (eophis_hpc path)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
