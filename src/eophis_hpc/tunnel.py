"""Worker side: ``eh.Tunnel`` receives tiles with halos, calls the user's model on batches and
sends the results back (layer 7).

The loop: wait for the model root's note naming the next exchange and step, complete the
pre-posted receives of its inputs (halos already filled by the plan), call the model on the
batch ``(tiles, levels, H + 2h, W + 2h)``, send each output's own boxes back, post the receives
for the next occurrence. Buffers and MPI requests are made once, before the first step.
"""
from __future__ import annotations

import inspect
import sys
import time
import traceback

import numpy as np

from . import device
from .grid import Grid
from .runtime import handshake
from .runtime.schedule import Exchange, Schedule
from .runtime.timings import Timings
from .transport.mpi import TAG_CONTROL, TAG_DATA, CouplingError, Link, Receiver, Sender

STRATEGIES = ("packed", "datatype")


class Tunnel:
    """The inference workers' end of the coupling.

    ``halo`` cells are added around every tile (closed, cyclic or folded per the grid);
    ``tiles`` is the total number of tiles (default: one per worker); ``strategy`` is
    ``packed`` (compiled kernels + persistent buffers) or ``datatype`` (MPI derived datatypes,
    no packing); ``dtype`` is the dtype the model wants (cast in the unpack kernel).
    """

    def __init__(self, grid: Grid, halo: int = 0, exchanges=(), *, dt: float | None = None,
                 tiles: int | None = None, strategy: str = "packed", backend: str | None = None,
                 framework: str = "numpy", dtype=None, fill: float = 0.0, verbose: bool = True):
        if not isinstance(grid, Grid):
            raise TypeError(f"Tunnel: grid must be an eophis_hpc.Grid, got {type(grid).__name__}")
        if strategy not in STRATEGIES:
            raise ValueError(f"Tunnel: strategy={strategy!r} is not one of {STRATEGIES}")
        self.grid = grid
        self.halo = grid.check_halo(halo, "Tunnel: halo")
        self.schedule = Schedule(list(exchanges), dt=dt, default_point=grid.point)
        self.n_tiles = tiles
        self.strategy = strategy
        self.backend = backend
        self.framework = device.check_framework(framework)
        self.dtype = None if dtype is None else np.dtype(dtype)
        if self.dtype is not None and self.dtype not in (np.float32, np.float64):
            raise ValueError(f"Tunnel: dtype must be float32 or float64, got {dtype!r}")
        self.fill = float(fill)
        self.verbose = verbose
        self.static: dict[str, np.ndarray] = {}
        self.timings = Timings()
        self._models: dict = {}
        self.layout = None

    @property
    def exchanges(self) -> list[Exchange]:
        return self.schedule.exchanges

    def model(self, fn=None, *, exchange: int | None = None):
        """Decorator registering the model called on each due exchange (or on one of them).

        It is called with one keyword per input of the exchange (a batch), plus any static field
        or ``step`` its signature names; it returns ``{output: array}`` (a single array or a
        tuple in ``outputs`` order also work), each with or without the halo."""
        def register(f):
            if not callable(f):
                raise TypeError(f"Tunnel.model: {f!r} is not callable")
            self._models[exchange] = f
            return f
        return register(fn) if fn is not None else register

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        self.link = Link("worker")
        options = {"strategy": self.strategy}
        self.layout = handshake.worker_side(self.link, self.grid, self.halo, self.schedule,
                                            self.n_tiles, options)
        w = self.link.rank
        ntl = len(self.layout.tiles_of[w])
        H, W = self.layout.batch_shape
        self.batches, self._receivers, self._senders = {}, {}, {}
        for spec in self.schedule.fields.values():
            tag = TAG_DATA + spec.index
            wire = np.dtype(spec.dtype)
            if spec.direction == "in":
                batch_dtype = self.dtype if self.dtype is not None else wire
                strategy = self.strategy if batch_dtype == wire else "packed"
                batch = np.empty((ntl, spec.levels, H, W), dtype=batch_dtype)
                rcv = Receiver(self.link.inter, self.layout.worker_recv_routes(spec.point, w),
                               spec.levels, wire, tag, strategy,
                               fills=self.layout.worker_fills(spec.point, w), fill=self.fill,
                               backend=self.backend)
                rcv.bind(batch)
                self.batches[spec.name] = batch
                self._receivers[spec.name] = rcv
            else:
                self._senders[spec.name] = Sender(
                    self.link.inter, self.layout.worker_send_routes(spec.point, w), spec.levels,
                    wire, tag, self.strategy, backend=self.backend)

    def _post(self, e_idx: int) -> None:
        for spec in self.schedule.inputs_of(e_idx):
            self._receivers[spec.name].post(self.batches[spec.name])

    # ------------------------------------------------------------------ loop
    def run(self, steps: int | None = None) -> dict:
        """Serve the model ranks until they close (or ``steps`` occurrences); returns timings."""
        self._setup()
        try:
            self._loop(steps)
        except Exception:
            tb = traceback.format_exc()
            print(f"eophis_hpc worker {self.link.rank}: aborting the coupled job:\n{tb}",
                  file=sys.stderr, flush=True)
            self.link.world.Abort(1)
        summary = self.timings.summary()
        self._teardown()
        return summary

    def _loop(self, steps: int | None) -> None:
        for e in range(len(self.exchanges)):
            self._post(e)
        note = np.empty(2, dtype=np.int64)
        done = 0
        while steps is None or done < steps:
            t0 = time.perf_counter()
            self.link.inter.Recv(note, source=0, tag=TAG_CONTROL)
            self.timings.add("wait", time.perf_counter() - t0)
            e, step = int(note[0]), int(note[1])
            if e < 0:
                break
            self._occurrence(e, step)
            done += 1

    def _occurrence(self, e: int, step: int) -> None:
        ex = self.exchanges[e]
        t0 = time.perf_counter()
        for spec in self.schedule.inputs_of(e):
            self._receivers[spec.name].wait(self.batches[spec.name], sign=spec.sign)
            self.timings.add_bytes(spec.name, self._receivers[spec.name].bytes)
        t1 = time.perf_counter()
        self.timings.add("recv", t1 - t0)
        if ex.static:
            for spec in self.schedule.inputs_of(e):
                self.static[spec.name] = self.batches[spec.name]
            if not ex.outputs:
                return
        outputs = self._call_model(e, step)
        t2 = time.perf_counter()
        self.timings.add("model", t2 - t1)
        sent = []
        for spec in self.schedule.outputs_of(e):
            arr, offset = self._check_output(spec, outputs[spec.name])
            self._senders[spec.name].start(arr, offset)
            self.timings.add_bytes(spec.name, self._senders[spec.name].bytes)
            sent.append(arr)
        if not ex.static:
            inputs = [self.batches[s.name] for s in self.schedule.inputs_of(e)]
            if self.strategy == "datatype" and any(np.may_share_memory(a, b) for a in sent
                                                   for b in inputs):
                for spec in self.schedule.outputs_of(e):  # the send still reads the batch
                    self._senders[spec.name].wait()
            self._post(e)
        self.timings.add("send", time.perf_counter() - t2)

    def _call_model(self, e: int, step: int) -> dict:
        fn = self._models.get(e) or self._models.get(None)
        if fn is None:
            raise CouplingError(f"no model registered for exchange {e} "
                                f"({', '.join(self.exchanges[e].inputs)}): use @tunnel.model")
        kwargs = {s.name: device.to_framework(self.batches[s.name], self.framework)
                  for s in self.schedule.inputs_of(e)}
        params = inspect.signature(fn).parameters
        takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
        for name, batch in self.static.items():
            if name in params or takes_all:
                kwargs.setdefault(name, device.to_framework(batch, self.framework))
        if "step" in params:
            kwargs["step"] = step
        result = fn(**kwargs)
        names = self.exchanges[e].outputs
        if isinstance(result, dict):
            missing = [n for n in names if n not in result]
            extra = [n for n in result if n not in names]
            if missing or extra:
                raise CouplingError(f"the model returned outputs {sorted(result)}, exchange {e} "
                                    f"expects {list(names)} (missing {missing}, extra {extra})")
            return result
        if len(names) == 1 and not isinstance(result, (tuple, list)):
            return {names[0]: result}
        if isinstance(result, (tuple, list)) and len(result) == len(names):
            return dict(zip(names, result))
        raise CouplingError(f"the model must return {{name: array}} for outputs {list(names)}, "
                            f"got {type(result).__name__}")

    def _check_output(self, spec, value):
        arr = device.to_host(value, f"output {spec.name!r}")
        ntl = len(self.layout.tiles_of[self.link.rank])
        H, W = self.layout.batch_shape
        h = self.halo
        core = (ntl, spec.levels, H - 2 * h, W - 2 * h)
        full = (ntl, spec.levels, H, W)
        if arr.shape == core:
            offset = (0, 0)
        elif arr.shape == full:
            offset = (h, h)
        else:
            raise CouplingError(f"output {spec.name!r}: shape {tuple(arr.shape)}, expected {core} "
                                f"or with the halo {full}")
        if arr.dtype not in (np.float32, np.float64):
            raise CouplingError(f"output {spec.name!r}: dtype {arr.dtype} is not float32/float64")
        if self.strategy == "datatype" and arr.dtype != np.dtype(spec.dtype):
            arr = arr.astype(spec.dtype)
        return np.ascontiguousarray(arr), offset

    def _teardown(self) -> None:
        for obj in list(self._receivers.values()) + list(self._senders.values()):
            obj.close()
        if self.verbose:
            report = self.report()
            if self.link.is_root and report:
                print(report, flush=True)
        self.link.close()

    def report(self) -> str:
        """Timings of every worker (collective over the workers); the text on worker 0."""
        tables = self.link.comm.gather(self.timings.table(f"worker {self.link.rank} timings"),
                                       root=0)
        return "\n".join(tables) if self.link.is_root else ""
