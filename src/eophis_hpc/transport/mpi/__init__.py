"""MPI transport (mpi4py, imported only when a coupled run starts): the join of the model and
worker ranks (:mod:`.join`), the handshake over MPI (:mod:`.handshake`), and the movers of one
field's runs (:mod:`.movers`) through the strategies of the registry (:mod:`.strategies`)."""
from .join import Link
from .movers import Receiver, Sender
from . import pipelined, shared  # noqa: F401  (register their strategies)
from .strategies import STRATEGIES, names as strategy_names
from .waits import mpi, wait_all

__all__ = ["Link", "Receiver", "STRATEGIES", "Sender", "mpi", "strategy_names", "wait_all"]
