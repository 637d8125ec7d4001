"""A target machine as the cost model sees it (pure): latencies, bandwidths and per-call costs,
read from a JSON or TOML file, written by ``eophis-hpc plan --calibrate`` or by hand for a
machine we cannot run on.

Units are SI in the file: seconds and bytes per second. Every figure is per MPI rank unless its
name says node. A bandwidth of one message or copy (``SIZED``) is either one number or a table
``[[bytes, bytes_per_s], ...]`` by message size: caches make a 4 MB message several times faster
than a 64 MB one on most machines; between the sizes of the table the bandwidth is interpolated
in log(size), beyond them the nearest entry holds.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

FIELDS = {
    "name": "a label for the machine",
    "cores_per_node": "cores of one node (ranks above it share cores: oversubscription)",
    "latency_s": "one-way latency of a small message between two ranks of one node",
    "network_latency_s": "one-way latency of a small message between two nodes",
    "onnode_bandwidth": "bytes/s of one large contiguous message between two ranks of a node",
    "network_bandwidth": "bytes/s of one large message between two nodes (one rank pair)",
    "nic_bandwidth": "bytes/s a node can send (and, separately, receive) over the network",
    "node_memory_bandwidth": "bytes/s of copies all ranks of a node can make together",
    "copy_bandwidth": "bytes/s of one rank's pack or unpack kernel",
    "datatype_bandwidth": "bytes/s at which MPI moves a non-contiguous derived datatype",
    "message_overhead_s": "CPU seconds to post and complete one message at one end",
    "exchange_overhead_s": "fixed seconds per exchange and round trip (notes, Python calls)",
    "onnode_bandwidth_hot": "bytes/s of a message between two ranks of a node whose bytes were "
                            "just written (in the caches: a pipelined chunk); optional, "
                            "default onnode_bandwidth",
    "datatype_row_bytes": "length of the contiguous rows the datatype bandwidth was measured "
                          "with (optional; 8192, the calibration's rows before it measured the "
                          "tiles' own)",
    "source": "how the figures were obtained (measured here, nominal, ...)",
}
SIZED = ("onnode_bandwidth", "network_bandwidth", "copy_bandwidth", "datatype_bandwidth",
         "onnode_bandwidth_hot")
_TEXT = ("name", "source")
# keys a file may leave out, and their defaults
OPTIONAL = {"source": "", "datatype_row_bytes": 8192, "onnode_bandwidth_hot": None}


def _number(name: str, value) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"machine: {name} must be a non-negative number, got {value!r}")
    return value


def _table(name: str, value):
    """A number, or ``[[bytes, bytes_per_s], ...]`` as a tuple of pairs sorted by size."""
    if not isinstance(value, (list, tuple)):
        if _number(name, value) == 0:
            raise ValueError(f"machine: {name} must be positive (bytes/s), got 0")
        return value
    try:
        pairs = tuple(sorted((float(a), float(b)) for a, b in value))
    except (TypeError, ValueError):
        raise ValueError(f"machine: {name} must be a number or a table [[bytes, bytes/s], ...], "
                         f"got {value!r}") from None
    if not pairs or any(not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b))
                        for a, b in pairs):
        raise ValueError(f"machine: {name}: every size and bandwidth of the table must be "
                         f"positive, got {value!r}")
    return pairs


@dataclass(frozen=True)
class Machine:
    """The figures of :data:`FIELDS`; :meth:`load` reads them from a file."""

    name: str
    cores_per_node: int
    latency_s: float
    network_latency_s: float
    onnode_bandwidth: object
    network_bandwidth: object
    nic_bandwidth: float
    node_memory_bandwidth: float
    copy_bandwidth: object
    datatype_bandwidth: object
    message_overhead_s: float
    exchange_overhead_s: float
    source: str = ""
    datatype_row_bytes: int = OPTIONAL["datatype_row_bytes"]
    onnode_bandwidth_hot: tuple | float | None = None

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _TEXT:
                if not isinstance(value, str):
                    raise ValueError(f"machine: {f.name} must be a string, got {value!r}")
            elif f.name in ("cores_per_node", "datatype_row_bytes"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"machine: {f.name} must be a positive integer, got "
                                     f"{value!r}")
            elif f.name == "onnode_bandwidth_hot" and value is None:
                continue  # onnode_bandwidth stands in for it (:meth:`bandwidth`)
            elif f.name in SIZED:
                object.__setattr__(self, f.name, _table(f.name, value))
            else:
                _number(f.name, value)
                if f.name.endswith("bandwidth") and value == 0:
                    raise ValueError(f"machine: {f.name} must be positive (bytes/s), got 0")

    def to_dict(self) -> dict:
        return {f.name: ([list(p) for p in getattr(self, f.name)]
                         if isinstance(getattr(self, f.name), tuple) else getattr(self, f.name))
                for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: dict, where: str = "machine") -> "Machine":
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a table of figures, got {type(data).__name__}")
        data = dict(data.get("machine", data))  # a TOML file may hold them under [machine]
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; keys: {', '.join(FIELDS)}")
        missing = [k for k in FIELDS if k not in data and k not in OPTIONAL]
        if missing:
            raise ValueError(f"{where}: missing {missing[0]!r} ({FIELDS[missing[0]]})")
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{where}: {str(exc).removeprefix('machine: ')}") from None

    @classmethod
    def load(cls, path) -> "Machine":
        """A machine from a ``.json`` or ``.toml`` file, or a built-in name
        (:func:`builtin_names`)."""
        p = Path(path)
        if not p.exists():
            if str(path) in builtin_names():
                p = _BUILTIN / f"{path}.json"
            else:
                raise ValueError(f"--machine {path}: no such file (built-in machines: "
                                 f"{', '.join(builtin_names())})")
        text = p.read_text()
        try:
            if p.suffix == ".toml":
                import tomllib
                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except ImportError:
            raise ValueError(f"{p}: TOML needs Python 3.11 (tomllib); write the file as "
                             "JSON") from None
        except ValueError as exc:
            raise ValueError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {exc}") \
                from None
        return cls.from_dict(data, str(p))

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    # ------------------------------------------------------------------ figures by size
    def bandwidth(self, name: str, nbytes) -> np.ndarray:
        """Bytes/s of ``name`` (one of :data:`SIZED`) for messages or copies of ``nbytes``."""
        value = getattr(self, name)
        if value is None:  # an optional table left out: onnode_bandwidth_hot
            value = self.onnode_bandwidth
        nbytes = np.asarray(nbytes, dtype=np.float64)
        if not isinstance(value, tuple):
            return np.full(nbytes.shape, float(value))
        sizes = np.log([a for a, _ in value])
        rates = np.array([b for _, b in value])
        return np.interp(np.log(np.maximum(nbytes, 1.0)), sizes, rates)

    def describe(self) -> str:
        def bw(name):
            v = getattr(self, name)
            if isinstance(v, tuple):
                return (f"{v[0][1] / 1e9:.1f} GB/s at {_size(v[0][0])} .. {v[-1][1] / 1e9:.1f} "
                        f"at {_size(v[-1][0])}")
            return f"{v / 1e9:.1f} GB/s"
        return (f"{self.name}: {self.cores_per_node} cores/node; latency "
                f"{self.latency_s * 1e6:.2f} us on a node, {self.network_latency_s * 1e6:.2f} us "
                f"across; on a node "
                f"{bw('onnode_bandwidth')}"
                + (f" (in the caches {bw('onnode_bandwidth_hot')})"
                   if self.onnode_bandwidth_hot is not None else "")
                + f"; across {bw('network_bandwidth')} (NIC "
                f"{self.nic_bandwidth / 1e9:.1f} GB/s per node); copies {bw('copy_bandwidth')} "
                f"per rank, {self.node_memory_bandwidth / 1e9:.0f} GB/s per node; datatypes "
                f"{bw('datatype_bandwidth')} (rows of {_size(self.datatype_row_bytes)}); "
                f"{self.message_overhead_s * 1e6:.2f} us per message, "
                f"{self.exchange_overhead_s * 1e6:.0f} us per exchange"
                + (f" ({self.source})" if self.source else ""))


def _size(b: float) -> str:
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 2 ** k:
            return f"{b / 2 ** k:.3g} {unit}"
    return f"{b:.0f} B"


_BUILTIN = Path(__file__).with_name("machines")


def builtin_names() -> list[str]:
    """Machine files shipped with the package (``--machine NAME``)."""
    return sorted(p.stem for p in _BUILTIN.glob("*.json"))
