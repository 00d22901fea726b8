"""Multi-process data-parallel training (Lightning DDP) on two CPU processes.

The same code path trains on several GPUs or nodes (``trainer.strategy=ddp``,
``trainer.devices=N``, ``trainer.num_nodes=M``); here two CPU processes with the gloo
backend stand in for them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import torch

from matxfer.checkpoint import load_checkpoint

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from matxfer.config import config_from_dict
    from matxfer.train.loop import fit

    out = sys.argv[1]
    raw = {
        "name": "ddp", "out": out,
        "data": {"datasets": ["petousis-dielectric-2017"], "targets": ["band_gap"], "limit": 40,
                 "split": {"fractions": [0.6, 0.2, 0.2]}},
        "model": {"backbone": {"name": "cgcnn", "width": 8, "n_conv": 1}},
        "optim": {"epochs": 3, "batch_size": 4, "patience": 0},
        "trainer": {"progress": False, "accelerator": "cpu", "strategy": "ddp", "devices": 2},
    }
    res = fit(config_from_dict(raw))
    print("RESULT", json.dumps({"metrics": bool(res.metrics)}))
    """
)


def test_ddp_on_two_cpu_processes(tmp_path, data_dir):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "MATXFER_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    # both processes trained; only rank 0 evaluated and wrote the run
    assert sorted(r["metrics"] for r in results) == [False, True]
    ck = load_checkpoint(out / "model.ckpt")
    assert ck["metrics"]["test"]["band_gap"]["n"] > 0
    torch.load(out / "model.ckpt", weights_only=True)
    # each process saw half of the training crystals per epoch: 3 steps of 4 (not 6)
    n_train = len(json.loads((out / "split.json").read_text())["train"])
    assert 20 < n_train <= 24
    with open(out / "logs" / "metrics.csv") as fh:
        steps = {int(r["epoch"]): int(r["step"]) for r in csv.DictReader(fh) if r.get("val_loss")}
    assert steps[2] - steps[1] == steps[1] - steps[0] == 3
