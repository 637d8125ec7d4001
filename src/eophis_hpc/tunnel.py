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

from . import config, staging
from . import device as devmod
from .decomposition import Decomposition
from .grid import Grid
from .runtime import handshake
from .runtime.schedule import Exchange, Schedule
from .runtime.timings import Timings
from . import checks
from .errors import CouplingError, default_timeout, install_abort_hook
from .transport.mpi import TAG_CONTROL, TAG_DATA, Link, Receiver, Sender, wait_all

STRATEGIES = ("packed", "datatype")
TRANSPORTS = ("mpi", "oasis")


class Tunnel:
    """The inference workers' end of the coupling.

    ``halo`` cells are added around every tile (closed, cyclic or folded per the grid);
    ``tiles`` is the total number of tiles (default: one per worker) or the tiles themselves (a
    Decomposition or boxes, e.g. Eophis' layout); ``strategy`` is
    ``datatype`` (the default: MPI derived datatypes, no packing; 1.2-2x raw MPI against 3x for
    packed at 1:1 in docs/performance.md) or ``packed`` (compiled kernels + persistent buffers;
    fields that need a cast, stacking or land removal use it automatically); ``dtype`` is the
    dtype the model wants (cast in the unpack kernel).

    Where the model runs (``staging.py``, ``device.py``): ``framework`` (numpy, torch, cupy,
    jax, numba) and ``device`` (cpu, cuda, cuda:N) pick the tensor type and the staging policy
    (host views, pinned staging on a CUDA stream, or CUDA-aware MPI into device memory);
    ``chunks`` splits each batch along tiles (one model call per chunk; on a GPU the copies of
    one chunk overlap the model on another); ``stack=True`` hands each exchange's inputs as one
    batch ``(tiles, fields * levels, H, W)`` under the keyword ``Exchange.stack_name``
    (``u_v`` for inputs u, v; ``Exchange(stack=...)`` overrides it per exchange); ``land``
    names a static field: tiles whose own box is all zero in it are left out of the batches
    and their outputs go back as ``fill``. Options that move data differently from the MPI
    ``datatype`` strategy (a cast, stacked channels, land tiles) use ``packed`` for the fields
    concerned, reported by :meth:`describe`.
    """

    def __init__(self, grid: Grid, halo: int = 0, exchanges=(), *, dt: float | None = None,
                 tiles: int | None = None, strategy: str | None = None, backend: str | None = None,
                 framework: str = "numpy", dtype=None, fill: float = 0.0, verbose: bool = True,
                 timeout: float | None = None, check_finite: bool = False,
                 transport: str = "mpi", device: str = "cpu", chunks: int | None = None,
                 stack: bool | str = False, land: str | None = None):
        install_abort_hook()  # a bad argument below must end the MPI job, not strand the model
        if not isinstance(grid, Grid):
            raise TypeError(f"Tunnel: grid must be an eophis_hpc.Grid, got {type(grid).__name__}")
        self.settings = config.load()  # eophis_hpc.toml (from eophis-hpc tune): fills unset options
        strategy = config.resolve("strategy", strategy, "datatype")
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
        self.framework = framework
        self.device = device
        # clear errors now (unknown strings, missing framework, no GPU); the final choice is
        # made again at set-up, once MPI is loaded and can say whether it is CUDA-aware
        self.policy = devmod.staging_policy(framework, device, cuda_aware=False)
        chunks = config.resolve("chunks", chunks, 1)
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"Tunnel: chunks must be a positive integer, got {chunks!r}")
        self.chunks = chunks
        if not (isinstance(stack, bool) or (isinstance(stack, str) and stack.isidentifier())):
            raise ValueError(f"Tunnel: stack must be True, False or a keyword name, got {stack!r}")
        self.stack = stack
        self.land = land
        if land is not None:
            spec = self.schedule.field(land, "Tunnel: land")
            if spec.direction != "in" or not self.exchanges[spec.exchange].static:
                raise ValueError(f"Tunnel: land={land!r} must name a static input field (the mask "
                                 "the model ranks put once, before the first step)")
        if transport != "mpi" and (self.policy.gpu or chunks != 1 or stack or land
                                   or any(ex.stack for ex in self.exchanges)):
            raise ValueError(f"Tunnel: device, chunks, stack and land work with transport='mpi' "
                             f"only for now (transport={transport!r})")
        self.notes: list[str] = []  # choices made for the user (strategy switches, policy)
        self.feed = None
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
        tiles = self.layout.tiles_of[w]
        self.policy = devmod.staging_policy(self.framework, self.device)  # MPI is loaded now
        self.feed = staging.Feed(self.schedule, tiles, [self.layout.dst.boxes[d] for d in tiles],
                                 self.layout.batch_shape, self.halo, self.dtype, self.policy,
                                 self.chunks, self.stack, self.land, self.fill, self.timings)
        self.batches, self._receivers, self._senders = {}, {}, {}
        for spec in self.schedule.fields.values():
            tag = TAG_DATA + spec.index
            wire = np.dtype(spec.dtype)
            if spec.direction == "in":
                batch_dtype = self.dtype if self.dtype is not None else wire
                why = self.feed.not_plain(spec.name) or (
                    f"cast {wire} -> {batch_dtype}" if batch_dtype != wire else None)
                strategy = self._strategy_for(spec.name, why)
                rcv = Receiver(self.link.inter, self.layout.worker_recv_routes(spec.point, w),
                               spec.levels, wire, tag, strategy,
                               fills=self.layout.worker_fills(spec.point, w), fill=self.fill,
                               timeout=self.timeout, name=f"worker {w}: receiving {spec.name!r}",
                               peer_label="model rank",
                               **{"backend": self.backend, **self.feed.recv_options()})
                self.batches[spec.name] = self.feed.recv_target(spec.name)
                if strategy == "datatype":
                    rcv.bind(self.batches[spec.name])
                self._receivers[spec.name] = rcv
            else:
                strategy = self._strategy_for(spec.name, self.feed.outputs_not_plain())
                self._senders[spec.name] = Sender(
                    self.link.inter, self.layout.worker_send_routes(spec.point, w), spec.levels,
                    wire, tag, strategy, timeout=self.timeout,
                    name=f"worker {w}: sending {spec.name!r}", peer_label="model rank",
                    **{"backend": self.backend, **self.feed.send_options()})

    def _strategy_for(self, name: str, why: str | None) -> str:
        """The tunnel's strategy, or ``packed`` (noted) where datatypes cannot describe the
        batch (``why``: a cast, stacked channels, land tiles left out, chunked outputs, device
        buffers)."""
        if self.strategy == "datatype" and why:
            self.notes.append(f"{name!r}: packed strategy ({why})")
            return "packed"
        return self.strategy

    def describe(self) -> str:
        """The staging policy in force and the choices made for this tunnel."""
        policy = self.policy.describe()
        lines = [f"staging: {policy}; chunks={self.chunks}"
                 + (f"; land tiles left out by {self.land!r}" if self.land else "")]
        lines += [f"  {note}" for note in dict.fromkeys(self.notes)]
        return "\n".join(lines)

    def _tiles_wanted(self) -> int | None:
        """Total tiles: the ``tiles`` argument, else ``tiles_per_worker`` from the settings file
        times the workers, else one per worker."""
        if self.n_tiles is not None:
            return self.n_tiles
        per = self.settings.get("tiles_per_worker")
        return None if per is None else per * self.link.size

    def _post(self, e_idx: int) -> None:
        for spec in self.schedule.inputs_of(e_idx):
            self._receivers[spec.name].post(self.feed.recv_target(spec.name))

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
        (Eophis' ``tunnel.receive('mask')``), as the model sees it: the framework's tensor, on
        its device, land tiles left out when ``land`` is set."""
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
        return self.feed.static_field(name)

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
        """Receive the inputs of the exchanges in ``group`` (due at ``step``), call the model
        (chunk by chunk, where it runs), send the outputs, post the receives of the next
        occurrence."""
        t0 = time.perf_counter()
        inputs = [spec for e in group for spec in self.schedule.inputs_of(e)]
        for spec in inputs:
            self._receivers[spec.name].wait(self.feed.recv_target(spec.name), sign=spec.sign)
            self.timings.add_bytes(spec.name, self._receivers[spec.name].bytes)
        t1 = time.perf_counter()
        self.timings.add("recv", t1 - t0)
        static = self.exchanges[group[0]].static
        if static:
            for spec in inputs:
                self.static[spec.name] = self.feed.recv_target(spec.name)
            self.feed.static_received(group[0])
            if not self.exchanges[group[0]].outputs:
                return
        elif not self.feed.land_ready:
            raise CouplingError(f"land={self.land!r}: the model ranks must put this static field "
                                f"before step {step}'s exchanges")
        specs = [spec for e in group for spec in self.schedule.outputs_of(e)]
        for spec in specs:  # MPI may still read the last outputs (pinned buffers are reused)
            if self._senders[spec.name].strategy == "datatype":
                self._senders[spec.name].wait()
        if self._router is not None and not static:
            call = self._router_call(group, step)
            keywords = self._keywords(group)
        else:
            call = self._model_call(group[0], step)
            keywords = self._keywords(group[:1])
        targets = self.feed.run(keywords, call, specs)
        t2 = time.perf_counter()
        sent = []
        for spec in specs:
            target, offset = targets[spec.name]
            sender = self._senders[spec.name]
            if self.check_finite:
                self._check_finite(spec.name, target, offset)
            if sender.strategy == "datatype":
                target = np.ascontiguousarray(target, dtype=spec.dtype)
            sender.start(target, offset)
            self.timings.add_bytes(spec.name, sender.bytes)
            sent.append(target)
        if not static:
            batches = [self.feed.recv_target(spec.name) for spec in inputs]
            if any(isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                   and np.may_share_memory(a, b) for a in sent for b in batches):
                for spec in specs:  # the sends still read the batch the receives would overwrite
                    if self._senders[spec.name].strategy == "datatype":
                        self._senders[spec.name].wait()
            for e in group:
                self._post(e)
        self.timings.add("send", time.perf_counter() - t2)

    def _keywords(self, group: list[int]) -> list[str]:
        """The model keywords (fields or stacked groups) of the inputs of ``group``."""
        return list(dict.fromkeys(self.feed.where[spec.name][0] for e in group
                                  for spec in self.schedule.inputs_of(e)))

    def _extras(self, fn, kwargs: dict, r0: int, r1: int, step: int, every_static: bool) -> dict:
        """Static fields (rows ``r0:r1``), ``tiles`` (their global indices) and ``step`` for
        the parameters ``fn`` names (every static field when ``every_static``)."""
        params = inspect.signature(fn).parameters
        takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
        for kw, batch in self.feed.static_rows(r0, r1).items():
            if every_static or kw in params or takes_all:
                kwargs.setdefault(kw, batch)
        if "tiles" in params:
            kwargs.setdefault("tiles", self.feed.global_tiles(r0, r1))
        if "step" in params:
            kwargs["step"] = step
        return kwargs

    def _model_call(self, e: int, step: int):
        """``call(kwargs, r0, r1) -> {output: value}`` for exchange ``e``'s model."""
        fn = self._models.get(e) or self._models.get(None)
        if fn is None:
            raise CouplingError(f"no model registered for exchange {e} "
                                f"({', '.join(self.exchanges[e].inputs)}): use @tunnel.model")

        def call(kwargs, r0, r1):
            kwargs = self._extras(fn, dict(kwargs), r0, r1, step, every_static=False)
            return self._outputs_of(e, fn(**kwargs))
        return call

    def _router_call(self, group: list[int], step: int):
        """``call(kwargs, r0, r1)`` for the router: every non-static input keyword of the
        tunnel (None when not due) and every static field."""
        every = self._keywords([x for x, ex in enumerate(self.exchanges) if not ex.static])

        def call(kwargs, r0, r1):
            kwargs = {kw: kwargs.get(kw) for kw in every}
            kwargs = self._extras(self._router, kwargs, r0, r1, step, every_static=True)
            return self._router_outputs(group, step, self._router(**kwargs))
        return call

    def _call_router(self, group: list[int], step: int) -> dict:
        """Eophis' all-in-all-out call on the host batches (the OASIS worker's path): every
        input of the tunnel, None when not due; the outputs of the due exchanges must come
        back, the others may be None or absent."""
        due_inputs = {spec.name for e in group for spec in self.schedule.inputs_of(e)}
        kwargs = {}
        for x, ex in enumerate(self.exchanges):
            if ex.static:
                continue
            for name in ex.inputs:
                kwargs[name] = (devmod.to_framework(self.batches[name], self.framework)
                                if name in due_inputs else None)
        for name, batch in self.static.items():
            kwargs[name] = devmod.to_framework(batch, self.framework)
        params = inspect.signature(self._router).parameters
        if "step" in params:
            kwargs["step"] = step
        return self._router_outputs(group, step, self._router(**kwargs))

    def _router_outputs(self, group: list[int], step: int, result) -> dict:
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
        """The model on the host batches (the OASIS worker's path: one call, no staging)."""
        fn = self._models.get(e) or self._models.get(None)
        if fn is None:
            raise CouplingError(f"no model registered for exchange {e} "
                                f"({', '.join(self.exchanges[e].inputs)}): use @tunnel.model")
        kwargs = {s.name: devmod.to_framework(self.batches[s.name], self.framework)
                  for s in self.schedule.inputs_of(e)}
        params = inspect.signature(fn).parameters
        takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
        for name, batch in self.static.items():
            if name in params or takes_all:
                kwargs.setdefault(name, devmod.to_framework(batch, self.framework))
        if "step" in params:
            kwargs["step"] = step
        return self._outputs_of(e, fn(**kwargs))

    def _outputs_of(self, e: int, result) -> dict:
        """The model's result as ``{output: value}`` (a dict, one value, or a tuple)."""
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

    def _check_finite(self, name: str, target, offset) -> None:
        """Refuse NaN/Inf in the tiles' own boxes, naming the first by its global index
        (``target[k]``: tile ``k`` of the output, on the host or the device)."""
        tiles = self.layout.tiles_of[self.link.rank]
        for k, d in enumerate(tiles):
            box = self.layout.dst.boxes[d]
            tile = devmod.host_view(target[k], f"output {name!r}")
            own = tile[:, offset[0]:offset[0] + box.j1 - box.j0, offset[1]:offset[1] + box.i1 - box.i0]
            checks.check_finite(f"output {name!r}: the model returned ", own, box, f" (tile {d})")

    def _teardown(self) -> None:
        for obj in list(self._receivers.values()) + list(self._senders.values()):
            obj.close()
        if self.verbose:
            report = self.report()
            if self.link.is_root and report:
                print(report, flush=True)
        self.link.close()

    def report(self) -> str:
        """Timings of every worker (collective over the workers) after worker 0's staging
        policy; the text on worker 0."""
        tables = self.link.comm.gather(self.timings.table(f"worker {self.link.rank} timings"),
                                       root=0)
        return "\n".join([self.describe()] + tables) if self.link.is_root else ""
