"""The ``eophis-hpc demo`` main job: a NumPy slab-ocean model on several MPI ranks coupled to
inference workers running a GZ21-shaped CNN, checked against the same run in one process."""
