"""OASIS3-MCT transport through pyoasis (layer 5): a component, partitions and variables that move
Fortran-ordered ``(points, bundle)`` buffers. No grid logic here: the partitions' segments and the
reorder of the buffers come from :mod:`eophis_hpc.runtime.oasis_partition`.

Written against pyoasis' documented 5.x API (``pyoasis/src/python/pyoasis`` in OASIS3-MCT):
``Component(name, coupled=True, communicator=MPI.COMM_WORLD)`` with ``localcomm`` and
``enddef()``; ``OrangePartition(offsets: list, extents: list, global_size=-1, name="")`` and
``BoxPartition(global_offset, local_extent_x, local_extent_y, global_extent_x, ...)``, whose
arguments must be Python ``list``/``int`` (pyoasis checks the types); ``Var(name, partition,
OASIS.IN | OASIS.OUT, bundle_size=n)``; ``var.put(date, field)`` / ``var.get(date, field)`` with an
integer date in seconds and a float64 or float32 NumPy array whose last axis is the bundle and
whose memory is Fortran-ordered (``pyoasis.asarray`` makes one; the C binding passes the data
pointer to OASIS as is).

pyoasis is imported on first use only: without it, :func:`pyoasis_module` raises an ImportError
saying how to get it. pyoasis is not on PyPI: it is built with OASIS3-MCT from source.
"""
from __future__ import annotations

import numpy as np

INSTALL_HINT = (
    "transport='oasis' needs pyoasis, the Python API of OASIS3-MCT, which is not on PyPI: it is "
    "built with OASIS3-MCT from source (https://gitlab.com/cerfacs/oasis3-mct, 5.0 or later), "
    "as shared libraries, with a system MPI that has a "
    "Fortran compiler (the mpich wheel has none), and mpi4py must load that same MPI library "
    "('eophis-hpc fortran --env mpifort' prints the exports). Step by step, with the usual "
    "traps and their error messages: docs/usage.md, 'Setting up OASIS with a system MPI'. "
    "Use transport='mpi' (the default) to couple without OASIS")


def pyoasis_module():
    """The ``pyoasis`` module, imported now; a clear ImportError when it is not installed."""
    try:
        import pyoasis
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} (import failed: {exc})") from None
    return pyoasis


def available() -> bool:
    """Whether pyoasis can be imported here (imports it)."""
    try:
        pyoasis_module()
    except ImportError:
        return False
    return True


def _direction(pyoasis, direction: str):
    params = getattr(pyoasis, "OASIS", None) or pyoasis.OasisParameters
    if direction == "in":
        return params.IN
    if direction == "out":
        return params.OUT
    raise ValueError(f"OASIS variable direction must be 'in' or 'out', got {direction!r}")


class Component:
    """This process' OASIS component (one per process, shared by every OASIS tunnel).

    ``communicator``: the MPI communicator OASIS splits (default ``MPI.COMM_WORLD``);
    :attr:`localcomm` is the component's own communicator (the workers)."""

    def __init__(self, name: str = "eophis", communicator=None):
        if not isinstance(name, str) or not name:
            raise ValueError(f"OASIS component name must be a non-empty string, got {name!r}")
        self.pyoasis = pyoasis_module()
        from mpi4py import MPI
        self.name = name
        comm = MPI.COMM_WORLD if communicator is None else communicator
        self.comp = self.pyoasis.Component(name, True, comm)
        self.localcomm = self.comp.localcomm
        self.defined = False

    def orange_partition(self, offsets, sizes, global_size: int):
        """An ``OrangePartition`` of segments (0-based offsets of the x-fastest numbering)."""
        offsets = [int(v) for v in np.asarray(offsets).tolist()]
        sizes = [int(v) for v in np.asarray(sizes).tolist()]
        if len(offsets) != len(sizes) or not offsets:
            raise ValueError(f"orange partition: {len(offsets)} offsets for {len(sizes)} sizes")
        return self.pyoasis.OrangePartition(offsets, sizes, int(global_size))

    def box_partition(self, offset: int, nx_loc: int, ny_loc: int, nx_glb: int,
                      global_size: int = -1):
        """A ``BoxPartition``: the box of ``nx_loc x ny_loc`` points whose first point is
        ``offset`` in a grid ``nx_glb`` points wide."""
        return self.pyoasis.BoxPartition(int(offset), int(nx_loc), int(ny_loc), int(nx_glb),
                                         int(global_size))

    def variable(self, name: str, partition, direction: str, bundle: int = 1) -> "Variable":
        if self.defined:
            raise RuntimeError(f"OASIS variable {name!r}: the component's definitions are over "
                               "(enddef was called)")
        return Variable(self, name, partition, direction, bundle)

    def enddef(self) -> None:
        """End the definition phase (collective over every OASIS component)."""
        self.comp.enddef()
        self.defined = True

    def terminate(self) -> None:
        """Finalise OASIS for this component (pyoasis >= 5 has ``Component.terminate``; older
        versions finalise when the component is deleted)."""
        term = getattr(self.comp, "terminate", None)
        if term is not None:
            term()
        self.comp = None


class Variable:
    """One OASIS coupling field of this process: ``get``/``put`` of ``(points, bundle)``
    Fortran-ordered buffers at an integer date in seconds."""

    def __init__(self, component: Component, name: str, partition, direction: str, bundle: int):
        pyoasis = component.pyoasis
        self.name, self.direction, self.bundle = name, direction, int(bundle)
        self.var = pyoasis.Var(name, partition, _direction(pyoasis, direction),
                               bundle_size=self.bundle)

    @property
    def active(self) -> bool:
        """False when the namcouple does not couple this variable."""
        return getattr(self.var, "is_active", True)

    def _check(self, buf: np.ndarray) -> np.ndarray:
        if not isinstance(buf, np.ndarray) or buf.dtype not in (np.float32, np.float64):
            raise TypeError(f"OASIS {self.name}: buffers must be float32/float64 NumPy arrays")
        if buf.ndim != 2 or buf.shape[1] != self.bundle or not buf.flags.f_contiguous:
            raise ValueError(f"OASIS {self.name}: expected a Fortran-ordered (points, "
                             f"{self.bundle}) buffer, got shape {buf.shape}")
        return buf

    def get(self, date: int, buf: np.ndarray):
        """Receive into ``buf`` (what OASIS returns: received or not at this date)."""
        return self.var.get(int(date), self._check(buf))

    def put(self, date: int, buf: np.ndarray):
        return self.var.put(int(date), self._check(buf))

    def periods(self) -> list[int]:
        """The coupling periods (seconds) OASIS read from the namcouple for this variable."""
        try:
            freqs = self.var.cpl_freqs
        except Exception:  # older pyoasis without cpl_freqs, or an uncoupled variable
            return []
        return [int(v) for v in np.asarray(freqs).reshape(-1).tolist()]
