"""``eophis-hpc plan``: the issue's size targets (time and memory), the JSON and the figure, a
figure-less run without matplotlib, node names from a file, one-line errors with exit status 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

EXE = [sys.executable, "-m", "eophis_hpc.cli", "plan"]
PNG = b"\x89PNG\r\n\x1a\n"

# run the command in a child that reports its own peak memory (ru_maxrss, KiB on Linux)
MEASURED = ("import resource, sys, time\n"
            "from eophis_hpc.cli import main\n"
            "t0 = time.perf_counter()\n"
            "rc = main(sys.argv[1:])\n"
            "print(f'PEAK {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} "
            "SECONDS {time.perf_counter() - t0}', flush=True)\n"
            "sys.exit(rc)\n")


def plan(*args, env=None, timeout=300):
    return subprocess.run(EXE + list(args), capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else dict(os.environ, **env))


def measured(*args, timeout=300):
    res = subprocess.run([sys.executable, "-c", MEASURED, "plan", *args], capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    words = res.stdout.strip().splitlines()[-1].split()
    return res, int(words[1]) * 1024, float(words[3])


def test_eorca025_999_to_256_75_levels_answers_in_10_s_and_2_gib(tmp_path):
    out = tmp_path / "plan.json"
    res, peak, secs = measured(
        "--grid", "eORCA025", "--model-ranks", "999", "--workers", "256", "--levels", "75",
        "--halo", "1", "--fields-in", "2", "--machine", "opa100-40core", "--model-per-node",
        "40", "--model-step-ms", "391", "--inference-ms", "174", "--json", str(out))
    assert secs < 10 and peak < 2 * 2**30, (secs, peak)
    doc = json.loads(out.read_text())
    lay = doc["layout"]
    assert lay["workers"] == 256 and lay["tiles"] == 256 and doc["job"]["model_ranks"] == 999
    # bytes: two 75-level float64 fields out, one back, each 1440 x 1206 plus the halo rings
    field = 1440 * 1206 * 75 * 8
    assert 2 * field < lay["traffic"]["scatter"]["bytes"] < 2.2 * field
    assert lay["traffic"]["gather"]["bytes"] == field
    assert {r["workers"] for r in doc["sweep"]} >= {1, 256, 512}
    for s in ("packed", "datatype"):
        pl = doc["plateau"]["workers"][s]
        assert pl["lag1"] <= pl["lag0"]
    assert "plateau" in res.stdout and "on-node share" in res.stdout


@pytest.mark.slow
def test_eorca12_8000_to_1000_answers_in_60_s():
    res, peak, secs = measured(
        "--grid", "eORCA12", "--model-ranks", "8000", "--workers", "1000", "--levels", "75",
        "--halo", "1", "--machine", "opa100-40core", "--placement", "shared",
        "--model-per-node", "36", "--workers-per-node", "4", "--quiet")
    assert secs < 60 and peak < 2 * 2**30, (secs, peak)
    assert "8000 model ranks" in res.stdout


def test_figure_and_node_file(tmp_path):
    nodes = tmp_path / "nodes.json"
    # 2x2 model boxes, the west ones on node a, the east ones on b; the west tile's worker is
    # on b, the east tile's on a: today everything crosses, node-aware nothing does
    nodes.write_text(json.dumps({"model": ["a", "b", "a", "b"], "workers": ["b", "a"]}))
    png, js = tmp_path / "steps.png", tmp_path / "plan.json"
    res = plan("--grid", "ORCA2", "--model-ranks", "4", "--workers", "2", "--halo", "0",
               "--machine", "opa100-40core", "--nodes", str(nodes), "--png", str(png),
               "--json", str(js))
    assert res.returncode == 0, res.stderr
    assert png.read_bytes().startswith(PNG)
    pl = json.loads(js.read_text())["layout"]["placement"]
    assert pl["onnode_share_before"] == 0 and pl["onnode_share_after"] == 1
    assert pl["moved_tiles"] == 2


def test_without_matplotlib_says_how_to_install_it(tmp_path):
    blocker = tmp_path / "block" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib blocked by the test')\n")
    path = os.pathsep.join(filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")]))
    png = tmp_path / "steps.png"
    res = plan("--grid", "ORCA2", "--model-ranks", "4", "--workers", "2",
               "--machine", "opa100-40core", "--png", str(png), env={"PYTHONPATH": path})
    assert res.returncode == 0, res.stderr
    assert "pip install 'eophis_hpc[plot]'" in res.stderr and not png.exists()


def test_all_four_strategies_are_predicted_and_one_can_be_picked(tmp_path):
    js = tmp_path / "plan.json"
    base = ["--grid", "ORCA2", "--model-ranks", "4", "--workers", "2", "--halo", "1",
            "--levels", "10", "--machine", "opa100-40core", "--placement", "shared",
            "--sweep", "1,2", "--quiet"]
    res = plan(*base, "--json", str(js))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    at = lines.index(next(x for x in lines if x.startswith("predicted exchange")))
    assert [x.split()[0] for x in lines[at + 1:at + 5]] == ["shm", "packed", "datatype",
                                                            "pipelined"]
    assert "pipelined: chunks of 1 MiB" in lines[at]
    doc = json.loads(js.read_text())
    assert list(doc["layout"]["predictions"]["placed"]) == ["shm", "packed", "datatype",
                                                           "pipelined"]
    assert set(doc["plateau"]["workers"]) == {"shm", "packed", "datatype", "pipelined"}
    assert all(set(r["predictions"]) == set(doc["plateau"]["workers"]) for r in doc["sweep"])
    assert doc["job"]["pipeline_chunk"] == 2**20 and doc["job"]["shm_buffers"] is False
    shm = doc["layout"]["predictions"]["placed"]["shm"]["exchange_s"]
    res = plan(*base, "--strategy", "shm", "--shm-buffers", "--json", str(js))
    assert res.returncode == 0, res.stderr
    doc = json.loads(js.read_text())
    assert list(doc["layout"]["predictions"]["placed"]) == ["shm"]
    assert doc["layout"]["predictions"]["placed"]["shm"]["exchange_s"] < shm
    res = plan(*base, "--strategy", "pipelined", "--chunk", "4096", "--json", str(js))
    assert res.returncode == 0, res.stderr
    assert "pipelined: chunks of 4 KiB)" in res.stdout
    doc = json.loads(js.read_text())
    assert list(doc["plateau"]["workers"]) == ["pipelined"]
    assert doc["job"]["pipeline_chunk"] == 4096
    res = plan(*base, "--strategy", "both", "--json", str(js))
    assert list(json.loads(js.read_text())["plateau"]["workers"]) == ["packed", "datatype"]


@pytest.mark.parametrize("args,message", [
    (["--grid", "ORCA3", "--model-ranks", "2", "--workers", "1"], "unknown grid 'ORCA3'"),
    (["--model-ranks", "2", "--workers", "1"], "--grid is required"),
    (["--grid", "ORCA2", "--model-ranks", "2"], "--workers is required"),
    (["--grid", "ORCA2", "--workers", "1"], "give --model-ranks, or --jpni and --jpnj"),
    (["--grid", "ORCA2", "--model-ranks", "0", "--workers", "1"],
     "--model-ranks must be a positive integer"),
    (["--grid", "ORCA2", "--model-ranks", "2", "--workers", "100000"], "cannot be split"),
    (["--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--halo", "500"],
     "--halo=500 is wider than the grid allows"),
    (["--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--sweep", "a:b"],
     "--sweep a:b: expected"),
    (["--grid", "ORCA2", "--jpni", "2", "--workers", "1"], "give --jpni and --jpnj together"),
    (["--grid", "30x20", "--north", "fold", "--model-ranks", "2", "--workers", "1", "--mask",
      "x.npy"], "--mask goes with --jpni"),
    (["--grid", "ORCA2", "--north", "fold", "--model-ranks", "2", "--workers", "1"],
     "go with --grid NXxNY"),
    (["--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--tolerance", "2"],
     "--tolerance must be in [0, 1)"),
    (["--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--inference-ms", "-1"],
     "--inference-ms must be 0 or more"),
    (["--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--json", "/no/such/x.json"],
     "its folder does not exist"),
    (["--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--chunk", "0"],
     "--chunk must be a positive number of bytes"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_arguments_fail_in_one_line(args, message):
    res = plan(*args, "--machine", "opa100-40core")
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("eophis-hpc plan: ")
    assert not res.stdout


def test_machine_errors_fail_in_one_line(tmp_path):
    res = plan("--grid", "ORCA2", "--model-ranks", "2", "--workers", "1")
    assert res.returncode == 2 and "give --machine FILE" in res.stderr
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"name": "x"}))
    res = plan("--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--machine", str(bad))
    assert res.returncode == 2 and "missing 'cores_per_node'" in res.stderr
    assert res.stderr.count("\n") == 1
    res = plan("--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--machine", "nope")
    assert res.returncode == 2 and "no such file (built-in machines: opa100-40core" in res.stderr
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"model": ["a"], "workers": ["a"]}))
    res = plan("--grid", "ORCA2", "--model-ranks", "2", "--workers", "1", "--machine",
               "opa100-40core", "--nodes", str(nodes))
    assert res.returncode == 2 and "1 model and 1 worker node names for 2 model ranks" \
        in res.stderr
