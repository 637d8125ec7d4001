"""The README's minimal coupled run works as written (both sides, launched as the README says)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mpi_util import run_mpmd

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.mpi
def test_readme_minimal_example_runs(tmp_path):
    if not README.exists():
        pytest.fail(f"README.md not found at {README}")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    model = next(b for b in blocks if "eh.connect" in b)
    worker = next(b for b in blocks if "eh.Tunnel" in b)
    (tmp_path / "ocean.py").write_text(model + "\nprint('model OK', flush=True)\n")
    (tmp_path / "closure.py").write_text(worker + "\nprint('worker OK', flush=True)\n")
    res = run_mpmd((4, [str(tmp_path / "ocean.py")]), (2, [str(tmp_path / "closure.py")]),
                   timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stdout.count("model OK") == 4 and res.stdout.count("worker OK") == 2
