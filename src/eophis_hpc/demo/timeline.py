"""The demo's timeline: what model rank 0 and worker 0 did over the last steps, and how much of
the inference ran while the model computed (the overlap a lagged exchange buys).

Spans are ``(phase, start, end)`` in ``time.perf_counter`` seconds (the node's monotonic
clock, shared by the processes of one machine): ``compute`` and ``coupling`` on the
model rank (``coupling``: put + get); ``wait`` (for the next exchange), ``recv``, ``model``
(inference) and ``send`` on the worker (:meth:`eophis_hpc.runtime.timings.Timings.record_spans`).
"""
from __future__ import annotations

MODEL_ROWS = (("compute", "#4c72b0"), ("coupling", "#dd8452"))
LABELS = {"compute": "model computes", "coupling": "model in put + get", "recv": "worker receives",
          "model": "worker infers", "send": "worker sends", "wait": "worker idle"}
WORKER_ROWS = (("recv", "#55a868"), ("model", "#c44e52"), ("send", "#8172b3"),
               ("wait", "#cccccc"))


def _overlap(a: tuple, b: tuple) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def overlap_fraction(model_spans: list, worker_spans: list) -> float | None:
    """Fraction of the worker's inference time (over the spans both sides kept) during which
    the model rank was computing; None without inference spans."""
    computing = sorted((s, e) for p, s, e in model_spans if p == "compute")
    if not computing:
        return None
    start = computing[0][0]
    infer = [(s, e) for p, s, e in worker_spans if p == "model" and s >= start]
    total = sum(e - s for s, e in infer)
    if total <= 0:
        return None
    hidden = sum(_overlap(i, c) for i in infer for c in computing)
    return hidden / total


def window(model_spans: list, steps: int) -> tuple[float, float] | None:
    """The time window of the model rank's last ``steps`` steps (a step: wait + compute)."""
    computes = [(s, e) for p, s, e in model_spans if p == "compute"]
    waits = [(s, e) for p, s, e in model_spans if p == "coupling"]
    if len(computes) < 1 or not waits:
        return None
    n = min(steps, len(computes))
    first = [s for s, _ in waits[-n:]] or [computes[-n][0]]
    return min(first[0], computes[-n][0]), computes[-1][1]


def draw(ax, model_spans: list, worker_spans: list, steps: int = 5, lag: int = 0) -> None:
    """Bars of the last ``steps`` model steps: model rank 0 (compute, put + get) and
    worker 0 (receive, inference, send, waiting for the next exchange), in ms."""
    span = window(model_spans, steps)
    if span is None:
        ax.text(0.5, 0.5, "no timeline recorded", ha="center", va="center")
        ax.set_axis_off()
        return
    t0, t1 = span
    rows = [("model rank 0", model_spans, MODEL_ROWS), ("worker 0", worker_spans, WORKER_ROWS)]
    labelled = set()
    for y, (_, spans, phases) in enumerate(reversed(rows)):
        for phase, color in phases:
            bars = [((s - t0) * 1e3, (e - s) * 1e3) for p, s, e in spans
                    if p == phase and e >= t0 and s <= t1]
            label = None if phase in labelled else LABELS[phase]
            labelled.add(phase)
            if bars:
                ax.broken_barh(bars, (y - 0.35, 0.7), facecolors=color, label=label)
    ax.set_yticks([0, 1], [rows[1][0], rows[0][0]])
    ax.set_xlim(0, (t1 - t0) * 1e3)
    ax.set_xlabel("time (ms)")
    frac = overlap_fraction(model_spans, worker_spans)
    hidden = "" if frac is None else f"; {frac:.0%} of the inference ran while the model computed"
    ax.set_title(f"timeline of the last {steps} steps, lag {lag}{hidden}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=6, fontsize="small",
              frameon=False)
