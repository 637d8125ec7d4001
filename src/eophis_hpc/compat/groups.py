"""Several grids in one Eophis tunnel: the grid groups and the joint router.

An Eophis tunnel may use several grids (``grids`` holds them, each exchange names one with
``grd``): different halos, boundary conditions, fold pivots or sizes. An :class:`eophis_hpc.Tunnel`
has one grid, one halo and one set of boundary conditions, so an Eophis tunnel becomes one
eophis_hpc tunnel per *grid group*: the exchanges whose grids share their size, halo and
boundary conditions (and fold pivot), in the order the groups first appear in ``exchs``. Grids
that differ only in their point type (T, U, V, F) stay in one group: the point is per exchange.

Eophis calls the router once per iteration with every input of the tunnel. :class:`JointRouter`
keeps that: each group's eophis_hpc router hands its inputs over, and the user's router runs once
per date, when every group due at that date has arrived; each group then sends its own outputs.
Two ways of waiting for the other groups:

- ``threads`` (MPI transport): each group is served by its own thread (its own MPI
  intercommunicator); a group that arrives first waits for the others;
- ``nested`` (OASIS transport, single-threaded since OASIS is not thread-safe): a group that
  arrives first steps the next missing group itself (``advance(group, date)``), so the last one
  calls the router; the puts then go back up the chain.
"""
from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import CouplingError, default_timeout
from ..grid import Grid
from . import logs


@dataclass(frozen=True)
class GridGroup:
    """The exchanges (indices into the tunnel's ``exchs``) served by one eophis_hpc tunnel on
    ``grid`` (the group's first grid) with ``halo``; ``grid_names``: the Eophis grids in it."""

    grid: Grid
    halo: int
    grid_names: tuple
    exchanges: tuple


def _key(grid: Grid, halo: int) -> tuple:
    pivot = grid.pivot if grid.north == "fold" else None
    return (grid.nx, grid.ny, grid.east_west, grid.south, grid.north, pivot, halo)


def grid_groups(grids: dict, exchs) -> list[GridGroup]:
    """Group the exchanges by grid: ``grids`` is ``{name: (Grid, halo)}``, ``exchs`` the Eophis
    exchange dictionaries (their ``grd`` must be in ``grids``). Pure."""
    order: list[tuple] = []
    members: dict[tuple, dict] = {}
    for k, ex in enumerate(exchs):
        name = ex["grd"]
        grid, halo = grids[name]
        key = _key(grid, halo)
        if key not in members:
            order.append(key)
            members[key] = {"grid": grid, "halo": halo, "names": [], "exchanges": []}
        group = members[key]
        if name not in group["names"]:
            group["names"].append(name)
        group["exchanges"].append(k)
    return [GridGroup(members[k]["grid"], members[k]["halo"], tuple(members[k]["names"]),
                      tuple(members[k]["exchanges"])) for k in order]


def xyz(batch) -> np.ndarray:
    """``(1, z, y, x)`` batch -> the ``(x, y, z)`` view Eophis users get (no copy)."""
    arr = np.asarray(batch)
    if arr.ndim != 4 or arr.shape[0] != 1:
        raise CouplingError(f"expected one tile per worker (1, z, y, x), got {arr.shape}")
    return arr[0].transpose(2, 1, 0)


def from_xyz(value, name: str) -> np.ndarray:
    """An ``(x, y, z)`` output -> the ``(1, z, y, x)`` batch view (no copy when possible)."""
    arr = np.asarray(value)
    if arr.ndim != 3:
        raise CouplingError(f"output {name!r}: expected an (x, y, z) array, got shape {arr.shape}")
    return arr.transpose(2, 1, 0)[None]


class _Date:
    """What the groups due at one date have handed over so far."""

    def __init__(self):
        self.inputs: dict = {}
        self.arrived: set = set()
        self.taken: set = set()
        self.result: dict | None = None
        self.error: BaseException | None = None


class JointRouter:
    """The user's Eophis router over the eophis_hpc tunnels of one Eophis tunnel.

    ``label``: the tunnel's label; ``tunnels``: its eophis_hpc tunnels (one per group, steps in
    seconds); ``arriving``/``departing``: per group, the names of its non-static inputs and
    outputs (Eophis' ``arriving_list``/``departure_list`` order overall); ``router``: the user's
    function; ``step``: the loop's time step in seconds (for the iteration numbers of the log);
    ``mode``: ``threads`` or ``nested``; ``advance(group, date)``: in ``nested`` mode, steps a
    group at a date."""

    MODES = ("threads", "nested")

    def __init__(self, label: str, tunnels, arriving, departing, router, step, mode: str,
                 advance=None, timeout: float | None = None):
        if mode not in self.MODES:
            raise ValueError(f"JointRouter: mode {mode!r} is not one of {self.MODES}")
        if mode == "nested" and advance is None:
            raise ValueError("JointRouter: mode 'nested' needs advance(group, date)")
        self.label, self.tunnels, self.router = label, list(tunnels), router
        self.arriving = [list(a) for a in arriving]
        self.departing = [list(d) for d in departing]
        self.all_inputs = [n for names in self.arriving for n in names]
        self.all_outputs = {n for names in self.departing for n in names}
        self.step, self.mode, self.advance = step, mode, advance
        self.timeout = default_timeout() if timeout is None else timeout
        self.calls = 0
        self._dates: dict[int, _Date] = {}
        self._cond = threading.Condition()

    # ------------------------------------------------------------------ schedule
    def due_groups(self, date: int) -> list[int]:
        """The groups with a non-static exchange due at ``date`` (seconds)."""
        return [g for g, t in enumerate(self.tunnels)
                if any(not ex.static and t.schedule.due(x, date)
                       for x, ex in enumerate(t.exchanges))]

    def for_group(self, g: int):
        """Group ``g``'s eophis_hpc router: ``(step, **batches) -> {output: batch}``."""
        def group_router(step, **batches):
            mine = {name: None if batches.get(name) is None else xyz(batches[name])
                    for name in self.arriving[g]}
            result = self._arrive(g, int(step), mine)
            return {name: None if result.get(name) is None else from_xyz(result[name], name)
                    for name in self.departing[g]}
        return group_router

    # ------------------------------------------------------------------ rendezvous
    def _arrive(self, g: int, date: int, mine: dict) -> dict:
        due = self.due_groups(date)
        if g not in due:
            raise CouplingError(f"tunnel {self.label}: grid group {g} called at date {date}, "
                                f"when no exchange of it is due")
        with self._cond:
            state = self._dates.setdefault(date, _Date())
            state.inputs.update(mine)
            state.arrived.add(g)
            missing = [x for x in due if x not in state.arrived]
            if not missing:
                try:
                    state.result = self._call(date, state.inputs)
                except BaseException as exc:
                    state.error = exc
                self._cond.notify_all()
        if missing and self.mode == "nested":
            self.advance(missing[0], date)  # the chain ends with the router's call
        with self._cond:
            if self.mode == "threads" and state.result is None and state.error is None:
                ok = self._cond.wait_for(lambda: state.result is not None or state.error
                                         is not None, timeout=self.timeout)
                if not ok:
                    raise CouplingError(
                        f"tunnel {self.label}: at date {date} the model ranks did not put the "
                        f"inputs of grid groups {[x for x in due if x not in state.arrived]} "
                        f"within {self.timeout:g} s (every grid of a tunnel due at a date must "
                        "be put before the results are read)")
            state.taken.add(g)
            if state.taken >= set(due):
                self._dates.pop(date, None)
            if state.error is not None:
                raise CouplingError(f"tunnel {self.label}: the router failed at date {date}: "
                                    f"{type(state.error).__name__}: {state.error}")
            if state.result is None:
                raise CouplingError(f"tunnel {self.label}: the groups due at date {date} did not "
                                    "all arrive")
            return state.result

    def _call(self, date: int, inputs: dict) -> dict:
        """The user's router with every input of the tunnel (None when not due), once."""
        arrays = {name: inputs.get(name) for name in self.all_inputs}
        it = int(round(date / self.step)) if self.step else 0
        requests = ", ".join(n for n, a in arrays.items() if a is not None)
        if requests:
            when = datetime.timedelta(seconds=date)
            logs.info(f"Iteration {it + 1}: {date}s -- {when} \n   Treating {requests} received "
                      f"through tunnel {self.label}")
        result = self.router(**arrays)
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise CouplingError(f"tunnel {self.label}: the router must return a dict, got "
                                f"{type(result).__name__}")
        unknown = [n for n in result if n not in self.all_outputs]
        if unknown:
            raise CouplingError(f"tunnel {self.label}: the router returned {unknown}, not outputs "
                                f"of the tunnel ({sorted(self.all_outputs)})")
        if requests:
            results = ", ".join(n for n, v in result.items() if v is not None)
            logs.info(f"   Sending back {results} through tunnel {self.label}")
        self.calls += 1
        return result


def serve_in_threads(tunnels) -> None:
    """``run()`` every tunnel at once, one thread each (MPI transport, several grid groups);
    needs an MPI library initialised with ``MPI_THREAD_MULTIPLE``."""
    from mpi4py import MPI
    if len(tunnels) > 1 and MPI.Query_thread() != MPI.THREAD_MULTIPLE:
        raise CouplingError("a tunnel with several grid groups is served by one thread per group: "
                            "MPI must be initialised with MPI_THREAD_MULTIPLE (mpi4py's default; "
                            "check mpi4py.rc.thread_level)")
    threads = [threading.Thread(target=t.run, name=f"eophis-group-{g}", daemon=True)
               for g, t in enumerate(tunnels[1:], start=1)]
    for th in threads:
        th.start()
    tunnels[0].run()
    for th in threads:
        th.join()
