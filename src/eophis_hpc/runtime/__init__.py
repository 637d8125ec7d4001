"""The worker runtime (layer 7): the engine interface, the MPI engine, the model invoker, timings."""
