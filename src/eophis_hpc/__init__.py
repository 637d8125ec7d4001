"""eophis_hpc: parallel ML inference workers coupled to ocean models.

The pure core (grids, decompositions, plans, kernels) imports no MPI; the runtime imports mpi4py
only when a coupled run starts.
"""
from .decomposition import Box, Decomposition
from .grid import Grid
from .plan import Plan

__version__ = "0.1.0"

__all__ = ["Box", "Decomposition", "Grid", "Plan", "__version__"]
