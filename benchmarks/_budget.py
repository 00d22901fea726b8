"""Shared by the benchmark scripts: throughput of a run config and training within a budget.

A budgeted run first measures the model's training throughput on its own data, sizes a
cosine schedule so that it ends inside the wall-clock budget
(``epochs = floor(0.85 * budget / epoch time)``, at least 2), then trains with
:func:`matxfer.train.loop.fit` under Lightning's ``max_time`` as a hard stop, with no early
stopping and the best-validation weights kept.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from typing import Any

import torch

for _name in ("lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    t = os.times()
    return t.user + t.system


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def measure_throughput(cfg, n_train_batches: int = 8, batch_size: int | None = None) -> dict[str, Any]:
    """Training (forward + backward + AdamW step) and inference structures/s of a run config.

    Uses the run's own training data (first ``n_train_batches`` batches after one warm-up
    batch) and its test split (or validation split) for inference.
    """
    from torch_geometric.loader import DataLoader

    from matxfer.train.data import prepare_data
    from matxfer.train.loop import build_tasks
    from matxfer.train.losses import task_losses, total_loss
    from matxfer.train.setup import build_run_model, fit_normalizers

    bs = batch_size or cfg.optim.batch_size
    tasks = build_tasks(cfg)
    parent = None
    if cfg.transfer.init_from:
        from matxfer.checkpoint import load_checkpoint

        parent = load_checkpoint(cfg.transfer.init_from)
    model, settings, featurizer, _, _ = build_run_model(cfg, tasks, parent)
    data = prepare_data(cfg.data, tasks, settings, featurizer)
    fit_normalizers(model, tasks, data.train_records())
    train = data.subset(data.split.train)
    held = data.subset(data.split.test or data.split.val)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batches = []
    for b in DataLoader(train, batch_size=bs, shuffle=False):
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
    w0, c0 = time.perf_counter(), cpu_seconds()
    n = 0
    for b in batches[1:] or batches:
        step(b)
        n += int(b.num_graphs)
    w1, c1 = time.perf_counter(), cpu_seconds()
    model.eval()
    loader = DataLoader(held, batch_size=64, shuffle=False)
    with torch.no_grad():
        model(next(iter(loader)))  # warm-up
        w2, c2 = time.perf_counter(), cpu_seconds()
        m = 0
        for b in loader:
            model(b)
            m += int(b.num_graphs)
        w3, c3 = time.perf_counter(), cpu_seconds()
    return {
        "train_structures_per_s": n / (w1 - w0),
        "train_structures_per_cpu_s": n / max(c1 - c0, 1e-9),
        "infer_structures_per_s": m / (w3 - w2),
        "infer_structures_per_cpu_s": m / max(c3 - c2, 1e-9),
        "n_train": len(train),
        "n_val": len(data.split.val),
        "n_test": len(data.split.test),
        "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in params),
        "edges_per_structure": float(sum(g.edge_index.shape[1] for g in train) / max(1, len(train))),
    }


def budgeted_fit(raw: dict[str, Any], minutes: float) -> dict[str, Any]:
    """Throughput, then training within ``minutes`` of wall clock; returns a result row.

    ``raw`` is a run config dict; its ``optim.epochs`` and ``optim.max_time_min`` are set
    here (cosine schedule, no early stopping).
    """
    from matxfer.config import config_from_dict
    from matxfer.train.loop import fit

    raw = {**raw, "optim": {**raw.get("optim", {})}}
    raw["optim"].update({"epochs": 1, "max_time_min": float(minutes), "patience": 0, "scheduler": "cosine"})
    raw.setdefault("trainer", {}).update({"progress": False, "accelerator": "cpu"})
    thr = measure_throughput(config_from_dict(raw))
    epoch_s = thr["n_train"] / thr["train_structures_per_s"]
    epochs = max(2, int(math.floor(0.85 * minutes * 60.0 / epoch_s)))
    raw["optim"]["epochs"] = epochs
    load0 = os.getloadavg()[0]
    c0 = cpu_seconds()
    res = fit(config_from_dict(raw), command="benchmark")
    return {
        "epochs_planned": epochs,
        "epochs_run": res.metrics.get("epochs_run"),
        "best_epoch": res.best_epoch,
        "fit_wall_s": res.wall_time_s,
        "fit_cpu_s": cpu_seconds() - c0,
        "loadavg_1min_at_start": load0,
        "loadavg_1min_at_end": os.getloadavg()[0],
        "test": res.metrics.get("test"),
        "val": res.metrics.get("val"),
        "out_dir": str(res.out_dir),
        **thr,
    }
