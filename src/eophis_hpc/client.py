"""Model-side Python client: ``cpl = eh.connect(grid, box)``, ``put``, ``get``, ``close``.

Each model rank owns one box of the global grid. ``put`` sends a field when its exchange is due
(a no-op otherwise, as OASIS does between coupling dates); ``get`` returns the workers' result for
the rank's box. The first ``put`` (or ``get``) of an exchange at a step tells the workers, through
a small control message from model rank 0, which exchange and step come next.
"""
from __future__ import annotations

import time

import numpy as np

from . import config
from .decomposition import Decomposition
from .grid import Grid
from . import checks
from .errors import CouplingError, default_timeout, install_abort_hook
from .protocol import restart as restart_io
from .protocol.schedule import FieldSpec
from .protocol.wire import STEP_STATIC, STOP_NOTE, TAG_DATA
from .runtime.lagged import LaggedOutputs
from .runtime.timings import Timings
from .transport.mpi import Link, Receiver, Sender, handshake, strategies
from .transport.mpi import notes, waits
from .transport.mpi.node import Node, share_fields


def connect(grid: Grid, box, *, holes: bool = False, fields: dict | None = None,
            strategy: str | None = None, backend: str | None = None,
            timeout: float | None = None, check_finite: bool = False,
            world=None, restart=None) -> "Coupler":
    """Join the coupled job as a model rank owning ``box`` = (j0, j1, i0, i1) of ``grid`` (or
    give the model's whole Decomposition: rank r of the model communicator takes box r).

    Collective over all model ranks. ``fields`` (optional) declares ``{name: {"levels": n,
    "dtype": "float64", "direction": "in"|"out"}}`` so that a mismatch with the workers is caught
    at the handshake. ``strategy`` (a name of ``eophis_hpc.transport.mpi.strategy_names()``)
    defaults to the workers' choice; ``shm`` works only when both sides use it.
    ``timeout`` (seconds, default ``EOPHIS_HPC_TIMEOUT`` or 600) bounds every wait for the
    workers, the join included; ``check_finite`` makes ``put`` refuse NaN/Inf, naming the first
    bad point. ``world`` is the communicator holding exactly the model and worker ranks
    (default ``COMM_WORLD``), for jobs where the launcher or another library already split it.

    Lagged exchanges (``Exchange(lag=L)`` on the workers' tunnel): ``get`` at occurrence ``n``
    returns what the workers computed from the inputs put at occurrence ``n - L``; the first
    ``L`` occurrences return the exchange's ``initial`` value, or, with ``restart=PREFIX``, the
    results the previous run left in flight (``close(restart=PREFIX)``; one file per model
    rank, :mod:`eophis_hpc.protocol.restart`). A missing or mismatching restart is refused on
    every model rank with the file and the difference.
    """
    return Coupler(grid, box, holes=holes, fields=fields, strategy=strategy, backend=backend,
                   timeout=timeout, check_finite=check_finite, world=world, restart=restart)


class Coupler:
    """One model rank's connection to the inference workers."""

    def __init__(self, grid: Grid, box, holes=False, fields=None, strategy=None, backend=None,
                 timeout=None, check_finite=False, world=None, restart=None):
        install_abort_hook()  # a bad argument below must end the MPI job, not strand the workers
        if not isinstance(grid, Grid):
            raise TypeError(f"connect: grid must be an eophis_hpc.Grid, got {type(grid).__name__}")
        if strategy is not None:
            strategies.check_name(strategy, "connect")
        timeout = config.resolve("timeout", timeout, None)
        self.timeout = default_timeout() if timeout is None else (float(timeout) or None)
        self.link = Link("model", world=world, timeout=self.timeout)
        self._note_group = notes.group_of(self.link.remote_size)
        self.comm = self.link.comm  # the model's own communicator, to use instead of COMM_WORLD
        if isinstance(box, Decomposition):  # one box per model rank, in rank order
            if len(box.boxes) != self.link.size:
                raise CouplingError(f"connect: the decomposition has {len(box.boxes)} boxes for "
                                    f"{self.link.size} model ranks", collective=True)
            holes = holes or box.holes
            box = box.boxes[self.link.rank]
        self.layout, self.schedule, options = handshake.model_side(
            self.link, grid, box, holes, fields, self.timeout, strategy)
        self.grid = grid
        self.rank = self.link.rank
        self.box = self.layout.src.boxes[self.rank]
        self.strategy = strategy or options["strategy"]
        self.link.merge()  # data messages on one intracommunicator (collective with the workers)
        self.node, self._shared = None, {}
        if strategies.STRATEGIES[self.strategy].needs_node:  # collective with the workers
            self.node = Node(self.link)
            self._shared = share_fields(self.node, self.layout, self.schedule,
                                        {s.name: (1, s.levels) + self.box.shape
                                         for s in self.schedule.fields.values()})
        self._buffers = {name: sh.mine[0] for name, sh in self._shared.items()}
        self.timings = Timings()
        self.check_finite = bool(check_finite)
        self._senders: dict[str, Sender] = {}
        self._receivers: dict[str, Receiver] = {}
        self._backend = config.resolve("backend", backend, None)
        self._chunk = options.get("pipeline_chunk")
        for spec in self.schedule.fields.values():
            if spec.direction == "in":
                self._senders[spec.name] = Sender(
                    self.link.data, self.layout.model_send_routes(spec.point, self.rank),
                    spec.levels, spec.dtype, TAG_DATA + spec.index, self.strategy,
                    name=f"model rank {self.rank}: put({spec.name!r})", sign=spec.sign,
                    shared=self._shared.get(spec.name), **self._common())
            elif spec.lag == 0:
                self._receivers[spec.name] = self._receiver(spec)
        self._lagged = {e: LaggedOutputs(ex.lag, ex.initial, self.schedule.outputs_of(e),
                                         self._receiver, self.box.shape)
                        for e, ex in enumerate(self.schedule.exchanges) if ex.lag}
        if restart is not None:
            self._load_restart(restart)
        n_ex = len(self.schedule.exchanges)
        self._current = [None] * n_ex         # step of each exchange's current occurrence
        self._pending: list[set] = [set() for _ in range(n_ex)]  # outputs not yet received
        self._static_sent: set[str] = set()  # static fields go once; later puts are no-ops
        self._closed = False

    # ------------------------------------------------------------------ helpers
    def _common(self) -> dict:
        return dict(backend=self._backend, timeout=self.timeout, peer_label="worker",
                    chunk=self._chunk, peer_base=self.link.peer_base)

    def _receiver(self, spec: FieldSpec) -> Receiver:
        return Receiver(self.link.data, self.layout.model_recv_routes(spec.point, self.rank),
                        spec.levels, spec.dtype, TAG_DATA + spec.index, self.strategy,
                        fills=self.layout.model_fills(spec.point, self.rank),
                        name=f"model rank {self.rank}: get({spec.name!r})",
                        shared=self._shared.get(spec.name), **self._common())

    def _lagged_fields(self) -> dict:
        return {s.name: (s.lag, s.levels, s.dtype) for e in self._lagged
                for s in self.schedule.outputs_of(e)}

    def _load_restart(self, prefix) -> None:
        """Every model rank reads its file; any rank's error is raised on all of them."""
        path = restart_io.file_for(prefix, self.rank)
        error = None
        try:
            records = restart_io.read(path, self.grid, self.box, self._lagged_fields())
        except restart_io.RestartError as exc:
            error = str(exc)
        errors = self.link.comm.allgather(error)
        first = next((f"model rank {r}: {err}" for r, err in enumerate(errors) if err), None)
        if first:
            raise restart_io.RestartError(first, collective=True)
        for ring in self._lagged.values():
            ring.load(records)

    def _begin(self, spec: FieldSpec, step: int) -> bool:
        """Start (once) the occurrence of ``spec``'s exchange at ``step``; False if not due."""
        e = spec.exchange
        ex = self.schedule.exchanges[e]
        if ex.static:
            step = STEP_STATIC  # static exchanges happen once and carry no step
        elif not self.schedule.due(e, int(step)):
            return False
        if self._current[e] == step:
            return True
        self._drain(e)
        if self.link.is_root:
            notes.send_to_workers(self.link, (e, step), self._note_group)
        self._current[e] = step
        if e in self._lagged:
            self._lagged[e].begin(step)
        else:
            self._pending[e] = set(ex.outputs)
        return True

    def _drain(self, e: int) -> None:
        """Receive (and drop) outputs of exchange ``e`` the model did not ``get``."""
        for name in sorted(self._pending[e]):
            rcv = self._receivers[name]
            scratch = np.empty((1, rcv.nz) + self.box.shape, dtype=rcv.dtype)
            rcv.post(scratch)
            rcv.wait(scratch)
        self._pending[e] = set()

    def _view(self, name: str, spec: FieldSpec, arr, offset, what: str):
        """The 4-D view ``(1, nz, ny, nx)`` of a model array and the box offset inside it."""
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{what}({name!r}): expected a numpy.ndarray, got {type(arr).__name__}")
        if arr.dtype != np.dtype(spec.dtype):
            raise TypeError(f"{what}({name!r}): dtype {arr.dtype}, the exchange expects {spec.dtype}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{what}({name!r}): the array must be C-contiguous (nz, ny, nx)")
        if arr.ndim == 2 and spec.levels == 1:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] != spec.levels:
            raise ValueError(f"{what}({name!r}): expected shape ({spec.levels}, ny, nx), got "
                             f"{arr.shape}")
        bj, bi = self.box.shape
        if offset is None:
            if arr.shape[1:] != (bj, bi):
                raise ValueError(f"{what}({name!r}): shape {arr.shape} does not match the box "
                                 f"({spec.levels}, {bj}, {bi}); pass offset=(oj, oi) for an array "
                                 "with the model's halo")
            offset = (0, 0)
        else:
            oj, oi = (int(v) for v in offset)
            if oj < 0 or oi < 0 or oj + bj > arr.shape[1] or oi + bi > arr.shape[2]:
                raise ValueError(f"{what}({name!r}): the box ({bj}x{bi}) at offset {(oj, oi)} does "
                                 f"not fit the array {arr.shape}")
            offset = (oj, oi)
        return arr[None], offset

    # ------------------------------------------------------------------ API
    def buffer(self, name: str) -> np.ndarray:
        """An array ``(levels, ny, nx)`` of this rank's box for field ``name`` to compute in:
        ``put(name, buf)`` and ``get(name, step, out=buf)`` with it cost this rank no copy under
        the ``shm`` strategy (it lives in the node's shared memory: the workers copy). Call it
        again before writing an input's buffer at a later step: it returns once every worker
        has read the last ``put`` of it (workers whose halos reach this box may read it after
        this rank's own ``get`` returned). Under other strategies it is a plain array (and the
        call waits for the last send), so the same code runs everywhere."""
        spec = self.schedule.field(name, "buffer")
        self._check_open("buffer")
        if name in self._senders:
            self._senders[name].reusable()
        buf = self._buffers.get(name)
        if buf is None:
            buf = np.zeros((spec.levels,) + self.box.shape, dtype=spec.dtype)
            self._buffers[name] = buf
        return buf

    def put(self, name: str, array, step: int, offset=None) -> bool:
        """Send ``array`` (the box, or a larger array with the box at ``offset``) if due.

        Returns whether it was sent. The array is read without a copy (datatype strategy) or
        packed once into a persistent buffer (packed strategy). ``put`` returns once the data
        has left (the workers post their receives ahead), so the workers can infer while the
        model computes: put early in the step and get late (or use ``Exchange(lag=...)``)."""
        self._check_open("put")
        spec = self.schedule.field(name, "put")
        if spec.direction != "in":
            raise ValueError(f"put({name!r}): {name!r} is an output of the workers; use get")
        view, offset = self._view(name, spec, array, offset, "put")
        if self.check_finite:
            self._check_finite(name, view[0], offset, step)
        t0 = time.perf_counter()
        if name in self._static_sent or not self._begin(spec, step):
            return False
        sender = self._senders[name]
        sender.start(view, offset)
        if self.schedule.exchanges[spec.exchange].static:
            self._static_sent.add(name)
        else:
            # the data leaves now: a large message left pending would move only at the model's
            # next MPI call, and the workers would wait for it while the model computes
            sender.wait()
        self.timings.add("put", time.perf_counter() - t0)
        self.timings.add_bytes(name, sender.bytes)
        return True

    def get(self, name: str, step: int, out=None, offset=None):
        """The workers' ``name`` for this rank's box at ``step`` (None when not due).

        ``out`` receives in place (with the box at ``offset`` when it has the model's halo)."""
        self._check_open("get")
        spec = self.schedule.field(name, "get")
        if spec.direction != "out":
            raise ValueError(f"get({name!r}): {name!r} is an input sent by the model; use put")
        e = spec.exchange
        ex = self.schedule.exchanges[e]
        key = STEP_STATIC if ex.static else step
        if not ex.static and not self.schedule.due(e, int(step)):
            return None
        ring = self._lagged.get(e)
        if self._current[e] != key:
            if ex.inputs and ring is None:
                raise CouplingError(f"get({name!r}, step={step}): the inputs of its exchange "
                                    f"({', '.join(ex.inputs)}) were not put at this step")
            self._begin(spec, step)  # lagged: get may come first, its result is older
        if name not in (self._pending[e] if ring is None else ring.wanted):
            raise CouplingError(f"get({name!r}, step={step}): already received at this step")
        if out is None:
            out = np.empty((spec.levels,) + self.box.shape, dtype=spec.dtype)
        view, offset = self._view(name, spec, out, offset, "get")
        t0 = time.perf_counter()
        if ring is not None:
            ring.get(spec, view, offset)
            nbytes = ring.bytes(name)
        else:
            rcv = self._receivers[name]
            rcv.post(view, offset)
            rcv.wait(view, offset)
            self._pending[e].discard(name)
            nbytes = rcv.bytes
        self.timings.add("get", time.perf_counter() - t0)
        self.timings.add_bytes(name, nbytes)
        return out

    def _check_finite(self, name: str, arr: np.ndarray, offset, step) -> None:
        """Refuse NaN/Inf in the rank's box, naming the first one by its global index."""
        bj, bi = self.box.shape
        core = arr[:, offset[0]:offset[0] + bj, offset[1]:offset[1] + bi]
        checks.check_finite(f"put({name!r}, step={step}): ", core, self.box,
                            f" (model rank {self.rank})", error=ValueError)

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise CouplingError(f"{what}: the coupler is closed")

    def close(self, restart=None) -> None:
        """End the coupling (collective over model ranks): finish pending transfers, tell the
        workers to stop, free MPI resources. ``restart=PREFIX`` writes the results of lagged
        exchanges still in flight (what ``get`` would return at the next ``lag`` occurrences),
        one file per model rank, for ``connect(..., restart=PREFIX)``."""
        if self._closed:
            return
        for e in range(len(self._pending)):
            self._drain(e)
        for ring in self._lagged.values():
            ring.drain()
        if restart is not None:
            records = [rec for ring in self._lagged.values() for rec in ring.in_flight()]
            order = {name: k for k, name in enumerate(self.schedule.fields)}
            records.sort(key=lambda rec: order[rec.name])
            restart_io.write(restart_io.file_for(restart, self.rank), self.grid, self.box, records)
        for s in self._senders.values():
            s.wait()
        waits.arrive(self.link.comm, self.timeout, f"model rank {self.rank}: close (every model "
                     "rank closes together)")
        if self.link.is_root:
            notes.send_to_workers(self.link, STOP_NOTE, self._note_group)
        for obj in list(self._senders.values()) + list(self._receivers.values()):
            obj.close()
        for ring in self._lagged.values():
            ring.close()
        if self.node is not None:
            self.node.close()
        self.link.close()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
