"""What this machine can measure, for ``eophis-hpc tune``, ``eophis-hpc bench`` and the cost
model's calibration (``eophis-hpc plan --calibrate``):

- :mod:`.copyjobs`: the pack and unpack work of one rank of a plan, with ``numpy.copyto`` of the
  same bytes as the baseline, and the timing helpers (``sample_times``, ``median_time``);
- :mod:`.jobs`: running the MPI probes below as jobs of their own, with a hard time limit
  (``run_roundtrip``, ``run_pingpong``), and the load other processes put on the machine;
- :mod:`.roundtrip` and :mod:`.pingpong`: the MPI programs (a coupled round trip next to raw MPI
  of the same bytes; a two-rank ping-pong).
"""
