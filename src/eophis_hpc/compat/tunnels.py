"""Eophis' tunnel API over eophis_hpc: dictionaries to :class:`eophis_hpc.Tunnel`, the
namcouple in preproduction, the all-in-all-out loop in production.

An Eophis tunnel dictionary (``label``, ``grids`` ``{name: {npts, halos, bnd, folding}}``,
``exchs`` ``[{freq, grd, lvl, in, out}]``, optional ``geo_aliases``/``py_aliases``) becomes one
``eh.Tunnel`` with one tile per worker. Frequencies stay in seconds: the tunnel's step unit is the
second (``dt=1``, ``every=freq``), so the "step" the model side passes is the date in seconds, as
OASIS dates are; static exchanges stay static. The grids of one tunnel must share their size,
halo and boundary conditions (they may differ in their fold point type, T/U/V/F, which becomes
the exchange's ``point``).

The router receives, for every non-static input, the ``(x, y, z)`` = ``(nx_loc + 2h,
ny_loc + 2h, lvl)`` float64 view ``batch[0].transpose(2, 1, 0)`` of the worker's batch (no copy)
or None when it is not due, and returns ``{output: (x, y, z) array or None}``; an output is sent
back by transposing the view back, without a copy when it is C-ordered ``(z, y, x)`` memory
(which NumPy keeps for arithmetic on the views it got).

Transport: MPI by default (the model side uses :func:`eophis_hpc.connect` and passes dates in
seconds as steps); OASIS with :func:`set_transport` ``("oasis")`` or ``EOPHIS_HPC_TRANSPORT=oasis``.
"""
from __future__ import annotations

import os

import numpy as np

from ..oasis import namcouple as nc
from ..grid import Grid
from ..protocol.schedule import Exchange
from ..errors import CouplingError
from ..tunnel import Tunnel as _EhTunnel
from . import logs

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
    """What ``register_tunnels`` returns: an Eophis tunnel backed by an :class:`eh.Tunnel`
    (``.tunnel``), with Eophis' ``label``, ``receive(name)``, ``arriving_list()``,
    ``departure_list()``."""

    def __init__(self, label, grids, exchs, geo_aliases=None, py_aliases=None, transport="mpi"):
        self.label = str(label)
        self.raw = {"label": self.label, "grids": grids, "exchs": exchs,
                    "geo_aliases": dict(geo_aliases or {}), "py_aliases": dict(py_aliases or {})}
        if not isinstance(grids, dict) or not grids:
            raise ValueError(f"tunnel {label}: 'grids' must be a non-empty dict")
        self.grids = {name: grid_from_dict(name, info) for name, info in grids.items()}
        self.exchs = list(exchs)
        used = []
        for k, ex in enumerate(self.exchs):
            if not isinstance(ex, dict):
                raise ValueError(f"tunnel {label}: exchange {k} must be a dict, got {ex!r}")
            if ex.get("grd") not in self.grids:
                raise ValueError(f"tunnel {label}: exchange {k} uses grid {ex.get('grd')!r}, not "
                                 f"one of {sorted(self.grids)}")
            if ex["grd"] not in used:
                used.append(ex["grd"])
        if not used:
            raise ValueError(f"tunnel {label}: no exchange")
        ref, halo = self.grids[used[0]]
        for name in used[1:]:
            g, h = self.grids[name]
            same = (g.nx, g.ny, g.east_west, g.south, g.north, h) == \
                (ref.nx, ref.ny, ref.east_west, ref.south, ref.north, halo)
            if not same or (g.north == "fold" and g.pivot != ref.pivot):
                raise ValueError(f"tunnel {label}: grids {used[0]!r} and {name!r} differ in size, "
                                 "halo or boundary conditions; eophis_hpc maps a tunnel to one "
                                 "grid (they may differ in their fold point type only): register "
                                 "one tunnel per grid")
        self.grid, self.halo = ref, halo
        exchanges = [exchange_from_dict(ex, self.grids, k) for k, ex in enumerate(self.exchs)]
        self.transport = transport
        self.tunnel = _EhTunnel(ref, halo, exchanges, dt=1, transport=transport,
                                framework="numpy", verbose=False)
        self.static_used = {name: False for ex in self.exchs if ex["freq"] == Freqs.STATIC
                             for name in list(ex.get("in") or []) + list(ex.get("out") or [])}
        self.calls = 0

    def arriving_list(self) -> list[str]:
        return [n for ex in self.exchs if ex["freq"] != Freqs.STATIC for n in ex.get("in") or []]

    def departure_list(self) -> list[str]:
        return [n for ex in self.exchs if ex["freq"] != Freqs.STATIC for n in ex.get("out") or []]

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
        batch = self.tunnel.receive(var_label)
        self.static_used[var_label] = True
        return xyz(batch)

    def wrap_router(self, router):
        """The user's router as an eh.Tunnel router: (x, y, z) views in, batches out."""
        arriving = self.arriving_list()
        outputs = set(self.departure_list())

        def eh_router(**batches):
            inputs = {name: None if batches.get(name) is None else xyz(batches[name])
                      for name in arriving}
            result = router(**inputs)
            if result is None:
                result = {}
            if not isinstance(result, dict):
                raise CouplingError(f"tunnel {self.label}: the router must return a dict, got "
                                    f"{type(result).__name__}")
            out = {}
            for name, value in result.items():
                if name not in outputs:
                    raise CouplingError(f"tunnel {self.label}: the router returned {name!r}, not "
                                        f"an output of the tunnel ({sorted(outputs)})")
                out[name] = None if value is None else from_xyz(value, name)
            self.calls += 1
            return out
        return eh_router


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
        _Registry.session = oasis_worker.open_session(
            [t.tunnel for t in tunnels], component=COMPONENT, labels=[t.label for t in tunnels],
            geo_aliases=[t.raw["geo_aliases"] for t in tunnels],
            py_aliases=[t.raw["py_aliases"] for t in tunnels])
        logs.set_rank(_Registry.session.rank)
    else:
        for t in tunnels:
            t.tunnel.open()
        if tunnels:
            logs.set_rank(tunnels[0].tunnel.rank)
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


def starter(loop_router):
    """Start an assembled loop (``@all_in_all_out``)."""
    return loop_router()


def all_in_all_out(geo_model, step, niter):
    """Eophis' all-in-all-out loop: ``niter`` iterations of ``step`` seconds; at each, every
    input of ``geo_model`` (None when not due) goes to the router, whose outputs go back.

    Over MPI the loop serves the model ranks until they close; over OASIS it runs ``niter``
    iterations at dates ``int(it * step)``. The router is called when at least one exchange is
    due (Eophis also calls it, with every input None, at the other iterations)."""
    def assembler(router=None):
        def base_loop(*args, **kwargs):
            logs.info("\n-------------------- RUN LOOP ----------------------")
            logs.info(f"Number of iterations : {niter}")
            logs.info(f"Time step : {step}s")
            logs.info(f"Total Time : {niter * step}s \n")
            if not callable(router):
                logs.abort("No Router defined")
            if not isinstance(geo_model, EophisTunnel):
                logs.abort(f"all_in_all_out: geo_model must be a registered tunnel, got "
                           f"{type(geo_model).__name__}")
            if not _Registry.opened:
                logs.abort("all_in_all_out: open_tunnels() first")
            if not tunnels_ready():
                logs.abort("Static variables must be exchanged before starting any loop")
            eh_tunnel = geo_model.tunnel
            eh_tunnel.router(geo_model.wrap_router(router))
            if geo_model.transport == "oasis":
                from ..oasis import engine as oasis_worker
                engine = eh_tunnel.engine
                for it in range(int(niter)):
                    oasis_worker.guarded(engine.rank, lambda it=it: engine.step(int(step * it)))
            else:
                eh_tunnel.run()
            logs.info(f"Router called {geo_model.calls} times")
            logs.info("------------------- END OF LOOP -------------------")
        return base_loop
    return assembler


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
