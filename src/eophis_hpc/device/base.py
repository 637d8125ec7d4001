"""What every framework adapter offers, and the NumPy one (host memory only).

An adapter is one framework on one device. Host mode uses ``host_empty``/``wrap_host``/
``host_view``; GPU modes add zeroed device buffers, streams, events, asynchronous copies,
``as_device`` (an output of any framework as this framework's device array, ordered after
its producer) and ``contiguous`` (a device copy of a strided output before it is copied out).
"""
from __future__ import annotations

import numpy as np

from .host import aligned_empty, host_view


class Adapter:
    """The host-side defaults; GPU adapters override the device side."""

    module = "numpy"

    def __init__(self, index: int | None):
        self.index = index  # None: CPU

    # host side ------------------------------------------------------------
    def host_empty(self, shape, dtype, pinned: bool = False) -> np.ndarray:
        """A zeroed host batch (pinned when asked and the framework can)."""
        return aligned_empty(shape, dtype)

    def wrap_host(self, arr: np.ndarray):
        return arr

    def host_view(self, value, where: str) -> np.ndarray:
        return host_view(value, where)

    # device side (GPU adapters) ----------------------------------------------
    def device_empty(self, shape, dtype):
        raise NotImplementedError(f"{type(self).__name__}: no device memory")

    def stream(self):
        raise NotImplementedError(f"{type(self).__name__}: no streams")

    def as_device(self, value):
        return value

    def contiguous(self, value):
        return value

    def kernel_stream(self):
        """The stream the device kernels launch on: the one the model runs on."""
        return 0


class EventStreamAdapter(Adapter):
    """Frameworks whose events record on a stream and whose streams wait on events (torch,
    CuPy): the three calls are the same for both."""

    def record(self, event, stream):
        event.record(stream)

    def wait(self, stream, event):
        stream.wait_event(event)

    def synchronize(self, stream):
        stream.synchronize()


class NumpyAdapter(Adapter):
    module = "numpy"
