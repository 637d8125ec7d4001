"""Sizing a coupled job before it runs (``eophis-hpc plan``): traffic, memory and predicted
exchange time from the plan and a machine description, node-aware tile placement, and the
calibration of the cost model on this machine.

- :mod:`.machine`: the machine description (JSON/TOML file, built-in examples);
- :mod:`.traffic`: every message of an exchange, per rank, per node, across the network;
- :mod:`.cost`: predicted time of each step of an exchange, per strategy, and of a model step at
  lag 0 and lag 1;
- :mod:`.memory`: bytes per worker and per model rank;
- :mod:`.placement`: tiles to workers so that bytes stay on a node (used by the runtime too);
- :mod:`.job` and :mod:`.report`: a job, a sweep of worker counts, the plateau, text/JSON/PNG;
- :mod:`.calibrate` and :mod:`.validate`: the machine's figures measured here, and the model's
  predictions against measured round trips.
"""
