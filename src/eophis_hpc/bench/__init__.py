"""Benchmark pieces shipped with the package: copy jobs, MPI round trips, reports (used by `eophis-hpc bench` and `eophis-hpc tune`)."""
