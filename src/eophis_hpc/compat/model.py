"""The model side of Eophis tunnels over the MPI transport, in Python: ``model_side(configs,
box)`` connects to every eophis_hpc tunnel the workers open for ``configs`` (one per grid group of
each Eophis tunnel, in the same order), then ``put``/``get`` by field name at dates in seconds.

Over OASIS the model side is the model's own OASIS code (NEMO's ``cpl_oasis3``) and none of this is
needed; over MPI a Python model (a test, a toy model) uses this, a Fortran model the Fortran client
(one ``connect`` per grid group, in the order :func:`group_grids` gives).
"""
from __future__ import annotations

from ..client import connect
from .groups import grid_groups
from .tunnels import grid_from_dict


def group_grids(configs) -> list:
    """``[(label, GridGroup)]`` for Eophis tunnel dictionaries, in the order the workers open
    their eophis_hpc tunnels (and the model side must connect)."""
    if isinstance(configs, dict):
        configs = [configs]
    out = []
    for cfg in configs:
        grids = {name: grid_from_dict(name, info) for name, info in cfg["grids"].items()}
        for group in grid_groups(grids, cfg["exchs"]):
            out.append((str(cfg["label"]), group))
    return out


class ModelSide:
    """One model rank's connections to the workers of Eophis tunnels (see :func:`model_side`)."""

    def __init__(self, configs, box, **options):
        self.couplers = []
        self.where: dict[str, object] = {}
        for label, group in group_grids(configs):
            gbox = box.get(group.grid_names[0]) if isinstance(box, dict) else box
            if gbox is None:
                raise KeyError(f"model_side: no box for grid {group.grid_names[0]!r} of tunnel "
                               f"{label} (box is a dict of grid names)")
            cpl = connect(group.grid, gbox, **options)
            self.couplers.append(cpl)
            cfg = next(c for c in ([configs] if isinstance(configs, dict) else configs)
                       if str(c["label"]) == label)
            for k in group.exchanges:
                ex = cfg["exchs"][k]
                for name in list(ex.get("in") or []) + list(ex.get("out") or []):
                    self.where[name] = cpl

    def _coupler(self, name: str):
        if name not in self.where:
            raise KeyError(f"model_side: no field {name!r} in the tunnels ({sorted(self.where)})")
        return self.where[name]

    def put(self, name: str, array, date: int) -> bool:
        """Send ``name``'s block at ``date`` (seconds) when its exchange is due."""
        return self._coupler(name).put(name, array, date)

    def get(self, name: str, date: int, out=None):
        """The workers' result for ``name`` at ``date`` (None when not due)."""
        return self._coupler(name).get(name, date, out=out)

    def close(self) -> None:
        for cpl in self.couplers:
            cpl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def model_side(configs, box, **options) -> ModelSide:
    """Connect this model rank (owning ``box``, or ``{grid name: box}`` when the grids differ in
    size) to the workers serving the Eophis tunnel dictionaries ``configs``. ``options`` go to
    :func:`eophis_hpc.connect`. Collective over all model ranks."""
    return ModelSide(configs, box, **options)
