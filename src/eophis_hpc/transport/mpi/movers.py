"""Sender and Receiver: one field's runs to or from several peers, through a registered
strategy (:mod:`.strategies`), with every wait bounded by the timeout and naming the peers that
did not answer."""
from __future__ import annotations

from ... import kernels
from ...protocol.wire import Route
from .strategies import STRATEGIES, FieldMove, check_name
from .waits import mpi, wait_all


class _Mover:
    def __init__(self, comm, routes: list, nz: int, dtype, tag: int, strategy: str, send: bool,
                 backend=None, timeout: float | None = None, name: str = "",
                 peer_label: str = "rank", alloc=None, mpi_buf=None, sync=None, fills=None,
                 fill: float = 0.0, sign: float = 1.0, shared=None, chunk: int | None = None,
                 peer_base: int = 0):
        check_name(strategy, name or "transport")
        self.names = [r.peer for r in routes]  # the peers' ranks on their side, for messages
        if peer_base:  # ``comm`` holds both sides: the peer's rank there
            routes = [Route(r.peer + peer_base, r.parts) for r in routes]
        self.move = FieldMove(comm, routes, nz, dtype, tag, kernels.get(backend), alloc=alloc,
                              mpi_buf=mpi_buf, sync=sync, fills=fills or {}, fill_value=fill,
                              sign=sign, timeout=timeout, what=name or "transport",
                              peer_label=peer_label, shared=shared, chunk=chunk,
                              peer_base=peer_base)
        self.routes, self.nz, self.dtype = routes, nz, self.move.dtype
        self.timeout, self.name, self.peer_label = timeout, name, peer_label
        self.strategy = strategy
        self.path = STRATEGIES[strategy](self.move, send)
        self.in_place = self.path.in_place
        self.reads_late = self.path.reads_late
        self.bytes = self.move.cells * nz * self.dtype.itemsize
        self.requests = []

    def _wait(self) -> None:
        self._wait_for(self.requests)
        self.requests = []

    def _wait_for(self, requests: list) -> None:
        """Complete ``requests`` (one per route, in route order), bounded by the timeout."""
        wait_all(requests, self.timeout, self.name, self.names, self.peer_label)


class Sender(_Mover):
    """Sends one field's runs of a 4-D target (``target[k]``: a 3-D tile or box) to several
    peers with ``strategy`` (a name of the registry)."""

    def __init__(self, comm, routes, nz, dtype, tag, strategy, **options):
        super().__init__(comm, routes, nz, dtype, tag, strategy, True, **options)

    def start(self, target, offset: tuple[int, int] = (0, 0)) -> None:
        """Start sending from ``target`` (n, nz, ny, nx); ``offset`` shifts every run."""
        self.wait()
        self.requests = self.path.start_send(target, offset)

    def wait(self) -> None:
        if self.requests:
            self._wait()
            self.path.sent()

    def reusable(self) -> None:
        """Return once the memory of the last send may be written again."""
        self.wait()
        self.path.reusable()

    def close(self) -> None:
        self.wait()
        self.path.close()


class Receiver(_Mover):
    """Receives one field's runs from several peers into a 4-D target with ``strategy``; the
    ``fills`` rects (per target index) take the fill value; folded runs get their sign."""

    def __init__(self, comm, routes, nz, dtype, tag, strategy, **options):
        super().__init__(comm, routes, nz, dtype, tag, strategy, False, **options)

    def post(self, target=None, offset: tuple[int, int] = (0, 0)) -> None:
        """Post the receives (``target`` is needed now only by in-place strategies)."""
        if self.requests:
            raise RuntimeError("Receiver.post: the previous receive was not completed")
        self.requests = self.path.post_recv(target, offset)

    def bind(self, target, offset: tuple[int, int] = (0, 0)) -> None:
        """Receive into ``target`` again and again (the worker's batch, kept alive)."""
        self.path.bind_recv(target, offset)

    def wait(self, target, offset: tuple[int, int] = (0, 0), sign: float = 1.0) -> None:
        """Complete the receives and leave the field in ``target``."""
        if not self.requests and self.routes:
            raise RuntimeError("Receiver.wait: nothing was posted")
        self.path.complete_recv(self.requests, self._wait_for, target, offset, sign)
        self.requests = []

    def cancel(self) -> None:
        """Cancel posted receives (at the end of a run, when no more data will come)."""
        for req in self.requests:
            req.Cancel()
        if self.requests:
            mpi().Request.Waitall(self.requests)
        self.requests = []

    def close(self) -> None:
        self.cancel()
        self.path.close()
