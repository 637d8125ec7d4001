"""``python -m eophis_hpc.script program.py [args]``: run a Python program of a coupled job with
the job's fault handling in place before its first line (``eophis-hpc run`` launches Python
programs this way). A program that fails before it even imports eophis_hpc (a missing module,
a typo, a broken weights file read at the top) then still ends the whole job at once, with its
own message, instead of leaving the other programs waiting for it."""
from __future__ import annotations

import runpy
import sys

from .errors import install_exit_guard


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m eophis_hpc.script PROGRAM.py [ARGS...]")
    install_exit_guard()
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
