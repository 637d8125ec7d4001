"""Compiled kernels (Cython); see ``eophis_hpc.kernels`` for the Python-facing registry."""
