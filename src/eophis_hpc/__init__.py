"""eophis_hpc: parallel ML inference workers coupled to ocean models.

The pure core (grids, decompositions, plans, kernels) imports no MPI; the runtime imports mpi4py
only when a coupled run starts.
"""
from .version import __version__
from .client import Coupler, connect
from .decomposition import Box, Decomposition
from .grid import Grid
from .plan import Plan
from .protocol.schedule import Exchange
from .errors import CouplingError, install_exit_guard
from .tunnel import Tunnel

install_exit_guard()  # under mpiexec only: a program that ends before coupling ends the job


__all__ = ["Box", "Coupler", "CouplingError", "Decomposition", "Exchange", "Grid", "Plan", "Tunnel",
           "connect", "__version__"]
