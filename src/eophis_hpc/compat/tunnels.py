"""Eophis' tunnel API over eophis_hpc: dictionaries to :class:`eophis_hpc.Tunnel`, the
namcouple in preproduction, the all-in-all-out loop in production.

An Eophis tunnel dictionary (``label``, ``grids`` ``{name: {npts, halos, bnd, folding}}``,
``exchs`` ``[{freq, grd, lvl, in, out}]``, optional ``geo_aliases``/``py_aliases``) becomes one
``eh.Tunnel`` per grid group (:mod:`.groups`: the exchanges whose grids share size, halo and
boundary conditions; a grid's point type T/U/V/F becomes the exchange's ``point``), each with one
tile per worker. Frequencies stay in seconds: the tunnels' step unit is the second (``dt=1``,
``every=freq``), so the "step" the model side passes is the date in seconds, as OASIS dates are;
static exchanges stay static. The router is called once per date with every input of the Eophis
tunnel, whatever the number of groups.

The router receives, for every non-static input, the ``(x, y, z)`` = ``(nx_loc + 2h,
ny_loc + 2h, lvl)`` float64 view ``batch[0].transpose(2, 1, 0)`` of the worker's batch (no copy)
or None when it is not due, and returns ``{output: (x, y, z) array or None}``; an output is sent
back by transposing the view back, without a copy when it is C-ordered ``(z, y, x)`` memory
(which NumPy keeps for arithmetic on the views it got).

Transport: MPI by default (the model side uses :func:`eophis_hpc.connect` and passes dates in
seconds as steps); OASIS with :func:`set_transport` ``("oasis")`` or ``EOPHIS_HPC_TRANSPORT=oasis``.
"""
from __future__ import annotations

import datetime
import os

from ..oasis import namcouple as nc
from ..grid import Grid
from ..protocol.schedule import Exchange
from ..tunnel import Tunnel as _EhTunnel
from . import logs
from .groups import JointRouter, from_xyz, grid_groups, serve_in_threads, xyz

__all__ = ["Domains", "EophisTunnel", "Freqs", "Mode", "all_in_all_out", "close_tunnels",
           "from_xyz", "get_transport", "grid_from_dict", "open_tunnels", "register_tunnels",
           "reset", "set_mode", "set_transport", "starter", "tunnels_ready",
           "write_coupling_namelist", "xyz"]

TRANSPORTS = ("mpi", "oasis")
COMPONENT = "eophis"


class Freqs:
    """Eophis' predefined exchange periods, in seconds (``STATIC`` = once, before the loop)."""
    STATIC = -1
    MINUTLY = 60
    HOURLY = 3600
    DAILY = 24 * HOURLY
    WEEKLY = 7 * DAILY
    MONTHLY = 31 * DAILY
    YEARLY = 365 * DAILY


class Domains:
    """Eophis' predefined grids."""
    demo = {"npts": (720, 603), "halos": 0, "bnd": ("close", "close"), "folding": ("T", "T")}
    eORCA05 = {"npts": (720, 603), "halos": 1, "bnd": ("cyclic", "NFold"), "folding": ("T", "T")}
    eORCA025 = {"npts": (1440, 1206), "halos": 1, "bnd": ("cyclic", "NFold"), "folding": ("T", "T")}
    eORCA025_U = {"npts": (1440, 1206), "halos": 1, "bnd": ("cyclic", "NFold"), "folding": ("U", "T")}
    eORCA025_V = {"npts": (1440, 1206), "halos": 1, "bnd": ("cyclic", "NFold"), "folding": ("V", "T")}
    eORCA025_F = {"npts": (1440, 1206), "halos": 1, "bnd": ("cyclic", "NFold"), "folding": ("F", "T")}


class Mode:
    """``preprod``: write the namelists, no coupling; ``prod`` (default): couple and check."""
    PREPROD = False
    PROD = True


def set_mode(mode_to_set: str) -> None:
    """``'preprod'`` or ``'prod'`` (anything else disables both, as in Eophis)."""
    Mode.PREPROD = mode_to_set == "preprod"
    Mode.PROD = mode_to_set == "prod"


class _Registry:
    tunnels: list = []
    transport: str | None = None
    opened = False
    session = None


def set_transport(transport: str) -> None:
    """``'mpi'`` (default; the model side uses eophis_hpc's client) or ``'oasis'``."""
    if transport not in TRANSPORTS:
        raise ValueError(f"set_transport: {transport!r} is not one of {TRANSPORTS}")
    _Registry.transport = transport


def get_transport() -> str:
    if _Registry.transport is not None:
        return _Registry.transport
    env = os.environ.get("EOPHIS_HPC_TRANSPORT", "mpi")
    if env not in TRANSPORTS:
        raise ValueError(f"EOPHIS_HPC_TRANSPORT={env!r} is not one of {TRANSPORTS}")
    return env


# ---------------------------------------------------------------------- dictionaries -> eh
def grid_from_dict(name: str, info: dict) -> tuple[Grid, int]:
    """An Eophis grid dictionary as ``(eh.Grid, halo)``."""
    if not isinstance(info, dict) or "npts" not in info:
        raise ValueError(f"grid {name!r}: expected a dict with 'npts': (nx, ny), got {info!r}")
    try:
        nx, ny = (int(v) for v in info["npts"])
    except (TypeError, ValueError):
        raise ValueError(f"grid {name!r}: npts must be (nx, ny), got {info['npts']!r}") from None
    halo = info.get("halos", 0)
    bx, by = (str(v).lower() for v in info.get("bnd", ("close", "close")))
    point, pivot = (str(v).upper() for v in info.get("folding", ("T", "T")))
    if bx in ("close", "closed"):
        east_west = "closed"
    elif bx == "cyclic":
        east_west = "cyclic"
    else:
        raise ValueError(f"grid {name!r}: x boundary {bx!r} is not 'close' or 'cyclic' "
                         "(the fold is only supported at the north)")
    if by in ("close", "closed"):
        south, north = "closed", "closed"
    elif by == "cyclic":
        south, north = "cyclic", "cyclic"
    elif "fold" in by:
        south, north = "closed", "fold"
    else:
        raise ValueError(f"grid {name!r}: y boundary {by!r} is not 'close', 'cyclic' or 'NFold'")
    grid = Grid(nx, ny, east_west, south, north, pivot=pivot, point=point, name=str(name))
    return grid, grid.check_halo(halo, f"grid {name!r}: halos")


def exchange_from_dict(ex: dict, grids: dict, k: int) -> Exchange:
    """An Eophis exchange dictionary as an :class:`eh.Exchange` (period in seconds as
    ``every``, since the compat tunnels count steps in seconds)."""
    for key in ("freq", "grd"):
        if key not in ex:
            raise ValueError(f"exchange {k}: missing {key!r}")
    if ex["grd"] not in grids:
        raise ValueError(f"exchange {k}: grid {ex['grd']!r} is not one of {sorted(grids)}")
    grid, _ = grids[ex["grd"]]
    levels = ex.get("lvl", 1)
    common = {"inputs": list(ex.get("in") or []), "outputs": list(ex.get("out") or []),
              "levels": levels, "point": grid.point, "signs": dict(ex.get("signs") or {})}
    if ex["freq"] == Freqs.STATIC:
        return Exchange(static=True, **common)
    freq = ex["freq"]
    if isinstance(freq, bool) or not float(freq).is_integer() or freq <= 0:
        raise ValueError(f"exchange {k}: freq must be a positive whole number of seconds or "
                         f"Freqs.STATIC, got {freq!r}")
    return Exchange(every=int(freq), **common)


class EophisTunnel:
    """What ``register_tunnels`` returns: an Eophis tunnel backed by one :class:`eh.Tunnel` per
    grid group (``.tunnels``; ``.tunnel`` when there is one group), with Eophis' ``label``,
    ``receive(name)``, ``arriving_list()``, ``departure_list()``."""

    def __init__(self, label, grids, exchs, geo_aliases=None, py_aliases=None, transport="mpi"):
        self.label = str(label)
        self.raw = {"label": self.label, "grids": grids, "exchs": exchs,
                    "geo_aliases": dict(geo_aliases or {}), "py_aliases": dict(py_aliases or {})}
        if not isinstance(grids, dict) or not grids:
            raise ValueError(f"tunnel {label}: 'grids' must be a non-empty dict")
        self.grids = {name: grid_from_dict(name, info) for name, info in grids.items()}
        self.exchs = list(exchs)
        for k, ex in enumerate(self.exchs):
            if not isinstance(ex, dict):
                raise ValueError(f"tunnel {label}: exchange {k} must be a dict, got {ex!r}")
            if ex.get("grd") not in self.grids:
                raise ValueError(f"tunnel {label}: exchange {k} uses grid {ex.get('grd')!r}, not "
                                 f"one of {sorted(self.grids)}")
        if not self.exchs:
            raise ValueError(f"tunnel {label}: no exchange")
        self.groups = grid_groups(self.grids, self.exchs)
        self.transport = transport
        self.tunnels = []
        for group in self.groups:
            exchanges = [exchange_from_dict(self.exchs[k], self.grids, k)
                         for k in group.exchanges]
            self.tunnels.append(_EhTunnel(group.grid, group.halo, exchanges, dt=1,
                                          transport=transport, framework="numpy",
                                          verbose=False))
        self.static_used = {name: False for ex in self.exchs if ex["freq"] == Freqs.STATIC
                             for name in list(ex.get("in") or []) + list(ex.get("out") or [])}
        self.joint = None

    @property
    def tunnel(self):
        """The eophis_hpc tunnel, when all the exchanges share one grid group."""
        if len(self.tunnels) != 1:
            raise AttributeError(f"tunnel {self.label} has {len(self.tunnels)} grid groups: use "
                                 ".tunnels")
        return self.tunnels[0]

    @property
    def calls(self) -> int:
        """How many times the router was called."""
        return 0 if self.joint is None else self.joint.calls

    def _names(self, g: int, key: str) -> list[str]:
        return [n for k in self.groups[g].exchanges if self.exchs[k]["freq"] != Freqs.STATIC
                for n in self.exchs[k].get(key) or []]

    def arriving_list(self) -> list[str]:
        return [n for ex in self.exchs if ex["freq"] != Freqs.STATIC for n in ex.get("in") or []]

    def departure_list(self) -> list[str]:
        return [n for ex in self.exchs if ex["freq"] != Freqs.STATIC for n in ex.get("out") or []]

    def group_of(self, name: str) -> int:
        """The grid group whose eophis_hpc tunnel carries field ``name``."""
        for g, group in enumerate(self.groups):
            for k in group.exchanges:
                ex = self.exchs[k]
                if name in list(ex.get("in") or []) + list(ex.get("out") or []):
                    return g
        raise KeyError(f"tunnel {self.label}: no field {name!r}")

    def receive(self, var_label: str, date=None):
        """A static field, received before the loop, as an ``(x, y, z)`` float64 view."""
        if var_label not in self.static_used:
            logs.abort(f"tunnel {self.label}: receive({var_label!r}) outside the loop is for "
                       "static fields; time-dependent fields reach the router")
        if self.static_used[var_label]:
            logs.warning(f"Static receive of {var_label} through tunnel {self.label} already "
                         "done, skipped")
            return None
        logs.info(f"\n-!- Static receive of {var_label} through tunnel {self.label}")
        batch = self.tunnels[self.group_of(var_label)].receive(var_label)
        self.static_used[var_label] = True
        return xyz(batch)

    def joint_router(self, router, step, mode: str, advance=None) -> JointRouter:
        """The user's router over the groups' tunnels (registered as their routers)."""
        n = len(self.groups)
        self.joint = JointRouter(self.label, self.tunnels,
                                 [self._names(g, "in") for g in range(n)],
                                 [self._names(g, "out") for g in range(n)],
                                 router, step, mode, advance)
        for g, t in enumerate(self.tunnels):
            t.router(self.joint.for_group(g))
        return self.joint


# ---------------------------------------------------------------------- Eophis API
def register_tunnels(configs):
    """Register tunnels given as Eophis dictionaries; returns the list of tunnels.

    In production with the OASIS transport the namcouple is read and checked against them (an
    error names the first field that differs)."""
    if isinstance(configs, dict):
        configs = [configs]
    if _Registry.opened:
        logs.warning("Tunnels are opened, cannot register new tunnels")
        return []
    transport = get_transport()
    new = []
    for cfg in configs:
        try:
            tnl = EophisTunnel(**cfg, transport=transport)
        except (TypeError, ValueError) as exc:
            logs.abort(f"register_tunnels: {exc}")
        new.append(tnl)
        logs.info(f"-------- Tunnel {tnl.label} registered --------")
    _Registry.tunnels += new
    if Mode.PROD and transport == "oasis":
        try:
            fields = nc.coupling_fields([t.raw for t in _Registry.tunnels])
            nc.check_namcouple(nc.read_namcouple("namcouple"), fields)
        except (ValueError, OSError) as exc:
            logs.abort(f"namcouple: {exc}")
    return new


def coupling_fields() -> list:
    """The namcouple blocks of the registered tunnels (aliases numbered as Eophis)."""
    return nc.coupling_fields([t.raw for t in _Registry.tunnels])


def write_coupling_namelist(simulation_time: float = 31536000.0) -> str | None:
    """Preproduction: write ``namcouple`` (the existing one is kept as ``namcouple_ref`` and
    completed) for a run of ``simulation_time`` seconds; ``$RUNTIME`` = int(1.01 * time)."""
    logs.info("\n  Writing namcouple with registered tunnels")
    if not Mode.PREPROD:
        logs.abort("OASIS namelist can only be written in preproduction mode")
    if _Registry.opened:
        logs.warning("Tunnels are opened, cannot write coupling namelist")
        return None
    try:
        path = nc.write_namcouple(coupling_fields(), simulation_time)
    except (ValueError, OSError) as exc:
        logs.abort(f"write_coupling_namelist: {exc}")
    logs.info(f"  namcouple written: {path}")
    return path


def open_tunnels() -> None:
    """Production: join the coupled job (MPI handshake, or the OASIS component ``eophis`` with
    every tunnel's partitions and variables)."""
    logs.info("\n  Starting coupling environment and tunnels opening")
    if not Mode.PROD:
        logs.abort("Tunnels opening can only be done in production mode")
    if _Registry.opened:
        logs.warning("Ignore tunnels opening, already done")
        return
    tunnels = _Registry.tunnels
    if get_transport() == "oasis":
        from ..oasis import engine as oasis_worker
        fields = {(f.tunnel, f.name): f for f in coupling_fields()}
        subs, labels, geo, py = [], [], [], []
        for t in tunnels:
            for sub in t.tunnels:
                names = list(sub.schedule.fields)
                subs.append(sub)
                labels.append(t.label)
                geo.append({n: fields[(t.label, n)].geo_alias for n in names})
                py.append({n: fields[(t.label, n)].py_alias for n in names})
        _Registry.session = oasis_worker.open_session(
            subs, component=COMPONENT, labels=labels, geo_aliases=geo, py_aliases=py)
        logs.set_rank(_Registry.session.rank)
    else:
        for t in tunnels:
            for sub in t.tunnels:  # the model side connects in the same order (compat.model)
                sub.open()
        if tunnels:
            logs.set_rank(tunnels[0].tunnels[0].rank)
    _Registry.opened = True


def tunnels_ready() -> bool:
    """Whether every static field of every tunnel has been exchanged."""
    return all(all(t.static_used.values()) for t in _Registry.tunnels)


def close_tunnels(reread: bool = True) -> None:
    """End the coupling environment and forget the registered tunnels."""
    logs.info("\n  Closing tunnels")
    if _Registry.session is not None:
        from ..oasis import engine as oasis_worker
        oasis_worker.close_session()
    _Registry.tunnels = []
    _Registry.opened = False
    _Registry.session = None


def _finish() -> None:
    """Eophis' end of run: the tunnels are closed again (as Eophis does at exit)."""
    close_tunnels(reread=False)


logs.set_finisher(_finish)


def starter(loop_router):
    """Start an assembled loop (``@all_in_all_out``)."""
    return loop_router()


def all_in_all_out(geo_model, step, niter):
    """Eophis' all-in-all-out loop: ``niter`` iterations of ``step`` seconds; at each, every
    input of ``geo_model`` (None when not due) goes to the router, whose outputs go back.

    Over MPI the loop serves the model ranks until they close (one thread per grid group when
    the tunnel has several); over OASIS it runs ``niter`` iterations at dates ``int(it * step)``.
    The router is called once per date where at least one exchange is due (Eophis also calls
    it, with every input None, at the other iterations); ``eophis.out`` gets Eophis'
    per-iteration lines for those calls."""
    def assembler(router=None):
        def base_loop(*args, **kwargs):
            logs.info("\n-------------------- RUN LOOP ----------------------")
            logs.info(f"Number of iterations : {niter}")
            logs.info(f"Time step : {step}s -- {datetime.timedelta(seconds=step)}")
            logs.info(f"Total Time : {niter * step}s -- "
                      f"{datetime.timedelta(seconds=niter * step)} \n")
            if not callable(router):
                logs.abort("No Router defined")
            if not isinstance(geo_model, EophisTunnel):
                logs.abort(f"all_in_all_out: geo_model must be a registered tunnel, got "
                           f"{type(geo_model).__name__}")
            if not _Registry.opened:
                logs.abort("all_in_all_out: open_tunnels() first")
            if not tunnels_ready():
                logs.abort("Static variables must be exchanged before starting any loop")
            if geo_model.transport == "oasis":
                run_oasis_loop(geo_model, router, step, niter)
            else:
                geo_model.joint_router(router, step, "threads")
                serve_in_threads(geo_model.tunnels)
            logs.info(f"Router called {geo_model.calls} times")
            logs.info("------------------- END OF LOOP -------------------")
        return base_loop
    return assembler


def run_oasis_loop(geo_model: EophisTunnel, router, step, niter) -> None:
    """The OASIS loop: ``niter`` iterations at dates ``int(it * step)``; at each, the first due
    grid group is stepped and steps the others (:class:`JointRouter`, ``nested``). Any error
    ends the whole MPI job (the model's OASIS component would wait forever)."""
    from ..oasis import engine as oasis_worker
    engines = [t.engine for t in geo_model.tunnels]  # attached by open_session

    def advance(g: int, date: int) -> None:
        engines[g].step(date)

    joint = geo_model.joint_router(router, step, "nested", advance)
    for it in range(int(niter)):
        date = int(step * it)
        due = joint.due_groups(date)
        if due:
            oasis_worker.guarded(engines[due[0]].rank, lambda g=due[0], d=date: advance(g, d))


def reset() -> None:
    """Back to the state of a fresh import: no tunnel, production mode, transport from the
    environment, logs forgotten (for tests and notebooks)."""
    if _Registry.session is not None:
        from ..oasis import engine as oasis_worker
        oasis_worker.close_session()
    _Registry.tunnels, _Registry.opened, _Registry.session = [], False, None
    _Registry.transport = None
    set_mode("prod")
    logs.reset()
