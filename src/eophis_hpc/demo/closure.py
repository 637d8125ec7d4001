"""The demo's inference workers: a GZ21-shaped CNN (built-in or the published GZ21 network) in
PyTorch on the CPU, fed by ``eh.Tunnel``.

Run as a worker: ``python -m eophis_hpc.demo.closure OUT_DIR CONFIG_JSON`` (under mpiexec).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def run_worker(out_dir: Path, cfg: dict) -> None:
    import torch

    import eophis_hpc as eh
    from eophis_hpc.demo import gz21
    from eophis_hpc.demo.ocean import TIMELINE_STEPS

    torch.set_num_threads(cfg.get("threads", 1))
    grid = eh.Grid.preset(cfg["grid"])
    net = gz21.build(cfg["cnn"], weights=cfg.get("weights"))
    tunnel = eh.Tunnel(
        grid, halo=gz21.HALO,
        exchanges=[eh.Exchange(inputs=["u", "v"], outputs=["su", "sv"], levels=cfg["levels"],
                               signs={"u": -1, "v": -1}, lag=cfg.get("lag", 0))],
        tiles=cfg.get("tiles"), strategy=cfg["strategy"], backend=cfg["backend"],
        framework="torch", dtype="float32", verbose=False)

    tunnel.timings.record_spans(4 * TIMELINE_STEPS)  # wait, recv, model, send per step

    @tunnel.model
    def closure(u, v):
        su, sv = gz21.apply(net, u, v)
        return {"su": su, "sv": sv}

    summary = tunnel.run()
    (out_dir / f"worker_{tunnel.rank}_timings.json").write_text(json.dumps(summary))

if __name__ == "__main__":
    run_worker(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()))
