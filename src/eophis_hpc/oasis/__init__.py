"""Everything OASIS3-MCT: the pyoasis wrapper (:mod:`.component`), the worker's partitions and
the reorder runs (:mod:`.partition`), the namcouple (:mod:`.namcouple`) and the engine that
serves a tunnel over OASIS (:mod:`.engine`). pyoasis is imported only when a component starts."""
