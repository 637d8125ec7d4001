"""Cross-memory reads (Linux ``process_vm_readv``): a rank copies rows straight out of another
process's memory into its own, one copy with no shared buffer in between. MPI libraries move
large messages between ranks of a node this way; the ``shm`` strategy uses it where the data
sits in a process's private memory on both ends (a worker's output, a model rank's ``get``
target). It needs permission to read the other process (same user; where Yama restricts
ptrace, the owner allows it with :func:`allow_readers`), so :func:`probe` tries it first.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

IOV_MAX = 1024          # iovecs per call (the Linux limit)
IOVEC = np.dtype([("base", np.uint64), ("len", np.uint64)])
DISABLE_ENV = "EOPHIS_HPC_SHM_DIRECT"   # "0": never read another process (stage instead)
_PR_SET_PTRACER = 0x59616D61
_PR_SET_PTRACER_ANY = ctypes.c_ulong(-1).value

_libc = None


def _lib():
    """libc with ``process_vm_readv`` and ``prctl`` declared, or None off Linux."""
    global _libc
    if _libc is None:
        if not sys.platform.startswith("linux") or os.environ.get(DISABLE_ENV) == "0":
            _libc = False
        else:
            try:
                lib = ctypes.CDLL(None, use_errno=True)
                fn = lib.process_vm_readv
            except (OSError, AttributeError):
                _libc = False
            else:
                fn.restype = ctypes.c_ssize_t
                fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                               ctypes.c_ulong, ctypes.c_ulong]
                lib.prctl.restype = ctypes.c_int
                lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                                      ctypes.c_ulong, ctypes.c_ulong]
                _libc = lib
    return _libc or None


def allow_readers() -> None:
    """Let other processes of this user read this one where Yama restricts ptrace to
    descendants (harmless, and ignored, where it does not)."""
    lib = _lib()
    if lib is not None:
        lib.prctl(_PR_SET_PTRACER, _PR_SET_PTRACER_ANY, 0, 0, 0)


def probe(pid: int, address: int, expect: int) -> bool:
    """Whether this process can read ``pid``'s memory: the int64 at ``address`` must read back
    as ``expect``."""
    lib = _lib()
    if lib is None or pid == os.getpid():
        return False
    got = np.zeros(1, dtype=np.int64)
    local = np.array([(got.ctypes.data, 8)], dtype=IOVEC)
    remote = np.array([(address, 8)], dtype=IOVEC)
    n = lib.process_vm_readv(pid, local.ctypes.data, 1, remote.ctypes.data, 1, 0)
    return n == 8 and int(got[0]) == expect


def read(pid: int, remote: np.ndarray, local: np.ndarray, nbytes: np.ndarray, what: str) -> None:
    """Copy ``nbytes[r]`` bytes from address ``remote[r]`` of process ``pid`` to ``local[r]`` of
    this one, for every row ``r``; an OSError naming ``what`` if any byte could not be read
    (the process ended, or the addresses are not its memory)."""
    lib = _lib()
    if lib is None:
        raise OSError(f"{what}: cross-memory reads are not available here")
    n = len(nbytes)
    loc = np.empty(min(n, IOV_MAX), dtype=IOVEC)
    rem = np.empty(min(n, IOV_MAX), dtype=IOVEC)
    for a in range(0, n, IOV_MAX):
        b = min(n, a + IOV_MAX)
        m = b - a
        loc["base"][:m] = local[a:b]
        loc["len"][:m] = nbytes[a:b]
        rem["base"][:m] = remote[a:b]
        rem["len"][:m] = nbytes[a:b]
        want = int(nbytes[a:b].sum())
        got = lib.process_vm_readv(pid, loc.ctypes.data, m, rem.ctypes.data, m, 0)
        if got != want:
            err = ctypes.get_errno() if got < 0 else 0
            raise OSError(err, f"{what}: read {max(got, 0)} of {want} bytes from process {pid}"
                          + (f" ({os.strerror(err)})" if err else ""))
