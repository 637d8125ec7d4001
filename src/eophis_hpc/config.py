"""The settings file ``eophis_hpc.toml`` written by ``eophis-hpc tune`` and read by ``Tunnel``
and ``connect`` for the options their caller leaves unset (arguments always win).

Looked up at ``$EOPHIS_HPC_CONFIG``, else ``./eophis_hpc.toml``. Parsed with ``tomllib`` (no
code runs); unknown keys and bad values are errors naming the file, line and key.
"""
from __future__ import annotations

import os
from pathlib import Path

from .kernels import ORDER as BACKENDS
from .transport.mpi.strategies import names as strategy_names

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

FILENAME = "eophis_hpc.toml"
ENV_VAR = "EOPHIS_HPC_CONFIG"

# key: (allowed values or type, help)
TUNNEL_KEYS = {
    "strategy": (strategy_names(), "how runs are moved: a transport strategy (packed buffers, "
                 "MPI datatypes, ...)"),
    "backend": (BACKENDS, "kernel backend"),
    "tiles_per_worker": (int, "tiles each worker stacks in its batch"),
    "pipeline_chunk": (int, "bytes per message of the pipelined strategy"),
    "timeout": (float, "seconds a rank waits for its peers"),
}


class ConfigError(ValueError):
    """A bad settings file: the message names the file, the line where known, and the key."""


def path() -> Path | None:
    """The settings file in force, or None."""
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"{ENV_VAR}={env}: no such file")
        return p
    p = Path.cwd() / FILENAME
    return p if p.is_file() else None


def _line_of(text: str, key: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith(f"{key}") and "=" in line:
            return number
    return None


def parse(text: str, where: str = FILENAME) -> dict:
    """Validated ``{key: value}`` of the ``[tunnel]`` table (other tables are kept aside)."""
    if tomllib is None:
        raise ConfigError(f"{where}: reading TOML needs Python 3.11+ (tomllib)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    unknown_tables = sorted(set(data) - {"tunnel", "measured"})
    if unknown_tables:
        raise ConfigError(f"{where}: unknown table [{unknown_tables[0]}] (known: [tunnel], "
                          "[measured])")
    settings = data.get("tunnel", {})
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: 'tunnel' must be a table")
    for key, value in settings.items():
        line = _line_of(text, key)
        at = f"{where}:{line}" if line else where
        if key not in TUNNEL_KEYS:
            raise ConfigError(f"{at}: unknown key {key!r} in [tunnel] (known: "
                              f"{', '.join(TUNNEL_KEYS)})")
        allowed = TUNNEL_KEYS[key][0]
        if isinstance(allowed, tuple):
            if value not in allowed:
                raise ConfigError(f"{at}: {key} = {value!r} is not one of {allowed}")
        elif allowed is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{at}: {key} must be a positive integer, got {value!r}")
        elif allowed is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{at}: {key} must be a non-negative number, got {value!r}")
    return dict(settings)


def load() -> dict:
    """Settings from the file in force ({} when there is none)."""
    p = path()
    if p is None:
        return {}
    return parse(p.read_text(), str(p))


def dumps(settings: dict, measured: dict | None = None, comment: str = "") -> str:
    """TOML text for ``settings`` (validated by :func:`parse` before it is returned)."""
    def value(v):
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v)

    lines = [f"# {line}" for line in comment.splitlines()] + ["[tunnel]"]
    lines += [f"{k} = {value(v)}" for k, v in settings.items()]
    if measured:
        lines += ["", "[measured]"] + [f"{k} = {value(v)}" for k, v in measured.items()]
    text = "\n".join(lines) + "\n"
    parse(text, "generated settings")
    return text


def resolve(name: str, given, default):
    """``given`` when the caller set it, else the settings file's value, else ``default``."""
    if given is not None:
        return given
    return load().get(name, default)
