"""Memory of one worker and one model rank (pure estimates, bytes).

Counted: the batches the model reads and writes (inputs with the halo, outputs with it, the
worst case), the persistent buffers of the packed and pipelined strategies (one buffer of all
routes each), the committed MPI datatypes of the datatype strategy, the shared-memory segments
of the shm strategy (a worker's input batches are its window, so only its output segments, the
tiles' own boxes, come on top; a model rank's box per field) with the datatypes of its off-node
routes, the layout every rank builds (plan tables and boxes), and the Python runtime
(interpreter, NumPy, mpi4py, the kernels). Not counted: the ML framework and its model, MPI's
own buffers, and the second set of input batches of lagged exchanges.
"""
from __future__ import annotations

import numpy as np

from ..plan import Plan
from .traffic import Traffic

RUNTIME_BYTES = 110 * 2**20  # Python + NumPy + mpi4py + eophis_hpc + Numba, measured RSS
DATATYPE_BYTES_PER_RUN = 512  # a committed subarray/hvector in the MPI library (estimate)
PAIR_BYTES = 250  # a (src, dst) -> slice entry of the plan's Python dicts
BOX_BYTES = 200  # a Box namedtuple in a Decomposition


def layout_bytes(plan: Plan) -> int:
    """The plan and decompositions every rank holds (one grid point type)."""
    return int(plan.blocks.nbytes + plan.back_blocks.nbytes + plan.fills.nbytes
               + plan.back_fills.nbytes + PAIR_BYTES * (len(plan.pairs) + len(plan.back_pairs))
               + BOX_BYTES * (plan.n_src + plan.n_dst))


def estimate(plan: Plan, t: Traffic, owner: np.ndarray, nz: int, itemsize: int,
             fields_in: int, fields_out: int) -> dict:
    """Bytes per worker (the largest) and per model rank (the largest), by item and strategy."""
    tiles = np.bincount(owner, minlength=t.n_workers)
    hh, ww = plan.tile_shape_of(0)
    tile_bytes = nz * hh * ww * itemsize
    batch_in = int(tiles.max()) * tile_bytes * fields_in
    batch_out = int(tiles.max()) * tile_bytes * fields_out
    _, w_recv = t.scatter.per_rank("receiver", t.n_workers)
    _, w_send = t.gather.per_rank("sender", t.n_workers)
    _, m_send = t.scatter.per_rank("sender", t.n_model)
    _, m_recv = t.gather.per_rank("receiver", t.n_model)
    w_buffers = float(np.max(w_recv * fields_in + w_send * fields_out))
    m_buffers = float(np.max(m_send * fields_in + m_recv * fields_out))
    # datatypes: one run per block, per field, at each end (shm: off-node routes only)
    def runs(keep_scatter, keep_gather) -> tuple[np.ndarray, np.ndarray]:
        """Runs per worker and per model rank of the kept messages."""
        ws = t.scatter.blocks * keep_scatter * fields_in
        wg = t.gather.blocks * keep_gather * fields_out
        return (np.bincount(t.scatter.receiver, weights=ws, minlength=t.n_workers)
                + np.bincount(t.gather.sender, weights=wg, minlength=t.n_workers),
                np.bincount(t.scatter.sender, weights=ws, minlength=t.n_model)
                + np.bincount(t.gather.receiver, weights=wg, minlength=t.n_model))
    w_runs, m_runs = runs(1, 1)
    w_far, m_far = runs(~t.scatter.onnode, ~t.gather.onnode)
    own = np.array([b.size for b in plan.dst.boxes], dtype=np.float64)
    w_own = np.bincount(owner, weights=own, minlength=t.n_workers) * nz * itemsize
    w_segments = float(np.max(w_own)) * fields_out
    m_segments = float(max(b.size for b in plan.src.boxes)) * nz * itemsize * (fields_in
                                                                              + fields_out)
    lay = layout_bytes(plan)
    common = RUNTIME_BYTES + lay
    worker = {"batches": batch_in + batch_out, "layout": lay, "runtime": RUNTIME_BYTES,
              "packed_buffers": w_buffers,
              "datatypes": float(w_runs.max() * DATATYPE_BYTES_PER_RUN)}
    model = {"layout": lay, "runtime": RUNTIME_BYTES, "packed_buffers": m_buffers,
             "datatypes": float(m_runs.max() * DATATYPE_BYTES_PER_RUN)}
    worker["shm_segments"] = w_segments
    model["shm_segments"] = m_segments
    worker["total_packed"] = common + worker["batches"] + w_buffers
    worker["total_datatype"] = common + worker["batches"] + worker["datatypes"]
    worker["total_pipelined"] = worker["total_packed"]
    worker["total_shm"] = (common + worker["batches"] + w_segments
                           + float(w_far.max() * DATATYPE_BYTES_PER_RUN))
    model["total_packed"] = common + m_buffers
    model["total_datatype"] = common + model["datatypes"]
    model["total_pipelined"] = model["total_packed"]
    model["total_shm"] = common + m_segments + float(m_far.max() * DATATYPE_BYTES_PER_RUN)
    return {"worker": worker, "model_rank": model, "tiles_per_worker_max": int(tiles.max()),
            "tile_shape_with_halo": [hh, ww]}
