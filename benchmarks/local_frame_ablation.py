"""Number of local frames per atom (t) vs accuracy and speed of the local-frame backbone.

Task: heat of formation of the Castelli cubic perovskites (``castelli-perovskites``, target
``formation_energy``, eV per 5-atom cell). The first ``--limit`` (2,000) entries of the
dataset in file order are split once, 1,600 train / 200 val / 200 test (split seed 0); every
t uses the same split, the same graphs (cutoff 6 A, all neighbours: the backbone's graph
defaults) and the same seed.

Per t (``--frames``, default 1..8) the script

1. times training (forward + backward + AdamW step, batch 32) on 8 batches after one
   warm-up batch, and inference (``torch.no_grad``) on the 200 test structures, giving
   structures per second (wall clock) and per CPU second of this process;
2. trains with :func:`matxfer.train.loop.fit` under a fixed wall-clock budget of
   ``--minutes`` (Lightning ``max_time``), with a cosine schedule whose length is sized from
   the measured throughput to end inside the budget (``epochs = floor(0.85 * budget /
   epoch time)``, at least 2), no early stopping, best-validation weights kept;
3. reports the test MAE (eV/cell) of the best-validation weights.

Everything runs on one CPU thread. The machine is shared: the load average is recorded
with each case, and CPU-time throughputs are given next to the wall-clock ones. One seed
per t: differences of a few per cent are within seed-to-seed variation.

Usage::

    python benchmarks/local_frame_ablation.py [--frames 1,2,3,4,5,6,7,8] [--minutes 3]
        [--out benchmarks/results/local_frame_ablation.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

DATASET = "castelli-perovskites"
TARGET = "formation_energy"
BATCH_SIZE = 32

log = logging.getLogger("local_frame_ablation")


def split_of(limit: int) -> dict:
    """80/10/10 split sizes of ``limit`` entries (1,600 / 200 / 200 for 2,000), seed 0."""
    n_val = limit // 10
    return {"sizes": [limit - 2 * n_val, n_val, n_val], "seed": 0}


def run_config(t: int, out: Path, limit: int, minutes: float, epochs: int, width: int) -> dict:
    """The raw run config of one case (``config_from_dict`` input)."""
    return {
        "name": f"local-frame-t{t}",
        "seed": 0,
        "out": str(out),
        "data": {
            "datasets": [DATASET],
            "targets": [TARGET],
            "limit": limit,
            "split": split_of(limit),
        },
        "model": {
            "backbone": {"name": "local-frame", "n_frames": t, "width": width},
            "heads": {TARGET: {"name": "scalar", "hidden": [width], "reduce": "mean"}},
        },
        "optim": {
            "epochs": int(epochs),
            "max_time_min": float(minutes),
            "patience": 0,
            "batch_size": BATCH_SIZE,
            "lr": 2e-3,
            "scheduler": "cosine",
            "warmup_epochs": 1,
        },
        "trainer": {"progress": False, "accelerator": "cpu"},
    }


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure_throughput(cfg, n_train_batches: int = 8) -> dict:
    """Training and inference throughput of the configured model on its own data."""
    from torch_geometric.loader import DataLoader

    from matxfer.train.data import prepare_data
    from matxfer.train.loop import build_tasks, task_losses, total_loss
    from matxfer.train.setup import build_run_model, fit_normalizers

    tasks = build_tasks(cfg)
    model, settings, featurizer, _, _ = build_run_model(cfg, tasks, None)
    data = prepare_data(cfg.data, tasks, settings, featurizer)
    fit_normalizers(model, tasks, data.train_records())
    train = data.subset(data.split.train)
    test = data.subset(data.split.test)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = DataLoader(train, batch_size=BATCH_SIZE, shuffle=False)
    batches = []
    for b in loader:
        batches.append(b)
        if len(batches) > n_train_batches:
            break
    model.train()

    def step(b):
        opt.zero_grad()
        loss = total_loss(tasks, task_losses(model, tasks, model(b), b))
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    w0, c0 = time.perf_counter(), _cpu()
    n = 0
    for b in batches[1:]:
        step(b)
        n += int(b.num_graphs)
    w1, c1 = time.perf_counter(), _cpu()
    model.eval()
    test_loader = DataLoader(test, batch_size=64, shuffle=False)
    with torch.no_grad():
        model(next(iter(test_loader)))  # warm-up
        w2, c2 = time.perf_counter(), _cpu()
        m = 0
        for b in test_loader:
            model(b)
            m += int(b.num_graphs)
        w3, c3 = time.perf_counter(), _cpu()
    stats = {"fallback_frames": 0, "frames": 0, "skipped_collinear_pairs": 0}
    with torch.no_grad():
        for b in DataLoader(train + data.subset(data.split.val) + test, batch_size=256):
            model.backbone(b)
            for k in stats:
                stats[k] += model.backbone.frame_stats[k]
    return {
        "train_structures_per_s": n / (w1 - w0),
        "train_structures_per_cpu_s": n / max(c1 - c0, 1e-9),
        "infer_structures_per_s": m / (w3 - w2),
        "infer_structures_per_cpu_s": m / max(c3 - c2, 1e-9),
        "n_train": len(train),
        "n_val": len(data.split.val),
        "n_test": len(test),
        "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
        "total_params": sum(p.numel() for p in model.parameters()),
        "frame_stats_all_atoms": stats,
    }


def run_case(t: int, args, workdir: Path) -> dict:
    """Throughput, then the time-budgeted training run, of one frame count."""
    from matxfer.config import config_from_dict
    from matxfer.train.loop import fit

    out = workdir / f"t{t}"
    probe = config_from_dict(run_config(t, out, args.limit, args.minutes, 1, args.width))
    thr = measure_throughput(probe)
    epoch_s = thr["n_train"] / thr["train_structures_per_s"]
    epochs = max(2, int(math.floor(0.85 * args.minutes * 60.0 / epoch_s)))
    cfg = config_from_dict(run_config(t, out, args.limit, args.minutes, epochs, args.width))
    load0 = os.getloadavg()[0]
    c0 = _cpu()
    res = fit(cfg)
    cpu = _cpu() - c0
    m = res.metrics
    return {
        "n_frames": t,
        "test_mae_eV_per_cell": m["test"][TARGET]["mae"],
        "test_rmse_eV_per_cell": m["test"][TARGET]["rmse"],
        "test_r2": m["test"][TARGET]["r2"],
        "val_mae_eV_per_cell": m["val"][TARGET]["mae"],
        "epochs_planned": epochs,
        "epochs_run": m.get("epochs_run"),
        "best_epoch": m.get("best_epoch"),
        "fit_wall_s": res.wall_time_s,
        "fit_cpu_s": cpu,
        "loadavg_1min_at_start": load0,
        "loadavg_1min_at_end": os.getloadavg()[0],
        **thr,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", default="1,2,3,4,5,6,7,8")
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget per t")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/local_frame_ablation.json")
    ap.add_argument("--workdir", default=None, help="run directories (default: a temp dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    import matxfer.models.backbones.local_frame  # noqa: F401  (registers "local-frame")

    frames = [int(x) for x in args.frames.split(",") if x.strip()]
    bad = [t for t in frames if t < 1 or t > 28]
    if bad:
        raise ValueError(f"--frames: every t must be in 1..28 (pairs of 8 neighbours), got {bad}")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "local_frame_ablation",
        "dataset": DATASET,
        "target": TARGET,
        "units": "eV/cell",
        "subset": f"first {args.limit} entries in file order",
        "split": split_of(args.limit),
        "budget_minutes_per_t": args.minutes,
        "threads": args.threads,
        "batch_size": BATCH_SIZE,
        "backbone": {"name": "local-frame", "width": args.width, "other": "defaults"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__},
        "cases": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        for t in frames:
            log.info("t = %d: %.1f min budget", t, args.minutes)
            case = run_case(t, args, workdir)
            log.info("t = %d: test MAE %.4f eV/cell, %.1f train structures/s", t,
                     case["test_mae_eV_per_cell"], case["train_structures_per_s"])
            result["cases"].append(case)
            out_path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
