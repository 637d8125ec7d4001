"""Argument checks for every ``eophis-hpc`` subcommand, in one place: argparse types that refuse
a bad value while parsing (unknown grid, missing file, non-positive count, ...), the checks
that need several arguments at once (rank counts a grid cannot be split into), and a parser
whose errors are one line with exit status 2 (no usage dump, no traceback)."""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line ``PROG: error: MESSAGE`` and status 2.
    Each parser records itself as the ``parser`` default, so the parsed arguments know which
    (sub)command's parser reports a later error (:func:`fail`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_defaults(parser=self)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def fail(args, message: str):
    """Refuse the parsed ``args`` with a one-line error from its subcommand's parser."""
    parser = getattr(args, "parser", None)
    if parser is None:
        print(f"eophis-hpc: error: {message}", file=sys.stderr)
        sys.exit(2)
    parser.error(message)


def _number(text: str, cast, ok, what: str):
    """``cast(text)`` if it converts and passes ``ok``, else an argparse error saying ``what``
    was expected."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def grid_name(text: str) -> str:
    """A grid preset's name (any case), returned as the preset spells it."""
    from .grid import PRESETS

    key = {k.lower(): k for k in PRESETS}.get(text.lower())
    if key is None:
        raise argparse.ArgumentTypeError(f"unknown grid {text!r}; known: {', '.join(PRESETS)}")
    return key


def kernel_backend(text: str) -> str:
    """A kernel backend that loads on this machine."""
    from . import kernels

    try:
        kernels.get(text)
    except (ValueError, RuntimeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def existing_file(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {text}")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text} (permission denied)")
    return text


def program(text: str) -> str:
    """What mpiexec will start: a ``.py`` script (run with this Python) or a path must be an
    existing file (executable, unless ``.py``); a bare name must be a program on PATH."""
    if text.endswith(".py"):
        return existing_file(text)
    if os.sep in text or Path(text).is_file():
        existing_file(text)
        if not os.access(text, os.X_OK):
            raise argparse.ArgumentTypeError(f"{text} is not executable (chmod +x it, or give a "
                                             ".py script)")
        return text
    if shutil.which(text) is None:
        raise argparse.ArgumentTypeError(f"no such file, and no program {text!r} on PATH")
    return text


def mpi_wrapper(text: str) -> str:
    """An MPI compiler wrapper (mpifort, mpifort.mpich, ...) found on PATH."""
    if shutil.which(text) is None:
        raise argparse.ArgumentTypeError(f"MPI compiler wrapper {text!r} not found on PATH")
    return text


def shell_words(text: str) -> list[str]:
    """A one-string argument list split as a shell would (``--model-args "--days 3"``)."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot split {text!r} into arguments ({exc})") from None


def output_dir(text: str) -> str:
    """A folder to write into: it may exist (as a folder) or will be created."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    parent = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: cannot write there ({parent} is a file, not "
                                         "a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write there (no permission in "
                                         f"{parent})")
    return text


def output_file(text: str) -> str:
    """A file to write: not a folder, in a folder that exists and is writable."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {folder} (permission denied)")
    return text


def split_error(preset: str, n: int, what: str) -> str | None:
    """Why ``n`` blocks of the grid ``preset`` are impossible (``what`` names the argument), or
    ``None`` when the grid splits into ``n`` blocks."""
    from .decomposition import best_factors
    from .grid import Grid

    grid = Grid.preset(preset)
    try:
        best_factors(n, grid.nx, grid.ny)
    except ValueError:
        return (f"{what} {n}: the {grid.name} grid ({grid.nx}x{grid.ny}) cannot be split into "
                f"{n} blocks (n = px * py with px <= {grid.nx} and py <= {grid.ny})")
    return None


def check_demo(args) -> None:
    """The demo's rank counts against its grid: model ranks and tiles must split it, and every
    worker needs a tile."""
    tiles = args.tiles if args.tiles is not None else args.workers
    if tiles < args.workers:
        fail(args, f"--tiles {tiles} for --workers {args.workers}: every worker needs a tile")
    for n, what in ((args.model_ranks, "--model-ranks"),
                    (tiles, "--tiles" if args.tiles is not None else "--workers")):
        why = split_error(args.grid, n, what)
        if why:
            fail(args, why)
