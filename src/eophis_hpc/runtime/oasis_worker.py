"""The workers' loop over OASIS3-MCT (``Tunnel(..., transport="oasis")``), Eophis style.

The model side is the user's own OASIS code (e.g. NEMO's ``cpl_oasis3``); no eophis_hpc code runs
there. Every worker process is one rank of the OASIS component (default name ``eophis``) and,
for each tunnel:

- receives each input through an ``OrangePartition`` holding its tiles with their halo (cyclic
  wrap and north fold resolved, :mod:`eophis_hpc.runtime.oasis_partition`), a bundle of
  ``levels`` fields, then reorders the buffer into the batch ``(tiles, levels, H + 2h, W + 2h)``
  with the compiled kernels (or ``get``s straight into the batch when there is nothing to
  reorder: one tile whose halo lies inside the grid);
- calls the tunnel's model (``@tunnel.model``) or router (``@tunnel.router``) exactly as the MPI
  transport does;
- sends each output's own boxes back through a ``BoxPartition`` (one tile per worker, Eophis'
  decomposition) or an ``OrangePartition`` (several tiles), without a copy when the output
  already is the box's memory.

OASIS has no "next exchange" message: the loop runs ``steps`` iterations, iteration ``it`` at
date ``it * dt`` seconds, and exchanges what the tunnel's schedule says is due (the namcouple
written by :mod:`eophis_hpc.namcouple` gives OASIS the same periods). Static fields are received
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

from .. import device, namcouple
from ..transport import oasis
from .. import checks
from ..errors import CouplingError
from .oasis_partition import OASIS_GUIDE_MAX_SEGMENTS, RecvPartition, SendPartition, worker_tiles

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
            dicts.append(namcouple.tunnel_dict(tnl, labels[t], geo_aliases[t], py_aliases[t]))
        fields = namcouple.coupling_fields(dicts)
        self.fields = fields
        self.component = oasis.Component(component, communicator)
        comm = self.component.localcomm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.tunnels = tunnels
        self.endpoints = []
        pos = 0
        for tnl in tunnels:
            count = len(tnl.schedule.fields)
            aliases = {f.name: f.py_alias for f in fields[pos:pos + count]}
            pos += count
            ep = Endpoint(tnl, self, aliases)
            tnl._oasis = ep
            self.endpoints.append(ep)
        self.component.enddef()
        for ep in self.endpoints:
            ep.check_periods()
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


def _endpoint(tunnel) -> "Endpoint":
    ep = getattr(tunnel, "_oasis", None)
    if ep is None:
        open_session([tunnel])
        ep = tunnel._oasis
        ep.own_session = True
    return ep


# ---------------------------------------------------------------------- Tunnel entry points
def open_tunnel(tunnel) -> None:
    """``Tunnel.open()`` with ``transport="oasis"``: a session of its own unless the tunnel was
    opened with others by :func:`open_session`."""
    _endpoint(tunnel)


def receive(tunnel, name: str):
    """``Tunnel.receive(name)``: a static field's batch, received at date 0."""
    ep = _endpoint(tunnel)
    ep.static_exchange(tunnel.schedule.fields[name].exchange)
    return device.to_framework(tunnel.static[name], tunnel.framework)


def run(tunnel, steps: int | None = None) -> dict:
    """``Tunnel.run(steps)``: static exchanges, then ``steps`` iterations at dates ``it * dt``.
    Any error ends the whole MPI job (the other OASIS components would wait forever)."""
    if steps is None or isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError("transport='oasis': run(steps=N) needs the number of model time steps "
                         "(OASIS sends no end-of-run message)")
    ep = _endpoint(tunnel)
    guarded(ep, lambda: ep.run(steps))
    summary = tunnel.timings.summary()
    if getattr(ep, "own_session", False):
        close_session()
    return summary


def guarded(ep, fn):
    """Run ``fn``; on an exception, print it and abort the whole MPI job."""
    try:
        return fn()
    except Exception as exc:
        tb = traceback.format_exc()
        print(f"eophis_hpc OASIS worker {ep.rank}: aborting the coupled job: "
              f"{type(exc).__name__}: {exc}\n{tb}", file=sys.stderr, flush=True)
        time.sleep(0.5)
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(1)


# ---------------------------------------------------------------------- one tunnel
class Endpoint:
    """One tunnel's OASIS side on this worker: partitions, variables, buffers, the loop."""

    def __init__(self, tunnel, session: OasisSession, aliases: dict):
        self.tunnel, self.session = tunnel, session
        self.rank = session.rank
        self.own_session = False
        comp = session.component
        grid, sched = tunnel.grid, tunnel.schedule
        self.tiles = worker_tiles(grid, session.size, tunnel.n_tiles)[session.rank]
        self.dt = Fraction(sched.dt)
        points = sorted({s.point for s in sched.fields.values() if s.direction == "in"})
        self.recv_parts = {p: RecvPartition(grid.with_point(p), self.tiles, tunnel.halo)
                           for p in points}
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
        self.vars, self.bufs, self.direct = {}, {}, {}
        tunnel.batches = {}
        for spec in sorted(sched.fields.values(), key=lambda s: s.index):
            wire = np.dtype(spec.dtype)
            alias = aliases[spec.name]
            if spec.direction == "in":
                rp = self.recv_parts[spec.point]
                dtype = tunnel.dtype if tunnel.dtype is not None else wire
                batch = rp.new_batch(spec.levels, dtype)
                tunnel.batches[spec.name] = batch
                self.vars[spec.name] = comp.variable(alias, oasis_in[spec.point], "in",
                                                     spec.levels)
                direct = rp.is_identity and dtype == wire
                self.direct[spec.name] = direct
                self.bufs[spec.name] = (batch[0].reshape(spec.levels, -1).T if direct
                                        else rp.new_buffer(spec.levels, wire))
            else:
                self.vars[spec.name] = comp.variable(alias, oasis_out, "out", spec.levels)
                self.bufs[spec.name] = sp.new_buffer(spec.levels, wire)
        self.static_done: set[int] = set()
        h = tunnel.halo
        self.read_shape = next(iter(self.recv_parts.values())).shape if self.recv_parts else \
            (max(b.j1 - b.j0 for b in self.tiles) + 2 * h, max(b.i1 - b.i0 for b in self.tiles) + 2 * h)

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

    # ------------------------------------------------------------------ moving fields
    def date(self, step: int) -> int:
        return int(step * self.dt)

    def _get(self, spec, date: int) -> None:
        t0 = time.perf_counter()
        buf = self.bufs[spec.name]
        self.vars[spec.name].get(date, buf)
        if not self.direct[spec.name]:
            self.recv_parts[spec.point].apply(buf, self.tunnel.batches[spec.name], spec.sign,
                                              self.tunnel.fill, self.tunnel.backend)
        self.tunnel.timings.add("recv", time.perf_counter() - t0)
        self.tunnel.timings.add_bytes(spec.name, buf.nbytes)

    def _put(self, spec, value, date: int) -> None:
        t0 = time.perf_counter()
        arr = device.to_host(value, f"output {spec.name!r}")
        ntl = len(self.tiles)
        H, W = self.read_shape
        h = self.tunnel.halo
        offset = checks.output_offset(spec.name, arr.shape, ntl, spec.levels, (H, W), h)[0]
        checks.output_dtype(spec.name, arr.dtype)
        if self.tunnel.check_finite:
            self._check_finite(spec.name, arr, offset)
        wire = np.dtype(spec.dtype)
        b = self.tiles[0]
        if (ntl == 1 and offset == 0 and arr.shape[2:] == (b.j1 - b.j0, b.i1 - b.i0)
                and arr.dtype == wire and arr.flags.c_contiguous):
            buf = arr[0].reshape(spec.levels, -1).T  # the box's own memory: no copy
        else:
            buf = self.bufs[spec.name]
            self.send_part.pack(np.ascontiguousarray(arr), buf, offset, self.tunnel.backend)
        self.vars[spec.name].put(date, buf)
        self.tunnel.timings.add("send", time.perf_counter() - t0)
        self.tunnel.timings.add_bytes(spec.name, buf.nbytes)

    def _check_finite(self, name: str, arr: np.ndarray, offset: int) -> None:
        for k, box in enumerate(self.tiles):
            own = arr[k, :, offset:offset + box.j1 - box.j0, offset:offset + box.i1 - box.i0]
            checks.check_finite(f"output {name!r}: the model returned ", own, box)

    # ------------------------------------------------------------------ exchanges
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
            tnl.static[spec.name] = tnl.batches[spec.name]
        if ex.outputs:
            outputs = tnl._call_model(e, 0)
            for spec in tnl.schedule.outputs_of(e):
                self._put(spec, outputs[spec.name], 0)
        self.static_done.add(e)

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
        if tnl._router is not None:
            for e in due:
                for spec in tnl.schedule.inputs_of(e):
                    self._get(spec, date)
            t0 = time.perf_counter()
            outputs = tnl._call_router(due, step)
            tnl.timings.add("model", time.perf_counter() - t0)
            for e in due:
                for spec in tnl.schedule.outputs_of(e):
                    self._put(spec, outputs[spec.name], date)
            return due
        for e in due:
            for spec in tnl.schedule.inputs_of(e):
                self._get(spec, date)
            t0 = time.perf_counter()
            outputs = tnl._call_model(e, step)
            tnl.timings.add("model", time.perf_counter() - t0)
            for spec in tnl.schedule.outputs_of(e):
                self._put(spec, outputs[spec.name], date)
        return due

    def run(self, steps: int) -> None:
        for e, ex in enumerate(self.tunnel.exchanges):
            if ex.static:
                self.static_exchange(e)
        for it in range(steps):
            self.step(it)
