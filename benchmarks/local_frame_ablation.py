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
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _budget import budgeted_fit  # noqa: E402

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


def frame_stats(cfg) -> dict:
    """Frames built, fallback frames and skipped collinear pairs over every structure."""
    from torch_geometric.loader import DataLoader

    from matxfer.train.data import prepare_data
    from matxfer.train.loop import build_tasks
    from matxfer.train.setup import build_run_model

    tasks = build_tasks(cfg)
    model, settings, featurizer, _, _ = build_run_model(cfg, tasks, None)
    data = prepare_data(cfg.data, tasks, settings, featurizer)
    graphs = data.subset(data.split.train + data.split.val + data.split.test)
    stats = {"fallback_frames": 0, "frames": 0, "skipped_collinear_pairs": 0}
    model.eval()
    with torch.no_grad():
        for b in DataLoader(graphs, batch_size=256):
            model.backbone(b)
            for k in stats:
                stats[k] += model.backbone.frame_stats[k]
    return stats


def run_case(t: int, args, workdir: Path) -> dict:
    """Throughput, then the time-budgeted training run, of one frame count."""
    from matxfer.config import config_from_dict

    out = workdir / f"t{t}"
    raw = run_config(t, out, args.limit, args.minutes, 1, args.width)
    res = budgeted_fit(raw, args.minutes)
    return {
        "n_frames": t,
        "test_mae_eV_per_cell": res["test"][TARGET]["mae"],
        "test_rmse_eV_per_cell": res["test"][TARGET]["rmse"],
        "test_r2": res["test"][TARGET]["r2"],
        "val_mae_eV_per_cell": res["val"][TARGET]["mae"],
        **{k: v for k, v in res.items() if k not in ("test", "val", "out_dir")},
        "frame_stats_all_atoms": frame_stats(config_from_dict(raw)),
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
