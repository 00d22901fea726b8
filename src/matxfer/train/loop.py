"""Training orchestration: :func:`fit` is what ``matxfer train`` and ``matxfer finetune`` run.

It prepares the data and the model, then hands them to Lightning
(:mod:`matxfer.train.lightning`: the module, the data module, the checkpoint format) and
writes into the run directory: ``best.ckpt`` (matxfer format, written by Lightning's
``ModelCheckpoint`` whenever validation improves, so an interrupted run keeps its best model),
``last.ckpt`` (written atomically after every epoch: the matxfer checkpoint plus the state to
resume from), ``model.ckpt`` (the final best model with test metrics), ``metrics.json``,
``split.json``, ``config.yaml``, Lightning's CSV logs and ``train.log``.

Resuming (:mod:`matxfer.train.resume`): a rerun on the same run directory continues from
``last.ckpt`` and ends with the same weights as an uninterrupted run. ``last.ckpt`` stays plain
data and tensors (loadable with ``torch.load(weights_only=True)``): weights, optimiser and
scheduler state dicts, the RNG states (torch, CUDA, numpy, Python, the data loader's
generator) as tensors and lists, the number of completed epochs, the best score and the
early-stopping counters. Lightning itself starts a fresh fit whose epoch counter is set to the
completed epochs; its own ``ckpt_path=`` resume is not used, because its checkpoint is a
pickle of loop and callback objects, it leaves the RNG and loader-generator states out (so the
batch order after a resume would differ), and a checkpoint written at the end of an epoch
restarts there through version-dependent "restart stage" logic. A rerun with a different
config on a run directory is refused (naming the differing keys) unless ``force`` is given,
which starts afresh.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml

from matxfer.config import RunConfig, TaskConfig, to_dict
from matxfer.inference import evaluate_graphs
from matxfer.tasks import TENSOR, Task, make_task
from matxfer.train.losses import task_losses, total_loss
from matxfer.train.resume import (
    LAST_CKPT,
    STASHED_CSV,
    merge_csv_logs,
    prepare_run_dir,
    start_at_epoch,
    stash_csv_log,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# the training-mean baseline
# ----------------------------------------------------------------------------------------


def train_label_means(tasks: dict[str, Task], records) -> dict[str, np.ndarray]:
    """Mean Cartesian label of each crystal-tensor task over the records that carry it (the
    training-mean baseline predictor), in the labels' frame."""
    out = {}
    for name, task in tasks.items():
        if task.kind != TENSOR:
            continue
        vals = [np.asarray(r.labels[name], dtype=float) for r in records if name in r.labels]
        if vals:
            out[name] = np.mean(vals, axis=0)
    return out


# ----------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------


@dataclass
class FitResult:
    out_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    wall_time_s: float
    trainable_params: int
    best_epoch: int


def _write_predictions(path: Path, pairs: dict) -> None:
    """Test-set predictions and labels (physical units) for parity plots."""
    blob = {
        name: {
            "ids": d["ids"],
            "pred": [np.asarray(x).tolist() for x in d["pred"]],
            "true": [np.asarray(x).tolist() for x in d["true"]],
        }
        for name, d in pairs.items()
    }
    path.write_text(json.dumps(blob))


def build_tasks(cfg: RunConfig) -> dict[str, Task]:
    if not cfg.data.targets:
        raise ValueError("data.targets is empty: name at least one label to learn")
    unknown = set(cfg.tasks) - set(cfg.data.targets)
    if unknown:
        raise ValueError(f"tasks {sorted(unknown)} are not in data.targets {cfg.data.targets}")
    tasks = {}
    for t in cfg.data.targets:
        tc = cfg.tasks.get(t) or TaskConfig()
        tasks[t] = make_task(
            t,
            weight=tc.weight,
            loss=tc.loss,
            weighting=tc.weighting,
            relative_floor=tc.relative_floor,
            sign_agnostic=tc.sign_agnostic,
            parameterization=tc.parameterization,
        )
    return tasks


def _setup_logging(out: Path) -> logging.Handler:
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("matxfer")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def _cache_frozen_outputs(cfg: RunConfig, model, settings, graphs: list) -> list:
    """With a frozen backbone, attach its outputs to the graphs once (see feature_cache).

    Returns the graphs that carry cached outputs (empty when nothing was cached).
    """
    from matxfer.feature_cache import (
        attach_outputs,
        backbone_is_frozen,
        load_or_compute,
        read_cached_outputs,
    )

    if not cfg.trainer.cache_frozen_features or not backbone_is_frozen(model):
        return []
    if any(getattr(h, "conservative", False) for h in model.heads.values()):
        return []  # -dE/dpos needs the backbone itself
    if cfg.data.graph_store:
        return []  # graphs are read from the store on every access: nowhere to keep outputs
    t0 = time.time()
    outputs, stats = load_or_compute(model.backbone, graphs, settings.to_dict(), batch_size=32)
    attach_outputs(graphs, outputs)
    read_cached_outputs(model.backbone)
    log.info(
        "frozen backbone: outputs of %d crystals cached (%d reused from disk, %d computed) in %.1f s",
        len(graphs), stats["reused"], stats["computed"], time.time() - t0,
    )
    return graphs


def _quiet_lightning() -> None:
    """Keep Lightning's informational chatter (tips, device summary) off the console unless
    ``-v`` was given; warnings still show."""
    import warnings

    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # best.ckpt is written into the run directory, beside the run's other files
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")


#: share of a training budget the planned schedule may use (the rest covers validation
#: noise and the end-of-run evaluation)
BUDGET_SHARE = 0.9


def plan_budget(model, tasks, train_loader, val_loader, budget_min: float,
                n_batches: int = 6) -> dict[str, Any]:
    """Epochs that fit a wall-clock budget, from the measured cost of this run's batches.

    Times ``n_batches`` training steps (forward, backward, AdamW step) on a copy of the
    model, so the run's own weights and optimiser state are untouched, and a forward pass
    over a few validation batches; the epoch time is extrapolated from them.

    Returns:
        ``{"epochs", "epoch_s", "train_structures_per_s", "budget_s"}``.
    """
    t_start = time.perf_counter()
    probe = copy.deepcopy(model)
    probe.train()
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6) if params else None
    seen = t_train = 0.0
    for i, batch in enumerate(train_loader):
        if i > n_batches:
            break
        t0 = time.perf_counter()
        out = probe(batch)
        loss = total_loss(tasks, task_losses(probe, tasks, out, batch))
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
        if i:  # the first batch warms up
            t_train += time.perf_counter() - t0
            seen += int(batch.num_graphs)
    rate = seen / t_train if t_train > 0 else float("inf")
    probe.eval()
    v_seen = t_val = 0.0
    with torch.enable_grad():  # conservative-force heads differentiate in evaluation too
        for i, batch in enumerate(val_loader):
            if i >= 3:
                break
            t0 = time.perf_counter()
            probe(batch)
            t_val += time.perf_counter() - t0
            v_seen += int(batch.num_graphs)
    n_train = len(train_loader.dataset)
    n_val = len(val_loader.dataset)
    budget_s = max(0.0, budget_min * 60.0 - (time.perf_counter() - t_start))
    epoch_s = n_train / rate + (n_val * t_val / v_seen if v_seen else 0.0)
    epochs = max(1, int(BUDGET_SHARE * budget_s / max(epoch_s, 1e-9)))
    del probe, opt
    return {"epochs": epochs, "epoch_s": epoch_s, "train_structures_per_s": rate,
            "budget_s": budget_s}


def fit(cfg: RunConfig, command: str = "train", force: bool = False) -> FitResult:
    """Train (or fine-tune) as configured and write the run directory.

    A run directory holding ``last.ckpt`` of the same config is resumed; one with a different
    config is refused unless ``force`` (see :func:`~matxfer.train.resume.prepare_run_dir`).
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar

    from matxfer.checkpoint import (
        _plain,
        build_checkpoint,
        check_finite_weights,
        file_sha256,
        load_checkpoint,
        save_checkpoint,
    )
    from matxfer.train.data import prepare_data
    from matxfer.train.lightning import (
        GraphDataModule,
        MatxferCheckpointIO,
        PropertyLightningModule,
        ResumeState,
        best_checkpoint,
        restore_best,
    )
    from matxfer.train.setup import build_run_model, fit_normalizers
    from matxfer.transfer import trainable_parameters

    out = Path(cfg.out or f"runs/{cfg.name}")
    resume_ckpt = prepare_run_dir(out, cfg, force) if out.is_dir() else None
    handler = _setup_logging(out)
    _quiet_lightning()
    t0 = time.time()
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        tasks = build_tasks(cfg)
        parent = None
        if cfg.transfer.init_from:
            parent = load_checkpoint(cfg.transfer.init_from)
            check_finite_weights(parent, cfg.transfer.init_from)
        model, settings, featurizer, atom_state, provenance = build_run_model(cfg, tasks, parent)
        data = prepare_data(cfg.data, tasks, settings, featurizer)
        if not data.split.train or not data.split.val:
            raise ValueError(
                f"need non-empty train and validation sets, got {len(data.split.train)} / "
                f"{len(data.split.val)} entries"
            )
        fit_normalizers(model, tasks, data.train_records(), keep=provenance.get("kept_heads", []))
        train_means = train_label_means(tasks, data.train_records())
        if parent is not None:
            provenance["parent"] = str(cfg.transfer.init_from)
            from matxfer.shipped import resolve

            provenance["parent_sha256"] = file_sha256(resolve(str(cfg.transfer.init_from)))
        provenance.update(_data_provenance(cfg, command, data, train_means))
        log.info(
            "%s: %d train / %d val / %d test; dropped %s",
            cfg.name,
            len(data.split.train),
            len(data.split.val),
            len(data.split.test),
            {k: v for k, v in data.dropped.items() if v},
        )
        data.split.save(out / "split.json")
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

        gen = torch.Generator().manual_seed(cfg.seed)
        bs = cfg.optim.batch_size
        train_graphs, val_graphs = data.subset(data.split.train), data.subset(data.split.val)
        dm = GraphDataModule(train_graphs, val_graphs, tasks, bs, sampler=cfg.data.sampler,
                             num_workers=cfg.trainer.num_workers, generator=gen)
        train_loader = dm.train_dataloader()
        lit = PropertyLightningModule(model, tasks, cfg.optim, len(train_loader))
        cached = _cache_frozen_outputs(cfg, model, settings, train_graphs + val_graphs)

        def ckpt_of(m, metrics=None):
            return build_checkpoint(
                m, tasks, settings.to_dict(), atom_state, data.split.to_dict(), provenance,
                metrics, to_dict(cfg),
            )

        best = best_checkpoint(out)

        def write_best(epoch: int) -> dict:
            val = best.current_score
            return ckpt_of(model, {"val_loss": float(val) if val is not None else None,
                                   "epoch": epoch})

        def write_last(m, state):
            ck = ckpt_of(m, {"epoch": state["epoch"] - 1})
            ck["resume"] = _plain(state, int_keys=True)
            save_checkpoint(ck, out / LAST_CKPT)  # temporary file + rename: never half written

        early = None
        if cfg.optim.patience > 0:
            early = EarlyStopping("val_loss", patience=cfg.optim.patience, mode="min")
        resume = None
        if resume_ckpt is not None:
            resume = resume_ckpt["resume"]
            model.load_state_dict(resume_ckpt["state_dict"])
            restore_best(best, resume["best"])
            if early is not None and resume.get("early_stopping") is not None:
                early.load_state_dict(resume["early_stopping"])
            log.info("%s: resuming from %s after epoch %d", cfg.name, out / LAST_CKPT, resume["epoch"])
        callbacks: list[Any] = [best, ResumeState(write_last, gen, early, best, resume)]
        if early is not None:
            callbacks.append(early)
        show_bar = cfg.trainer.progress and os.environ.get("MATXFER_PROGRESS", "1") != "0"
        if show_bar:
            callbacks.append(TQDMProgressBar(refresh_rate=max(1, len(train_loader) // 10)))
        if cfg.optim.budget_min:
            # the budget is for training: data preparation and frozen-feature caching before
            # it are reported beside it (provenance.budget.prepare_s), not counted
            provenance["budget"] = _apply_budget(cfg, model, tasks, dm, resume_ckpt, time.time() - t0)
            lit.optim_cfg = cfg.optim
        trainer = _trainer(cfg, out, callbacks, MatxferCheckpointIO(write_best), show_bar,
                           len(train_loader))
        earlier_csv = None
        if resume is not None:
            start_at_epoch(trainer, int(resume["epoch"]), int(resume.get("global_step", 0)))
            earlier_csv = stash_csv_log(out / "logs")
            import warnings

            # the earlier rows are put back after the fit (merge_csv_logs)
            warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
        try:
            if resume is None or not resume.get("finished"):
                trainer.fit(lit, datamodule=dm)
            if resume is not None and trainer.is_global_zero:
                merge_csv_logs(out / "logs" / "metrics.csv", earlier_csv, int(resume["epoch"]))
                (out / "logs" / STASHED_CSV).unlink(missing_ok=True)
        finally:
            if cached:
                from matxfer.feature_cache import detach_outputs, stop_reading_cached_outputs

                stop_reading_cached_outputs(model.backbone)
                detach_outputs(cached)
        if not trainer.is_global_zero:
            # other processes of a multi-device run: rank 0 evaluates and writes the run
            return FitResult(out, out / "model.ckpt", {}, time.time() - t0,
                             trainable_parameters(model), -1)
        best_epoch = -1
        if best.best_model_path and Path(best.best_model_path).is_file():
            best_ck = load_checkpoint(best.best_model_path)
            model.load_state_dict(best_ck["state_dict"])
            best_epoch = int((best_ck.get("metrics") or {}).get("epoch", -1))
        model.eval()
        model.cpu()
        metrics = _evaluate_splits(cfg, model, tasks, data, train_means, out)
        wall = time.time() - t0
        metrics["best_epoch"] = best_epoch
        metrics["epochs_run"] = max(trainer.current_epoch, int(resume["epoch"]) if resume else 0)
        metrics["wall_time_s"] = wall
        n_train = trainable_parameters(model)
        metrics["trainable_params"] = n_train
        ck = save_checkpoint(ckpt_of(model, metrics), out / "model.ckpt")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
        log.info("%s: done in %.1f s; test metrics %s", cfg.name, wall, metrics.get("test"))
        return FitResult(out, ck, metrics, wall, n_train, best_epoch)
    finally:
        logging.getLogger("matxfer").removeHandler(handler)
        handler.close()


def _apply_budget(cfg: RunConfig, model, tasks, dm, resume_ckpt, prepare_s: float) -> dict:
    """Size ``cfg.optim`` (epochs, hard stop) to the wall-clock budget; return the plan.

    A resumed run keeps the schedule it was planned with (stored in its provenance).
    """
    plan = ((resume_ckpt or {}).get("provenance") or {}).get("budget")
    if plan is None:
        plan = plan_budget(model, tasks, dm.train_dataloader(), dm.val_dataloader(),
                           float(cfg.optim.budget_min or 0))
        plan["prepare_s"] = round(prepare_s, 2)
    plan = {k: v for k, v in plan.items() if k != "budget_min"}
    cfg.optim.epochs = plan["epochs"]
    cfg.optim.max_time_min = cfg.optim.budget_min
    log.info("budget %.1f min: %.1f s per epoch measured -> %d epochs",
             cfg.optim.budget_min, plan["epoch_s"], plan["epochs"])
    return {**plan, "budget_min": cfg.optim.budget_min}


def _trainer(cfg: RunConfig, out: Path, callbacks: list, checkpoint_io, show_bar: bool,
             steps_per_epoch: int):
    """The Lightning trainer of a run (CSV log in ``out/logs``, matxfer-format checkpoints)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    max_time = None
    if cfg.optim.max_time_min:
        max_time = datetime.timedelta(minutes=float(cfg.optim.max_time_min))
    return L.Trainer(
        max_epochs=cfg.optim.epochs,
        max_time=max_time,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy,
        precision=cast(Any, cfg.trainer.precision),  # checked by Lightning
        deterministic=cfg.trainer.deterministic,
        gradient_clip_val=cfg.optim.grad_clip or None,
        callbacks=callbacks,
        plugins=[checkpoint_io],
        logger=CSVLogger(str(out), name="logs", version=""),
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        num_sanity_val_steps=0,
        # plain no_grad for validation: conservative forces (-dE/dpos) need autograd there
        inference_mode=False,
    )


def _evaluate_splits(cfg: RunConfig, model, tasks, data, train_means, out: Path) -> dict[str, Any]:
    """Validation and test metrics of the final model; test predictions to
    ``out/test_predictions.json``."""
    metrics: dict[str, Any] = {}
    for split_name in ("val", "test"):
        ids = getattr(data.split, split_name)
        if ids:
            m, pairs = evaluate_graphs(
                model, tasks, data.subset(ids), batch_size=max(cfg.optim.batch_size, 64),
                symprec=cfg.trainer.symprec, train_means=train_means,
            )
            metrics[split_name] = m
            if split_name == "test":
                _write_predictions(out / "test_predictions.json", pairs)
    return metrics


def _data_provenance(cfg: RunConfig, command: str, data, train_means) -> dict[str, Any]:
    """What a checkpoint records of the data it was trained on."""
    return {
        "data_fingerprint": data.fingerprint,
        "datasets": list(cfg.data.datasets),
        "dropped": data.dropped,
        "command": command,
        "seed": cfg.seed,
        "train_label_means": {k: v.tolist() for k, v in train_means.items()},
        # elements of the training crystals (prediction warns about others)
        "train_elements": sorted(
            {e.symbol for r in data.train_records() for e in r.structure.composition.element_composition}
        ),
        "symprec": cfg.trainer.symprec,
    }
