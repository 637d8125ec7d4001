"""Coupling restarts of lagged exchanges (pure: files and arrays, no MPI).

A run with ``Exchange(lag=L)`` ends with results in flight: the outputs its model ranks would
``get`` at the next ``L`` occurrences. ``close(restart=PREFIX)`` (Python) or
``eh_finalize(restart=PREFIX)`` (Fortran) writes them, one file per model rank, and the next run
starts from them (``connect(..., restart=PREFIX)``, ``eh_restart(PREFIX)``), so that a run split
in two gives the same results as the uninterrupted run, bit for bit. Both clients read and write
the same files.

File of model rank ``r``: ``PREFIX_rRRRR.ehr`` (``RRRR`` the rank on four digits or more).
Format, little-endian, no padding (version 1)::

    8 bytes   b"EHRESTRT"
    int64     format version (1)
    int64 x6  grid: nx, ny, east_west, south, north, pivot (codes: closed 0, cyclic 1, fold 2;
              pivot T 0, F 1)
    int64 x4  the rank's box: j0, j1, i0, i1 (0-based, half-open)
    int64     number of records
    per record (one per output field of a lagged exchange, in the tunnel's field order):
      64 bytes  field name, ASCII, padded with blanks
      int64 x3  lag L, levels, itemsize (4: float32, 8: float64)
      int64 xL  the step whose inputs produced each value, oldest first (-1: the initial value)
      values    L x levels x nj x ni IEEE floats of itemsize bytes, C order (value, level, j, i),
                i.e. a Fortran array (ni, nj, levels, L); the oldest value is returned first

Reading checks everything against the running job and names the file and the first difference
(grid, box, field, levels, dtype, lag), or says that the file is missing or truncated.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import CouplingError

MAGIC = b"EHRESTRT"
FORMAT_VERSION = 1
NAME_BYTES = 64
NO_STEP = -1  # the step recorded for an initial value
EDGE_CODES = {"closed": 0, "cyclic": 1, "fold": 2}
PIVOT_CODES = {"T": 0, "F": 1}
GRID_WORDS = ("nx", "ny", "east_west", "south", "north", "pivot")
BOX_WORDS = ("j0", "j1", "i0", "i1")


class RestartError(CouplingError):
    """A coupling restart that is missing, truncated or does not match the run."""


@dataclass
class Record:
    """What ``get`` of output ``name`` returns at the next ``lag`` occurrences, oldest first:
    ``values`` ``(lag, levels, nj, ni)``, ``steps`` the step that produced each one."""

    name: str
    values: np.ndarray
    steps: np.ndarray

    @property
    def lag(self) -> int:
        return int(self.values.shape[0])


def file_for(prefix, rank: int) -> str:
    """The restart file of model rank ``rank`` for ``prefix`` (a path without extension)."""
    return f"{os.fspath(prefix)}_r{rank:04d}.ehr"


def grid_words(grid) -> list[int]:
    """The grid as the six integers of the header (pivot 0 unless the north edge folds)."""
    pivot = PIVOT_CODES[grid.pivot] if grid.north == "fold" else 0
    return [grid.nx, grid.ny, EDGE_CODES[grid.east_west], EDGE_CODES[grid.south],
            EDGE_CODES[grid.north], pivot]


def write(path: str, grid, box, records: list[Record]) -> None:
    """Write ``records`` for the rank owning ``box`` (written to a temporary file first, so an
    interrupted write never leaves a truncated restart under the final name)."""
    head = np.array([FORMAT_VERSION] + grid_words(grid) + [box.j0, box.j1, box.i0, box.i1,
                    len(records)], dtype="<i8")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(MAGIC)
        fh.write(head.tobytes())
        for rec in records:
            name = rec.name.encode("ascii")
            if len(name) > NAME_BYTES:
                raise ValueError(f"restart: field name {rec.name!r} is longer than {NAME_BYTES}")
            values = np.asarray(rec.values)
            itemsize = values.dtype.itemsize
            fh.write(name.ljust(NAME_BYTES, b" "))
            fh.write(np.array([rec.lag, values.shape[1], itemsize], dtype="<i8").tobytes())
            fh.write(np.asarray(rec.steps, dtype="<i8").tobytes())
            fh.write(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())
    os.replace(tmp, path)


class _Reader:
    def __init__(self, path: str, data: bytes):
        self.path, self.data, self.pos = path, data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise RestartError(f"coupling restart {self.path}: truncated ({len(self.data)} bytes, "
                               f"{what} needs bytes {self.pos}..{self.pos + n})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def ints(self, n: int, what: str) -> list[int]:
        return [int(v) for v in np.frombuffer(self.take(8 * n, what), dtype="<i8")]


def read(path: str, grid, box, wanted: dict) -> dict[str, Record]:
    """The records of ``path`` for the rank owning ``box`` of ``grid``; ``wanted`` is
    ``{name: (lag, levels, dtype)}`` for every output of a lagged exchange. Any difference is a
    :class:`RestartError` naming the file and what differs."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise RestartError(f"coupling restart {path}: no such file (written by close(restart=...) "
                           "or eh_finalize(restart=...) of the previous run)") from None
    except OSError as exc:
        raise RestartError(f"coupling restart {path}: cannot read it ({exc})") from None
    rd = _Reader(path, data)
    if rd.take(len(MAGIC), "the magic bytes") != MAGIC:
        raise RestartError(f"coupling restart {path}: not an eophis_hpc coupling restart (it does "
                           f"not start with {MAGIC.decode()})")
    version = rd.ints(1, "the version")[0]
    if version != FORMAT_VERSION:
        raise RestartError(f"coupling restart {path}: format version {version}, this eophis_hpc "
                           f"reads version {FORMAT_VERSION}")
    theirs = rd.ints(6, "the grid")
    for key, got, want in zip(GRID_WORDS, theirs, grid_words(grid)):
        if got != want:
            raise RestartError(f"coupling restart {path}: grid {key}={_word(key, got)} in the file, "
                               f"{_word(key, want)} in this run")
    got_box = rd.ints(4, "the box")
    want_box = [box.j0, box.j1, box.i0, box.i1]
    if got_box != want_box:
        raise RestartError(f"coupling restart {path}: written for the box (j0, j1, i0, i1) = "
                           f"{tuple(got_box)}, this rank owns {tuple(want_box)} (same model "
                           "decomposition and rank order needed)")
    n_records = rd.ints(1, "the number of records")[0]
    nj, ni = box.j1 - box.j0, box.i1 - box.i0
    out: dict[str, Record] = {}
    for _ in range(max(n_records, 0)):
        name = rd.take(NAME_BYTES, "a field name").decode("ascii", "replace").rstrip()
        lag, levels, itemsize = rd.ints(3, f"the header of field {name!r}")
        if name not in wanted:
            lagged = ", ".join(sorted(wanted)) or "none"
            raise RestartError(f"coupling restart {path}: field {name!r} is not an output of a "
                               f"lagged exchange in this run (those are: {lagged})")
        w_lag, w_levels, w_dtype = wanted[name]
        w_itemsize = np.dtype(w_dtype).itemsize
        for key, got, want in (("lag", lag, w_lag), ("levels", levels, w_levels),
                               ("dtype", _dtype_name(itemsize), str(np.dtype(w_dtype)))):
            if got != want:
                raise RestartError(f"coupling restart {path}: field {name!r} has {key}={got} in "
                                   f"the file, {key}={want} in this run")
        steps = np.array(rd.ints(lag, f"the steps of field {name!r}"), dtype=np.int64)
        dtype = np.dtype(f"<f{w_itemsize}")
        count = lag * levels * nj * ni
        raw = rd.take(count * w_itemsize, f"the values of field {name!r}")
        values = np.frombuffer(raw, dtype=dtype).astype(w_dtype).reshape(lag, levels, nj, ni)
        out[name] = Record(name, values, steps)
    if rd.pos != len(data):
        raise RestartError(f"coupling restart {path}: {len(data) - rd.pos} bytes after the last "
                           "record (not written by eophis_hpc, or written for another run)")
    missing = sorted(set(wanted) - set(out))
    if missing:
        raise RestartError(f"coupling restart {path}: no record for field {missing[0]!r} (an "
                           "output of a lagged exchange in this run)")
    return out


def _word(key: str, value: int) -> str:
    if key in ("east_west", "south", "north"):
        names = {v: k for k, v in EDGE_CODES.items()}
        return repr(names.get(value, value))
    if key == "pivot":
        return repr({v: k for k, v in PIVOT_CODES.items()}.get(value, value))
    return str(value)


def _dtype_name(itemsize: int) -> str:
    return {4: "float32", 8: "float64"}.get(itemsize, f"{itemsize}-byte floats")
