"""Registry of pack/unpack/fill kernel backends (layer 4).

A backend is picked by explicit argument, else the ``EOPHIS_HPC_BACKEND`` environment variable,
else the first available of :data:`ORDER` (fastest first). Every backend has the same four
functions; ``numpy`` is the reference the others are tested against. Kernels never call MPI.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

ORDER = ("cython", "numba", "numpy")
ENV_VAR = "EOPHIS_HPC_BACKEND"

_MODULES = {
    "cython": "eophis_hpc._ext._copy_kernels",
    "numba": "eophis_hpc.kernels.numba_backend",
    "numpy": "eophis_hpc.kernels.numpy_ref",
}


@dataclass(frozen=True)
class Backend:
    """One kernel family: ``pack(src, runs, buf)``, ``unpack(buf, dst, runs, sign)``,
    ``fill(dst, rects, value)``, and for host memory ``copy(src, dst, blocks, sign, stream)``
    (block to block in one pass; None for device backends, whose buffers never take it)."""

    name: str
    pack: Callable
    unpack: Callable
    fill: Callable
    copy: Callable | None = None


_loaded: dict[str, Backend] = {}
_errors: dict[str, str] = {}


def _load(name: str) -> Backend | None:
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        return None
    try:
        mod = importlib.import_module(_MODULES[name])
    except ImportError as exc:  # e.g. numba missing, or the package was not compiled
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _loaded[name] = Backend(name, mod.pack, mod.unpack, mod.fill, mod.copy)
    return _loaded[name]


def available() -> dict[str, str]:
    """``{name: 'ok' or why not}`` for every known backend."""
    return {name: "ok" if _load(name) else _errors[name] for name in ORDER}


def get(name: str | None = None) -> Backend:
    """The backend ``name``, else ``$EOPHIS_HPC_BACKEND``, else the fastest available one."""
    if isinstance(name, Backend):
        return name
    source = "backend"
    if name is None:
        name = os.environ.get(ENV_VAR) or None
        source = ENV_VAR
    if name is None:
        for cand in ORDER:
            backend = _load(cand)
            if backend is not None:
                return backend
        raise RuntimeError("no kernel backend could be loaded: " + "; ".join(_errors.values()))
    if name not in _MODULES:
        raise ValueError(f"{source}={name!r} is not a kernel backend; choose one of "
                         f"{', '.join(map(repr, ORDER))}")
    backend = _load(name)
    if backend is None:
        raise RuntimeError(f"kernel backend {name!r} is not available here ({_errors[name]})")
    return backend

