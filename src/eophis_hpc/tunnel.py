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

from . import config, device
from .decomposition import Decomposition
from .grid import Grid
from .runtime import handshake
from .runtime.schedule import Exchange, Schedule
from .runtime.timings import Timings
from .transport.mpi import (TAG_CONTROL, TAG_DATA, CouplingError, Link, Receiver, Sender,
                            default_timeout, install_abort_hook, wait_all)

STRATEGIES = ("packed", "datatype")
TRANSPORTS = ("mpi", "oasis")


class Tunnel:
    """The inference workers' end of the coupling.

    ``halo`` cells are added around every tile (closed, cyclic or folded per the grid);
    ``tiles`` is the total number of tiles (default: one per worker) or the tiles themselves (a
    Decomposition or boxes, e.g. Eophis' layout); ``strategy`` is
    ``packed`` (compiled kernels + persistent buffers) or ``datatype`` (MPI derived datatypes,
    no packing); ``dtype`` is the dtype the model wants (cast in the unpack kernel).
    """

    def __init__(self, grid: Grid, halo: int = 0, exchanges=(), *, dt: float | None = None,
                 tiles: int | None = None, strategy: str | None = None, backend: str | None = None,
                 framework: str = "numpy", dtype=None, fill: float = 0.0, verbose: bool = True,
                 timeout: float | None = None, check_finite: bool = False,
                 transport: str = "mpi"):
        install_abort_hook()  # a bad argument below must end the MPI job, not strand the model
        if not isinstance(grid, Grid):
            raise TypeError(f"Tunnel: grid must be an eophis_hpc.Grid, got {type(grid).__name__}")
        self.settings = config.load()  # eophis_hpc.toml (from eophis-hpc tune): fills unset options
        strategy = config.resolve("strategy", strategy, "packed")
        if strategy not in STRATEGIES:
            raise ValueError(f"Tunnel: strategy={strategy!r} is not one of {STRATEGIES}")
        if transport not in TRANSPORTS:
            raise ValueError(f"Tunnel: transport={transport!r} is not one of {TRANSPORTS}")
        self.transport = transport  # "oasis": runtime/oasis_worker.py runs the OASIS side
        self.grid = grid
        self.halo = grid.check_halo(halo, "Tunnel: halo")
        self.schedule = Schedule(list(exchanges), dt=dt, default_point=grid.point)
        if isinstance(tiles, Decomposition):
            tiles = tiles.boxes
        if not (tiles is None or isinstance(tiles, int) or isinstance(tiles, (list, tuple))):
            raise TypeError(f"Tunnel: tiles must be a count, a Decomposition or a list of boxes, "
                            f"got {type(tiles).__name__}")
        self.n_tiles = tiles
        self.strategy = strategy
        self.backend = config.resolve("backend", backend, None)
        self.framework = device.check_framework(framework)
        self.dtype = None if dtype is None else np.dtype(dtype)
        if self.dtype is not None and self.dtype not in (np.float32, np.float64):
            raise ValueError(f"Tunnel: dtype must be float32 or float64, got {dtype!r}")
        self.fill = float(fill)
        self.verbose = verbose
        timeout = config.resolve("timeout", timeout, None)
        self.timeout = default_timeout() if timeout is None else (float(timeout) or None)
        self.check_finite = bool(check_finite)
        self.static: dict[str, np.ndarray] = {}
        self.timings = Timings()
        self._models: dict = {}
        self._router = None
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

    def router(self, fn):
        """Decorator registering an all-in-all-out model (Eophis' ``@all_in_all_out``): called
        once per step with every input of the tunnel (None when its exchange is not due) and the
        static fields; returns ``{output: array or None}``. The model ranks must put every input
        of a step before they get any output of it."""
        if not callable(fn):
            raise TypeError(f"Tunnel.router: {fn!r} is not callable")
        if self._models:
            raise ValueError("Tunnel.router: a per-exchange @tunnel.model is already registered")
        self._router = fn
        return fn

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        self.link = Link("worker")
        options = {"strategy": self.strategy}
        self.layout = handshake.worker_side(self.link, self.grid, self.halo, self.schedule,
                                            self._tiles_wanted(), options)
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
                               backend=self.backend, timeout=self.timeout,
                               name=f"worker {w}: receiving {spec.name!r}", peer_label="model rank")
                rcv.bind(batch)
                self.batches[spec.name] = batch
                self._receivers[spec.name] = rcv
            else:
                self._senders[spec.name] = Sender(
                    self.link.inter, self.layout.worker_send_routes(spec.point, w), spec.levels,
                    wire, tag, self.strategy, backend=self.backend, timeout=self.timeout,
                    name=f"worker {w}: sending {spec.name!r}", peer_label="model rank")

    def _tiles_wanted(self) -> int | None:
        """Total tiles: the ``tiles`` argument, else ``tiles_per_worker`` from the settings file
        times the workers, else one per worker."""
        if self.n_tiles is not None:
            return self.n_tiles
        per = self.settings.get("tiles_per_worker")
        return None if per is None else per * self.link.size

    def _post(self, e_idx: int) -> None:
        for spec in self.schedule.inputs_of(e_idx):
            self._receivers[spec.name].post(self.batches[spec.name])

    # ------------------------------------------------------------------ loop
    def open(self) -> None:
        """Join the coupled job: handshake with the model ranks, make the buffers and persistent
        requests, post the first receives. ``run`` calls it when needed."""
        if self.transport == "oasis":
            from .runtime import oasis_worker
            return oasis_worker.open_tunnel(self)
        if self.layout is not None:
            return
        self._setup()
        for e in range(len(self.exchanges)):
            self._post(e)
        self._note = np.empty(2, dtype=np.int64)
        self._held_note = None

    def receive(self, name: str):
        """A static field's batch ``(tiles, levels, H + 2h, W + 2h)``, received before the loop
        (Eophis' ``tunnel.receive('mask')``)."""
        spec = self.schedule.field(name, "Tunnel.receive")
        if not self.exchanges[spec.exchange].static:
            raise ValueError(f"Tunnel.receive({name!r}): only static fields are received before "
                             "the loop; time-dependent ones reach the model")
        if self.transport == "oasis":
            from .runtime import oasis_worker
            return oasis_worker.receive(self, name)
        self.open()
        while name not in self.static:
            e, step = self._next_note()
            if e < 0 or not self.exchanges[e].static:
                self._held_note = (e, step)
                raise CouplingError(f"Tunnel.receive({name!r}): the model ranks did not send it "
                                    f"before {'closing' if e < 0 else f'step {step}'}")
            self._occurrence([e], step)
        return device.to_framework(self.static[name], self.framework)

    def run(self, steps: int | None = None) -> dict:
        """Serve the model ranks until they close (or ``steps`` occurrences); returns timings.
        With ``transport="oasis"``: ``steps`` model time steps at dates ``step * dt``."""
        if self.transport == "oasis":
            from .runtime import oasis_worker
            return oasis_worker.run(self, steps)
        self.open()
        try:
            self._loop(steps)
        except Exception as exc:
            tb = traceback.format_exc()
            print(f"eophis_hpc worker {self.link.rank}: aborting the coupled job: "
                  f"{type(exc).__name__}: {exc}\n{tb}", file=sys.stderr, flush=True)
            time.sleep(0.5)  # let mpiexec forward the output before the job is torn down
            self.link.world.Abort(1)
        summary = self.timings.summary()
        self._teardown()
        return summary

    def _loop(self, steps: int | None) -> None:
        done = 0
        while steps is None or done < steps:
            e, step = self._next_note()
            if e < 0:
                break
            group = [e]
            if self._router is not None and not self.exchanges[e].static:
                due = [x for x, ex in enumerate(self.exchanges)
                       if not ex.static and self.schedule.due(x, step)]
                while len(group) < len(due):
                    e2, step2 = self._next_note()
                    if e2 not in due or e2 in group or step2 != step:
                        raise CouplingError(
                            f"router: at step {step} the model ranks must put the inputs of every "
                            f"due exchange {due} before any get (got exchange {e2} at step {step2})")
                    group.append(e2)
            self._occurrence(group, step)
            done += 1

    def _next_note(self) -> tuple[int, int]:
        """The model root's next (exchange, step) note; (-1, -1) ends the run."""
        if self._held_note is not None:
            note, self._held_note = self._held_note, None
            return note
        t0 = time.perf_counter()
        req = self.link.inter.Irecv(self._note, source=0, tag=TAG_CONTROL)
        wait_all([req], self.timeout, f"worker {self.link.rank}: waiting for the model's next "
                 "exchange", [0], "model rank")
        self.timings.add("wait", time.perf_counter() - t0)
        return int(self._note[0]), int(self._note[1])

    def _occurrence(self, group: list[int], step: int) -> None:
        """Receive the inputs of the exchanges in ``group`` (due at ``step``), call the model,
        send the outputs, post the receives of the next occurrence."""
        t0 = time.perf_counter()
        inputs = [spec for e in group for spec in self.schedule.inputs_of(e)]
        for spec in inputs:
            self._receivers[spec.name].wait(self.batches[spec.name], sign=spec.sign)
            self.timings.add_bytes(spec.name, self._receivers[spec.name].bytes)
        t1 = time.perf_counter()
        self.timings.add("recv", t1 - t0)
        static = self.exchanges[group[0]].static
        if static:
            for spec in inputs:
                self.static[spec.name] = self.batches[spec.name]
            if not self.exchanges[group[0]].outputs:
                return
        if self._router is not None and not static:
            outputs = self._call_router(group, step)
        else:
            outputs = self._call_model(group[0], step)
        t2 = time.perf_counter()
        self.timings.add("model", t2 - t1)
        sent = []
        for e in group:
            for spec in self.schedule.outputs_of(e):
                arr, offset = self._check_output(spec, outputs[spec.name])
                self._senders[spec.name].start(arr, offset)
                self.timings.add_bytes(spec.name, self._senders[spec.name].bytes)
                sent.append(arr)
        if not static:
            batches = [self.batches[spec.name] for spec in inputs]
            if self.strategy == "datatype" and any(np.may_share_memory(a, b) for a in sent
                                                   for b in batches):
                for e in group:  # the sends still read the batch the receives would overwrite
                    for spec in self.schedule.outputs_of(e):
                        self._senders[spec.name].wait()
            for e in group:
                self._post(e)
        self.timings.add("send", time.perf_counter() - t2)

    def _call_router(self, group: list[int], step: int) -> dict:
        """Eophis' all-in-all-out call: every input of the tunnel, None when not due; the
        outputs of the due exchanges must come back, the others may be None or absent."""
        due_inputs = {spec.name for e in group for spec in self.schedule.inputs_of(e)}
        kwargs = {}
        for x, ex in enumerate(self.exchanges):
            if ex.static:
                continue
            for name in ex.inputs:
                kwargs[name] = (device.to_framework(self.batches[name], self.framework)
                                if name in due_inputs else None)
        for name, batch in self.static.items():
            kwargs[name] = device.to_framework(batch, self.framework)
        params = inspect.signature(self._router).parameters
        if "step" in params:
            kwargs["step"] = step
        result = self._router(**kwargs)
        if not isinstance(result, dict):
            raise CouplingError(f"the router must return a dict of outputs, got "
                                f"{type(result).__name__}")
        wanted = [spec.name for e in group for spec in self.schedule.outputs_of(e)]
        missing = [n for n in wanted if result.get(n) is None]
        unknown = [n for n in result if n not in self.schedule.fields
                   or self.schedule.fields[n].direction != "out"]
        if missing or unknown:
            raise CouplingError(f"the router returned {sorted(result)} at step {step}: missing "
                                f"due outputs {missing}, unknown outputs {unknown}")
        return result

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
        if self.check_finite:
            self._check_finite(spec.name, arr, offset)
        if self.strategy == "datatype" and arr.dtype != np.dtype(spec.dtype):
            arr = arr.astype(spec.dtype)
        return np.ascontiguousarray(arr), offset

    def _check_finite(self, name: str, arr: np.ndarray, offset) -> None:
        """Refuse NaN/Inf in the tiles' own boxes, naming the first by its global index."""
        tiles = self.layout.tiles_of[self.link.rank]
        for k, d in enumerate(tiles):
            box = self.layout.dst.boxes[d]
            own = arr[k, :, offset[0]:offset[0] + box.j1 - box.j0, offset[1]:offset[1] + box.i1 - box.i0]
            bad = ~np.isfinite(own)
            if bad.any():
                lev, j, i = (int(v) for v in np.argwhere(bad)[0])
                raise CouplingError(f"output {name!r}: the model returned {own[lev, j, i]} at level "
                                    f"{lev}, global j={box.j0 + j}, i={box.i0 + i} (tile {d})")

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
