"""The engine interface: what serves a tunnel's declaration over one transport. A tunnel
(:class:`eophis_hpc.Tunnel`) holds the declaration only; its engine joins the job, receives
static fields, serves the model ranks step after step and closes. Engines are looked up by
transport name and imported only when used (the MPI engine needs mpi4py, the OASIS engine
pyoasis)."""
from __future__ import annotations

import importlib

ENGINES = {
    "mpi": ("eophis_hpc.runtime.mpi_engine", "MpiEngine"),
    "oasis": ("eophis_hpc.oasis.engine", "OasisEngine"),
}


def names() -> tuple[str, ...]:
    """The transports a tunnel accepts."""
    return tuple(ENGINES)


def engine_class(transport: str):
    """The engine class of ``transport`` (imported now)."""
    if transport not in ENGINES:
        raise ValueError(f"Tunnel: transport={transport!r} is not one of {names()}")
    module, name = ENGINES[transport]
    return getattr(importlib.import_module(module), name)


class Engine:
    """Serves one tunnel. ``open`` joins the coupled job (idempotent); ``receive_static``
    returns a static field's batch as the model sees it; ``serve`` runs the exchanges (until
    the model ranks close, or ``steps``) and returns the timings summary; ``describe`` says
    what was chosen (staging, strategies). After ``open``: ``rank`` (this worker), ``layout``
    (tiles and their owners, or None where the transport has none), ``static`` (received static
    batches on the host), ``timings``."""

    def __init__(self, tunnel):
        self.tunnel = tunnel
        self.timings = tunnel.timings
        self.static: dict = {}
        self.layout = None
        self.rank = None

    def open(self) -> None:
        raise NotImplementedError

    def receive_static(self, name: str):
        raise NotImplementedError

    def serve(self, steps: int | None) -> dict:
        raise NotImplementedError

    def describe(self) -> str:
        return ""
