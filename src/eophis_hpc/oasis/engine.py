"""The OASIS engine of a tunnel (``Tunnel(..., transport="oasis")``): the workers' loop over
OASIS3-MCT, Eophis style.

The model side is the user's own OASIS code (e.g. NEMO's ``cpl_oasis3``); no eophis_hpc code runs
there. Every worker process is one rank of the OASIS component (default name ``eophis``) and,
for each tunnel:

- receives each input through an ``OrangePartition`` holding its tiles with their halo (cyclic
  wrap and north fold resolved, :mod:`.partition`), a bundle of ``levels`` fields, then reorders the buffer into
  the batch ``(tiles, levels, H + 2h, W + 2h)`` with the compiled kernels (or ``get``s straight
  into the batch when there is nothing to reorder: one tile whose halo lies inside the grid);
  batches that are not one plain host array (stacked inputs, land tiles left out) take one more
  copy from that batch;
- calls the tunnel's model (``@tunnel.model``) or router (``@tunnel.router``) through the same
  :class:`~eophis_hpc.runtime.invoker.Invoker` and :class:`~eophis_hpc.staging.Feed` as the MPI
  engine (framework, device, chunks, stack, land, ``tiles`` and ``step`` keywords);
- sends each output's own boxes back through a ``BoxPartition`` (one tile per worker, Eophis'
  decomposition) or an ``OrangePartition`` (several tiles), without a copy when the output
  already is the box's memory.

OASIS has no "next exchange" message: the loop runs ``steps`` iterations, iteration ``it`` at
date ``it * dt`` seconds, and exchanges what the tunnel's schedule says is due (the namcouple
written by :mod:`.namcouple` gives OASIS the same periods). Static fields are received
at date 0, before the loop. Variables are named ``M_IN_n`` / ``M_OUT_n`` (n counted over all the
fields of all the tunnels, as Eophis) unless aliases are given.
"""
from __future__ import annotations

import atexit
import sys
import time
import traceback
from fractions import Fraction

import numpy as np

from .. import checks, staging
from .. import device as devmod
from ..errors import CouplingError, mark_coupled
from ..runtime.engine import Engine
from ..runtime.invoker import Invoker
from . import component as oasis
from . import namcouple
from .partition import OASIS_GUIDE_MAX_SEGMENTS, RecvPartition, SendPartition, worker_tiles

_session = None  # this process' OASIS session (one component per process)


class OasisSession:
    """One OASIS component shared by ``tunnels``: partitions and variables of every tunnel are
    defined, then ``enddef`` is called (collective over all OASIS components).

    ``labels``/``geo_aliases``/``py_aliases``: per tunnel (lists, optional), as in Eophis'
    tunnel dictionaries; ``component``: the OASIS component name; ``communicator``: what OASIS
    splits (default ``MPI.COMM_WORLD``)."""

    def __init__(self, tunnels, component: str = "eophis", labels=None, geo_aliases=None,
                 py_aliases=None, communicator=None):
        tunnels = list(tunnels)
        if not tunnels:
            raise ValueError("open_session: no tunnel")
        n = len(tunnels)
        labels = list(labels or [None] * n)
        geo_aliases = list(geo_aliases or [None] * n)
        py_aliases = list(py_aliases or [None] * n)
        dicts = []
        for t, tnl in enumerate(tunnels):
            if getattr(tnl, "transport", "oasis") != "oasis":
                raise ValueError(f"open_session: tunnel {t} uses transport={tnl.transport!r}")
            if tnl.schedule.dt is None:
                raise ValueError("transport='oasis': the tunnel needs dt (the model time step in "
                                 "seconds): OASIS dates are seconds")
            for ex in tnl.exchanges:
                if ex.lag and ex.initial != 0.0:
                    raise ValueError(
                        f"transport='oasis': Exchange{ex.inputs} has lag={ex.lag} and initial="
                        f"{ex.initial}: OASIS reads the first {ex.lag} value(s) of a lagged field "
                        "from its coupling restart file (the namcouple's rst.nc), not from "
                        "initial=; leave initial at 0 and provide that file")
            dicts.append(namcouple.tunnel_dict(tnl, labels[t], geo_aliases[t], py_aliases[t]))
        fields = namcouple.coupling_fields(dicts)
        self.fields = fields
        self.component = oasis.Component(component, communicator)
        mark_coupled()
        comm = self.component.localcomm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.tunnels = tunnels
        self.engines = {}  # id(tunnel) -> its OasisEngine, attached to this session
        pos = 0
        for tnl in tunnels:
            count = len(tnl.schedule.fields)
            aliases = {f.name: f.py_alias for f in fields[pos:pos + count]}
            pos += count
            eng = tnl.engine if isinstance(tnl.engine, OasisEngine) else OasisEngine(tnl)
            eng.attach(self, aliases)
            tnl.engine = eng
            self.engines[id(tnl)] = eng
        self.component.enddef()
        for eng in self.engines.values():
            eng.check_periods()
        self.closed = False

    def close(self) -> None:
        """Finalise OASIS (once)."""
        if not self.closed:
            self.closed = True
            self.component.terminate()


def open_session(tunnels, **options) -> OasisSession:
    """Open this process' OASIS component for ``tunnels`` (see :class:`OasisSession`). A process
    has one component: open every OASIS tunnel in one call."""
    global _session
    if _session is not None and not _session.closed:
        raise RuntimeError("an OASIS session is already open in this process: open every OASIS "
                           "tunnel in one open_session([...]) call")
    _session = OasisSession(tunnels, **options)
    atexit.register(close_session)
    return _session


def close_session() -> None:
    global _session
    if _session is not None:
        _session.close()
        _session = None


def guarded(rank, fn):
    """Run ``fn``; on an exception, print it and abort the whole MPI job."""
    try:
        return fn()
    except Exception as exc:
        tb = traceback.format_exc()
        print(f"eophis_hpc OASIS worker {rank}: aborting the coupled job: "
              f"{type(exc).__name__}: {exc}\n{tb}", file=sys.stderr, flush=True)
        time.sleep(0.5)
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(1)



# ---------------------------------------------------------------------- one tunnel
class OasisEngine(Engine):
    """One tunnel's OASIS side on this worker: partitions, variables, the feed, the loop."""

    def __init__(self, tunnel):
        super().__init__(tunnel)
        self.session = None
        self.own_session = False

    # ------------------------------------------------------------------ set-up
    def open(self) -> None:
        """A session of its own unless the tunnel was opened with others by
        :func:`open_session`."""
        if self.session is None:
            open_session([self.tunnel])
            self.own_session = True

    def attach(self, session: OasisSession, aliases: dict) -> None:
        """Define this tunnel's partitions and variables in ``session`` (before its enddef)
        and make the batches."""
        tnl = self.tunnel
        self.session, self.rank = session, session.rank
        comp = session.component
        grid, sched = tnl.grid, tnl.schedule
        every = worker_tiles(grid, session.size, tnl.n_tiles)
        self.tiles = every[session.rank]
        first = sum(len(t) for t in every[:session.rank])
        tile_ids = list(range(first, first + len(self.tiles)))  # global tile indices
        self.dt = Fraction(sched.dt)
        h = tnl.halo
        points = sorted({s.point for s in sched.fields.values() if s.direction == "in"})
        self.recv_parts = {p: RecvPartition(grid.with_point(p), self.tiles, h) for p in points}
        self.send_part = SendPartition(grid, self.tiles)
        # one OASIS partition per point type, defined in the same order on every worker
        oasis_in = {p: comp.orange_partition(rp.offsets, rp.sizes, rp.global_size)
                    for p, rp in self.recv_parts.items()}
        for p, rp in self.recv_parts.items():
            if rp.n_segments > OASIS_GUIDE_MAX_SEGMENTS:
                print(f"eophis_hpc OASIS worker {self.rank}: the orange partition of {p} points "
                      f"has {rp.n_segments} segments; the OASIS3-MCT user guide quotes a limit of "
                      f"{OASIS_GUIDE_MAX_SEGMENTS} (use more workers if OASIS complains)",
                      file=sys.stderr, flush=True)
        sp = self.send_part
        oasis_out = None
        if any(s.direction == "out" for s in sched.fields.values()):
            oasis_out = (comp.box_partition(*sp.box, sp.global_size) if sp.box is not None else
                         comp.orange_partition(sp.offsets, sp.sizes, sp.global_size))
        self.read_shape = (next(iter(self.recv_parts.values())).shape if self.recv_parts else
                           (max(b.j1 - b.j0 for b in self.tiles) + 2 * h,
                            max(b.i1 - b.i0 for b in self.tiles) + 2 * h))
        # OASIS delivers to host memory: staged (pinned) or host policy, never CUDA-aware MPI
        self.policy = devmod.staging_policy(tnl.framework, tnl.device, cuda_aware=False)
        self.feed = staging.Feed(sched, tile_ids, self.tiles, self.read_shape,
                                 h, tnl.dtype, self.policy, tnl.chunks, tnl.stack, tnl.land,
                                 tnl.fill, self.timings)
        self.invoker = Invoker(sched, tnl.registry, self.feed, self.tiles, tile_ids,
                               check_finite=False)
        self.vars, self.bufs, self.direct, self.batches = {}, {}, {}, {}
        for spec in sorted(sched.fields.values(), key=lambda s: s.index):
            wire = np.dtype(spec.dtype)
            alias = aliases[spec.name]
            if spec.direction == "in":
                rp = self.recv_parts[spec.point]
                dtype = tnl.dtype if tnl.dtype is not None else wire
                target = self.feed.recv_target(spec.name)
                plain = (isinstance(target, np.ndarray) and target.flags.c_contiguous
                         and target.shape == (len(self.tiles), spec.levels) + rp.shape)
                # the batch OASIS' buffer is reordered into: the feed's own, when it is plain
                self.batches[spec.name] = target if plain else rp.new_batch(spec.levels, dtype)
                self.vars[spec.name] = comp.variable(alias, oasis_in[spec.point], "in",
                                                     spec.levels)
                direct = plain and rp.is_identity and dtype == wire
                self.direct[spec.name] = direct
                self.bufs[spec.name] = (target[0].reshape(spec.levels, -1).T if direct
                                        else rp.new_buffer(spec.levels, wire))
            else:
                self.vars[spec.name] = comp.variable(alias, oasis_out, "out", spec.levels)
                self.bufs[spec.name] = sp.new_buffer(spec.levels, wire)
        self.static_done: set[int] = set()

    def check_periods(self) -> None:
        """Compare OASIS' coupling periods (from the namcouple) with the tunnel's, field by field,
        so that a stale namcouple fails now rather than hanging later."""
        sched = self.tunnel.schedule
        for name, var in self.vars.items():
            spec = sched.fields[name]
            ex = sched.exchanges[spec.exchange]
            if ex.static or not var.active:
                continue
            periods = var.periods()
            want = ex.freq if ex.freq is not None else ex.every * sched.dt
            if periods and Fraction(str(periods[0])) != Fraction(str(want)):
                raise CouplingError(f"field {name!r} ({var.name}): the namcouple says a period of "
                                    f"{periods[0]} s, the tunnel {want} s: write the namcouple "
                                    "again (preproduction)")

    def describe(self) -> str:
        return f"staging: {self.policy.describe()}; chunks={self.tunnel.chunks} (OASIS)"

    # ------------------------------------------------------------------ moving fields
    def date(self, step: int) -> int:
        return int(step * self.dt)

    def _get(self, spec, date: int) -> None:
        t0 = time.perf_counter()
        tnl = self.tunnel
        buf = self.bufs[spec.name]
        self.vars[spec.name].get(date, buf)
        batch = self.batches[spec.name]
        if not self.direct[spec.name]:
            self.recv_parts[spec.point].apply(buf, batch, spec.sign, tnl.fill, tnl.backend)
        target = self.feed.recv_target(spec.name)
        if target is not batch:  # stacked channels or land tiles left out: one more copy
            for k in range(len(self.tiles)):
                row = target[k]
                if row is not None:
                    row[...] = batch[k]
        self.timings.add("recv", time.perf_counter() - t0)
        self.timings.add_bytes(spec.name, buf.nbytes)

    def _put(self, spec, target, offset, date: int) -> None:
        t0 = time.perf_counter()
        tnl = self.tunnel
        ntl = len(self.tiles)
        if isinstance(target, np.ndarray):
            arr = target
        else:  # chunks or land rows: the tiles in order, gathered once
            arr = np.stack([devmod.host_view(target[k], f"output {spec.name!r}")
                            for k in range(ntl)])
        arr = devmod.to_host(arr, f"output {spec.name!r}")
        if tnl.check_finite:
            self.invoker.check_finite(spec.name, arr, offset)
        wire = np.dtype(spec.dtype)
        b = self.tiles[0]
        if (ntl == 1 and offset == (0, 0) and arr.shape[2:] == (b.j1 - b.j0, b.i1 - b.i0)
                and arr.dtype == wire and arr.flags.c_contiguous):
            buf = arr[0].reshape(spec.levels, -1).T  # the box's own memory: no copy
        else:
            buf = self.bufs[spec.name]
            self.send_part.pack(np.ascontiguousarray(arr), buf, offset[0], tnl.backend)
        self.vars[spec.name].put(date, buf)
        self.timings.add("send", time.perf_counter() - t0)
        self.timings.add_bytes(spec.name, buf.nbytes)

    # ------------------------------------------------------------------ exchanges
    def receive_static(self, name: str):
        """A static field's batch, received at date 0, as the model sees it."""
        self.open()
        self.static_exchange(self.tunnel.schedule.fields[name].exchange)
        return self.feed.static_field(name)

    def static_exchange(self, e: int) -> None:
        """Receive (once) the inputs of static exchange ``e`` at date 0; call the model and send
        its outputs if it has any."""
        tnl = self.tunnel
        ex = tnl.exchanges[e]
        if not ex.static:
            raise ValueError(f"exchange {e} is not static")
        if e in self.static_done:
            return
        for spec in tnl.schedule.inputs_of(e):
            self._get(spec, 0)
            self.static[spec.name] = self.feed.recv_target(spec.name)
        self.feed.static_received(e)
        if ex.outputs:
            self._call([e], 0, 0)
        self.static_done.add(e)

    def _call(self, group: list[int], step: int, date: int) -> None:
        t0 = time.perf_counter()
        targets = self.invoker.call(group, step)
        self.timings.add("model", time.perf_counter() - t0)
        for spec in self.invoker.outputs(group):
            self._put(spec, *targets[spec.name], date)

    def static_ready(self) -> bool:
        return all(e in self.static_done for e, ex in enumerate(self.tunnel.exchanges)
                   if ex.static)

    def step(self, step: int) -> list[int]:
        """Iteration ``step`` (date ``step * dt``): the due exchanges' gets, the model or router
        call, the puts. Returns the exchanges that were due."""
        tnl = self.tunnel
        date = self.date(step)
        due = [e for e, ex in enumerate(tnl.exchanges)
               if not ex.static and tnl.schedule.due(e, step)]
        if not due:
            return due
        if not self.feed.land_ready:
            raise CouplingError(f"land={tnl.land!r}: the static field must be received before "
                                f"step {step}")
        groups = [due] if tnl.registry.router is not None else [[e] for e in due]
        for group in groups:
            for spec in self.invoker.due_inputs(group):
                self._get(spec, date)
            self._call(group, step, date)
        return due

    def run_steps(self, steps: int) -> None:
        for e, ex in enumerate(self.tunnel.exchanges):
            if ex.static:
                self.static_exchange(e)
        for it in range(steps):
            self.step(it)

    def serve(self, steps: int | None) -> dict:
        """Static exchanges, then ``steps`` iterations at dates ``it * dt``. Any error ends the
        whole MPI job (the other OASIS components would wait forever)."""
        if steps is None or isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError("transport='oasis': run(steps=N) needs the number of model time "
                             "steps (OASIS sends no end-of-run message)")
        self.open()
        guarded(self.rank, lambda: self.run_steps(steps))
        summary = self.timings.summary()
        if self.own_session:
            close_session()
        return summary
