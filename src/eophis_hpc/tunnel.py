"""Worker side: ``eh.Tunnel`` declares what the inference workers serve (layer 7): the grid and
halo, the exchanges and their schedule, where and how the model runs, and the models themselves.
An engine (:mod:`eophis_hpc.runtime.engine`: MPI or OASIS, by ``transport``) joins the coupled
job and serves the declaration; every engine calls the model the same way
(:mod:`eophis_hpc.runtime.invoker`).
"""
from __future__ import annotations

import numpy as np

from . import config
from . import device as devmod
from .decomposition import Decomposition
from .errors import default_timeout, install_abort_hook
from .grid import Grid
from .protocol.schedule import Exchange, Schedule
from .runtime import engine as engines
from .runtime.invoker import ModelRegistry
from .runtime.timings import Timings
from .transport.mpi import strategies


class Tunnel:
    """The inference workers' end of the coupling.

    ``halo`` cells are added around every tile (closed, cyclic or folded per the grid);
    ``tiles`` is the total number of tiles (default: one per worker) or the tiles themselves (a
    Decomposition or boxes, e.g. Eophis' layout); ``strategy`` is how data moves (the names of
    ``eophis_hpc.transport.mpi.strategy_names()``, docs/architecture.md): ``shm`` (the default:
    one copy through shared memory between ranks of a node, MPI datatypes to the others; left
    unset, the workers follow a model side that cannot pair with it, e.g. a Fortran client),
    ``datatype`` (MPI derived datatypes, no packing), ``pipelined`` (chunked messages,
    ``pipeline_chunk`` bytes each) or ``packed`` (compiled kernels + persistent buffers; fields
    that need a cast, stacking or land removal use it automatically); ``dtype`` is the
    dtype the model wants (cast in the unpack kernel).

    Where the model runs (``staging``, ``device``): ``framework`` (numpy, torch, cupy,
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

    ``transport`` picks the engine (``mpi``, or ``oasis`` for models coupled through
    OASIS3-MCT); ``world`` (MPI only) is the communicator holding exactly the model and worker
    ranks (default ``COMM_WORLD``), for jobs where the launcher or another library already split
    it; ``timeout`` (seconds, default ``EOPHIS_HPC_TIMEOUT`` or 600) bounds every wait, the
    join included.

    ``pipeline`` (MPI): a second set of input batches, so the receives of an exchange's next
    occurrence are posted before the model runs on this one (the model ranks' puts of
    occurrence n + 1 never wait for the model of occurrence n; twice the input batch memory).
    The default (None) gives the second set to lagged exchanges only (``Exchange(lag=...)``):
    at lag 0 the model ranks cannot put occurrence n + 1 before they got occurrence n, so a
    second set would only cost memory and cache (measured: 1.24-1.36x raw MPI instead of
    1.03x at 1:1 on eORCA025); ``True`` gives it to every exchange, ``False`` to none.
    """

    def __init__(self, grid: Grid, halo: int = 0, exchanges=(), *, dt: float | None = None,
                 tiles: int | None = None, strategy: str | None = None, backend: str | None = None,
                 framework: str = "numpy", dtype=None, fill: float = 0.0, verbose: bool = True,
                 timeout: float | None = None, check_finite: bool = False,
                 transport: str = "mpi", device: str = "cpu", chunks: int | None = None,
                 stack: bool | str = False, land: str | None = None, world=None,
                 pipeline: bool | None = None, pipeline_chunk: int | None = None):
        install_abort_hook()  # a bad argument below must end the MPI job, not strand the model
        if not isinstance(grid, Grid):
            raise TypeError(f"Tunnel: grid must be an eophis_hpc.Grid, got {type(grid).__name__}")
        self.settings = config.load()  # eophis_hpc.toml (from eophis-hpc tune): fills unset options
        # not chosen (argument or settings file): the workers follow the model side if need be
        self.strategy_explicit = strategy is not None or "strategy" in self.settings
        strategy = config.resolve("strategy", strategy, strategies.DEFAULT)
        strategies.check_name(strategy, "Tunnel")
        self.engine_class = engines.engine_class(transport)
        self.transport = transport
        self.world = world
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
        pipeline_chunk = config.resolve("pipeline_chunk", pipeline_chunk, None)
        if pipeline_chunk is not None and (isinstance(pipeline_chunk, bool) or not isinstance(
                pipeline_chunk, int) or pipeline_chunk < 64):
            raise ValueError(f"Tunnel: pipeline_chunk must be a number of bytes >= 64, got "
                             f"{pipeline_chunk!r}")
        self.pipeline_chunk = pipeline_chunk
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
        if pipeline is not None and not isinstance(pipeline, bool):
            raise ValueError(f"Tunnel: pipeline must be None, True or False, got {pipeline!r}")
        self.pipeline = pipeline
        if land is not None:
            spec = self.schedule.field(land, "Tunnel: land")
            if spec.direction != "in" or not self.exchanges[spec.exchange].static:
                raise ValueError(f"Tunnel: land={land!r} must name a static input field (the mask "
                                 "the model ranks put once, before the first step)")
        self.dtype = None if dtype is None else np.dtype(dtype)
        if self.dtype is not None and self.dtype not in (np.float32, np.float64):
            raise ValueError(f"Tunnel: dtype must be float32 or float64, got {dtype!r}")
        self.fill = float(fill)
        self.verbose = verbose
        timeout = config.resolve("timeout", timeout, None)
        self.timeout = default_timeout() if timeout is None else (float(timeout) or None)
        self.check_finite = bool(check_finite)
        self.timings = Timings()
        self.registry = ModelRegistry()
        self.engine = None

    @property
    def exchanges(self) -> list[Exchange]:
        return self.schedule.exchanges

    def model(self, fn=None, *, exchange: int | None = None):
        """Decorator registering the model called on each due exchange (or on one of them).

        It is called with one keyword per input of the exchange (a batch), plus any static field
        or ``step`` its signature names; it returns ``{output: array}`` (a single array or a
        tuple in ``outputs`` order also work), each with or without the halo."""
        def register(f):
            self.registry.add_model(f, exchange)
            return f
        return register(fn) if fn is not None else register

    def router(self, fn):
        """Decorator registering an all-in-all-out model (Eophis' ``@all_in_all_out``): called
        once per step with every input of the tunnel (None when its exchange is not due) and the
        static fields; returns ``{output: array or None}``. The model ranks must put every input
        of a step before they get any output of it."""
        self.registry.add_router(fn)
        return fn

    # ------------------------------------------------------------------ serving (the engine)
    def open(self) -> None:
        """Join the coupled job (handshake, buffers, first receives); ``run`` and ``receive``
        call it when needed."""
        self.engine_for_run().open()

    def engine_for_run(self):
        """This tunnel's engine (made on first use; it joins the job at its ``open``)."""
        if self.engine is None:
            self.engine = self.engine_class(self)
        return self.engine

    def receive(self, name: str):
        """A static field's batch ``(tiles, levels, H + 2h, W + 2h)``, received before the loop
        (Eophis' ``tunnel.receive('mask')``), as the model sees it: the framework's tensor, on
        its device, land tiles left out when ``land`` is set."""
        spec = self.schedule.field(name, "Tunnel.receive")
        if not self.exchanges[spec.exchange].static:
            raise ValueError(f"Tunnel.receive({name!r}): only static fields are received before "
                             "the loop; time-dependent ones reach the model")
        return self.engine_for_run().receive_static(name)

    def run(self, steps: int | None = None) -> dict:
        """Serve the model ranks until they close (or ``steps`` occurrences); returns timings.
        With ``transport="oasis"``: ``steps`` model time steps at dates ``step * dt``."""
        return self.engine_for_run().serve(steps)

    def describe(self) -> str:
        """The staging policy in force and the choices made for this tunnel."""
        if self.engine is None:
            return f"staging: {self.policy.describe()}; chunks={self.chunks} (not open yet)"
        return self.engine.describe()

    # ------------------------------------------------------------------ after open
    @property
    def rank(self) -> int | None:
        """This worker's rank among the workers (None before ``open``)."""
        return None if self.engine is None else self.engine.rank

    @property
    def layout(self):
        """The layout agreed with the model ranks (tiles, owners, plans), after ``open``."""
        return None if self.engine is None else self.engine.layout

    @property
    def static(self) -> dict:
        """Static fields received so far, as host batches (all tiles)."""
        return {} if self.engine is None else self.engine.static

