"""Transports (layer 5): they move contiguous buffers or datatype-described views between ranks.

``mpi`` (mpi4py, MPMD with an intercommunicator) is the default. Transports know nothing about
grids: they see arrays, runs of cells inside them, peers and tags. mpi4py is imported lazily.
"""
