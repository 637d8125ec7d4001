"""Calling the user's model (layer 7), the same way on every engine: the model registry, the
model's arguments (inputs or stacked groups, static fields, ``tiles``, ``step``), the call
through the worker's :class:`~eophis_hpc.staging.Feed` (device, chunks, stack, land), and the
checks of what comes back (names, shape, dtype, halo offset, finiteness)."""
from __future__ import annotations

import inspect

from .. import checks
from .. import device as devmod
from ..errors import CouplingError


class ModelRegistry:
    """The models of a tunnel: one per exchange (or one for all, key None), or a router called
    once per step with every input (Eophis' ``@all_in_all_out``)."""

    def __init__(self):
        self.models: dict = {}
        self.router = None

    def add_model(self, fn, exchange: int | None) -> None:
        if not callable(fn):
            raise TypeError(f"Tunnel.model: {fn!r} is not callable")
        self.models[exchange] = fn

    def add_router(self, fn) -> None:
        if not callable(fn):
            raise TypeError(f"Tunnel.router: {fn!r} is not callable")
        if self.models:
            raise ValueError("Tunnel.router: a per-exchange @tunnel.model is already registered")
        self.router = fn

    def model_for(self, e: int, exchanges) -> object:
        fn = self.models.get(e) or self.models.get(None)
        if fn is None:
            raise CouplingError(f"no model registered for exchange {e} "
                                f"({', '.join(exchanges[e].inputs)}): use @tunnel.model")
        return fn


class Invoker:
    """Calls the model of a group of due exchanges on one worker's batches and returns, per
    output, what the senders read (``(target, offset)``), checked.

    ``schedule`` and ``registry`` come from the tunnel's declaration; ``feed`` holds the
    batches; ``boxes`` are the own boxes of the worker's tiles (finiteness is checked there)."""

    def __init__(self, schedule, registry: ModelRegistry, feed, boxes, tiles,
                 check_finite: bool = False):
        self.schedule, self.registry, self.feed = schedule, registry, feed
        self.boxes, self.tiles, self.finite = list(boxes), list(tiles), check_finite
        self.signatures: dict = {}  # model or router -> (parameter names, takes **kwargs)

    @property
    def exchanges(self):
        return self.schedule.exchanges

    def keywords(self, group: list[int]) -> list[str]:
        """The model keywords (fields or stacked groups) of the inputs of ``group``."""
        return list(dict.fromkeys(self.feed.where[spec.name][0] for e in group
                                  for spec in self.schedule.inputs_of(e)))

    def due_inputs(self, group: list[int]) -> list:
        return [spec for e in group for spec in self.schedule.inputs_of(e)]

    def outputs(self, group: list[int]) -> list:
        return [spec for e in group for spec in self.schedule.outputs_of(e)]

    def call(self, group: list[int], step: int) -> dict:
        """Call the model (router, or the model of ``group[0]``) over the feed's chunks; returns
        ``{output: (target, offset)}``, checked."""
        specs = self.outputs(group)
        static = self.exchanges[group[0]].static
        if self.registry.router is not None and not static:
            call, keywords = self._router_call(group, step), self.keywords(group)
        else:
            call, keywords = self._model_call(group[0], step), self.keywords(group[:1])
        targets = self.feed.run(keywords, call, specs)
        if self.finite:
            for spec in specs:
                self.check_finite(spec.name, *targets[spec.name])
        return targets

    # ------------------------------------------------------------------ arguments
    def _signature(self, fn) -> tuple:
        """``(parameter names, takes **kwargs)`` of ``fn``, read once (not per call)."""
        sig = self.signatures.get(fn)
        if sig is None:
            params = inspect.signature(fn).parameters
            sig = (frozenset(params), any(p.kind == p.VAR_KEYWORD for p in params.values()))
            self.signatures[fn] = sig
        return sig

    def _extras(self, fn, kwargs: dict, r0: int, r1: int, step: int, every_static: bool) -> dict:
        """Static fields (rows ``r0:r1``), ``tiles`` (their global indices) and ``step`` for
        the parameters ``fn`` names (every static field when ``every_static``)."""
        params, takes_all = self._signature(fn)
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
        fn = self.registry.model_for(e, self.exchanges)

        def call(kwargs, r0, r1):
            kwargs = self._extras(fn, dict(kwargs), r0, r1, step, every_static=False)
            return self.named_outputs(e, fn(**kwargs))
        return call

    def _router_call(self, group: list[int], step: int):
        """``call(kwargs, r0, r1)`` for the router: every non-static input keyword of the
        tunnel (None when not due) and every static field."""
        router = self.registry.router
        every = self.keywords([x for x, ex in enumerate(self.exchanges) if not ex.static])

        def call(kwargs, r0, r1):
            kwargs = {kw: kwargs.get(kw) for kw in every}
            kwargs = self._extras(router, kwargs, r0, r1, step, every_static=True)
            return self.router_outputs(group, step, router(**kwargs))
        return call

    # ------------------------------------------------------------------ results
    def router_outputs(self, group: list[int], step: int, result) -> dict:
        """The router's result: every due output present, no unknown name."""
        if not isinstance(result, dict):
            raise CouplingError(f"the router must return a dict of outputs, got "
                                f"{type(result).__name__}")
        wanted = [spec.name for spec in self.outputs(group)]
        missing = [n for n in wanted if result.get(n) is None]
        unknown = [n for n in result if n not in self.schedule.fields
                   or self.schedule.fields[n].direction != "out"]
        if missing or unknown:
            raise CouplingError(f"the router returned {sorted(result)} at step {step}: missing "
                                f"due outputs {missing}, unknown outputs {unknown}")
        return result

    def named_outputs(self, e: int, result) -> dict:
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

    def check_finite(self, name: str, target, offset) -> None:
        """Refuse NaN/Inf in the tiles' own boxes (``target[k]``: tile ``k`` of the output, on
        the host or the device), naming the first by its global index."""
        for k, (d, box) in enumerate(zip(self.tiles, self.boxes)):
            tile = devmod.host_view(target[k], f"output {name!r}")
            own = tile[:, offset[0]:offset[0] + box.j1 - box.j0, offset[1]:offset[1] + box.i1 - box.i0]
            checks.check_finite(f"output {name!r}: the model returned ", own, box, f" (tile {d})")
