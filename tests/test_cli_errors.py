"""Every ``eophis-hpc`` subcommand refuses bad arguments (unknown grids, missing files,
impossible rank counts, ...) with exit status 2 and a one-line message, never a traceback.
The table must name every subcommand the parser has, so a new one cannot be left out."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from eophis_hpc import cli

MISSING = "no-such-dir/missing.py"


@pytest.fixture
def files(tmp_path):
    """A script, a non-executable non-script file, a plain file and a folder to point at."""
    script = tmp_path / "closure.py"
    script.write_text("print('hi')\n")
    plain = tmp_path / "notes.txt"
    plain.write_text("x\n")
    binary = tmp_path / "model.exe"
    binary.write_text("not executable\n")
    os.chmod(binary, 0o644)
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"script": str(script), "plain": str(plain), "binary": str(binary),
            "folder": str(folder)}


# (subcommand, argv, what the message must say); <name> stands for a path from ``files``.
CASES = [
    ("demo", ["demo", "--grid", "nope"], "unknown grid 'nope'"),
    ("demo", ["demo", "--weights", MISSING], "no such file"),
    ("demo", ["demo", "--weights", "<folder>"], "not a file"),
    ("demo", ["demo", "--model-ranks", "0"], "expected a positive integer"),
    ("demo", ["demo", "--grid", "DINO", "--model-ranks", "20000"], "cannot be split"),
    ("demo", ["demo", "--workers", "3", "--tiles", "2"], "every worker needs a tile"),
    ("demo", ["demo", "--grid", "DINO", "--workers", "99999"], "cannot be split"),
    ("demo", ["demo", "--steps", "x"], "expected a positive integer"),
    ("demo", ["demo", "--out", "<plain>"], "not a folder"),
    ("demo", ["demo", "--backend", "magic"], "not a kernel backend"),
    ("demo", ["demo", "--cnn", "huge"], "invalid choice"),
    ("run", ["run", "-n", "2", "-w", "1", MISSING, "<script>"], "no such file"),
    ("run", ["run", "-n", "2", "-w", "1", "<script>", MISSING], "no such file"),
    ("run", ["run", "-n", "2", "-w", "1", "no-such-program-xyz", "<script>"], "no program"),
    ("run", ["run", "-n", "2", "-w", "1", "<binary>", "<script>"], "not executable"),
    ("run", ["run", "-n", "0", "-w", "1", "<script>", "<script>"], "expected a positive integer"),
    ("run", ["run", "-n", "2", "-w", "-1", "<script>", "<script>"], "expected a positive integer"),
    ("run", ["run", "-n", "2", "-w", "1", "<script>", "<script>", "--model-args", "'open"],
     "cannot split"),
    ("run", ["run", "-n", "2", "-w", "1", "<script>", "<script>", "--mpi", "mpifort.nope"],
     "not found on PATH"),
    ("run", ["run", "-n", "2", "<script>", "<script>"], "required"),
    ("tune", ["tune", "--grid", "nope", "--model-ranks", "2", "--workers", "1"],
     "unknown grid 'nope'"),
    ("tune", ["tune", "--grid", "ORCA2", "--model-ranks", "100000", "--workers", "1",
              "--dry-run"], "cannot split"),
    ("tune", ["tune", "--grid", "ORCA2", "--model-ranks", "2", "--workers", "0"],
     "expected a positive integer"),
    ("tune", ["tune", "--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--halo",
              "-1"], "expected an integer >= 0"),
    ("tune", ["tune", "--grid", "ORCA2", "--model-ranks", "2", "--workers", "1",
              "--time-budget", "0"], "expected a positive number"),
    ("tune", ["tune", "--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--out",
              "<folder>"], "is a folder"),
    ("bench", ["bench", "--timeout", "0"], "expected a positive integer"),
    ("bench", ["bench", "--only", "nope"], "invalid choice"),
    ("bench", ["bench", "--out", "<plain>"], "not a folder"),
    ("plan", ["plan", "--grid", "nope", "--model-ranks", "2", "--workers", "1", "--machine",
              "opa100-40core"], "unknown grid 'nope'"),
    ("plan", ["plan", "--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--machine",
              "<plain>"], "not valid JSON"),
    ("plan", ["plan", "--grid", "DINO", "--model-ranks", "2", "--workers", "99999",
              "--machine", "opa100-40core"], "cannot be split"),
    ("info", ["info", "--bogus"], "unrecognized arguments"),
    ("gpu-check", ["gpu-check", "--out", "<plain>"], "not a folder"),
    ("gpu-check", ["gpu-check", "--quick", "--repeats", "3"], "unrecognized arguments"),
    ("fortran", ["fortran", "--env", "mpifort.nope"], "not found on PATH"),
    (None, ["nope"], "invalid choice"),
    (None, [], "required"),
]


def run_cli(argv, capsys):
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code
    return status, *capsys.readouterr()


def test_every_subcommand_has_bad_argument_cases(capsys):
    """The subcommands offered, read from the help's usage line ``{demo,run,...}``."""
    status, usage, _ = run_cli(["--help"], capsys)
    assert status == 0
    offered = re.search(r"\{([^}]*)\}", usage).group(1).split(",")
    covered = {sub for sub, _, _ in CASES if sub}
    assert {"demo", "run", "tune", "bench", "info", "fortran"} <= set(offered), usage
    missing = set(offered) - covered
    assert not missing, f"add bad-argument cases for: {sorted(missing)}"


@pytest.mark.parametrize("sub,argv,needle", CASES, ids=[" ".join(c[1]) or "(none)" for c in CASES])
def test_bad_arguments_give_one_line_and_status_2(sub, argv, needle, files, capsys, tmp_path,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)            # defaults such as demo-output land in a scratch folder
    argv = [re.sub(r"<(\w+)>", lambda m: files[m.group(1)], a) for a in argv]
    status, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert status == 2, (argv, status, out, err)
    assert len(lines) == 1, (argv, err)
    assert needle in lines[0], (argv, err)
    assert "Traceback" not in out + err and out == "", (argv, out)
    if sub:
        assert lines[0].startswith(f"eophis-hpc {sub}"), lines[0]


def test_the_installed_entry_point_prints_one_line(tmp_path):
    """The same through a fresh interpreter (what a user's shell runs)."""
    for argv, needle in ((["demo", "--grid", "nope"], "unknown grid"),
                         (["run", "-n", "2", "-w", "1", "a.py", "b.py"], "no such file")):
        res = subprocess.run([sys.executable, "-m", "eophis_hpc.cli", *argv], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr
