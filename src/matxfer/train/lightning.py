"""The Lightning pieces of training: module, data module, checkpoint format, resume state.

:func:`matxfer.train.loop.fit` wires these together; each can also be imported and
subclassed on its own:

* :class:`PropertyLightningModule`: a :class:`~matxfer.models.base.PropertyModel` trained
  with the masked multi-task loss (:mod:`matxfer.train.losses`), AdamW over the transfer
  recipe's parameter groups, and linear warm-up + cosine decay from torch's schedulers. It
  logs the losses and, per task, the validation MAE in physical units (``val_mae/<task>``,
  a torchmetrics metric, so multi-device runs reduce it correctly).
* :class:`GraphDataModule`: the training and validation loaders of a split (uniform or
  task-balanced sampling, a seeded generator).
* :class:`MatxferCheckpointIO`: a Lightning checkpoint plugin that writes the matxfer
  checkpoint format (plain data + weights) wherever Lightning saves, so the stock
  ``ModelCheckpoint`` keeps ``best.ckpt`` (see :func:`best_checkpoint`).
* :class:`ResumeState`: writes ``last.ckpt`` after every epoch and restores optimiser,
  scheduler and RNG states at the start of a resumed fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO

from matxfer.keys import label_key, mask_key
from matxfer.tasks import Task
from matxfer.train.losses import task_losses, total_loss
from matxfer.train.resume import rng_state, set_rng_state
from matxfer.transfer import param_groups, set_frozen_eval


def _metric_key(task: str) -> str:
    return task.replace(".", "_")


class PropertyLightningModule(L.LightningModule):
    """A property model under Lightning: loss, logging, optimiser and schedule.

    Args:
        model: the :class:`~matxfer.models.base.PropertyModel` to train.
        tasks: task name -> :class:`~matxfer.tasks.Task` (loss, weight, kind).
        optim_cfg: the run's :class:`~matxfer.config.OptimConfig`.
        steps_per_epoch: optimiser steps per epoch (sizes the schedule).
    """

    def __init__(self, model, tasks: dict[str, Task], optim_cfg, steps_per_epoch: int):
        super().__init__()
        self.model = model
        self.tasks = tasks
        self.optim_cfg = optim_cfg
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.val_mae = torch.nn.ModuleDict(
            {_metric_key(t): torchmetrics.MeanAbsoluteError() for t in tasks}
        )
        self._t0 = time.time()

    def forward(self, batch):
        return self.model(batch)

    def on_train_epoch_start(self):
        set_frozen_eval(self.model)

    def _step(self, batch):
        out = self.model(batch)
        losses = task_losses(self.model, self.tasks, out, batch)
        return total_loss(self.tasks, losses), losses, out

    def training_step(self, batch, batch_idx):
        loss, losses, _ = self._step(batch)
        bs = int(batch.num_graphs)
        self.log("train_loss", loss, batch_size=bs, on_step=False, on_epoch=True, prog_bar=True)
        for name, l in losses.items():
            self.log(f"train_loss/{name}", l, batch_size=bs, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, losses, out = self._step(batch)
        bs = int(batch.num_graphs)
        # averaged over the processes of a multi-device run, so that every rank takes the
        # same early-stopping and best-model decisions
        self.log("val_loss", loss, batch_size=bs, on_step=False, on_epoch=True, prog_bar=True,
                 sync_dist=True)
        for name, l in losses.items():
            self.log(f"val_loss/{name}", l, batch_size=bs, on_step=False, on_epoch=True,
                     sync_dist=True)
        physical = self.model.to_physical({n: out[n].detach() for n in losses})
        for name in losses:
            mask = batch[mask_key(name)].bool()
            metric = self.val_mae[_metric_key(name)]
            pred = physical[name][mask].double()
            metric.update(pred, batch[label_key(name)][mask].to(pred.dtype))
            self.log(f"val_mae/{name}", metric, on_step=False, on_epoch=True, batch_size=bs)

    def on_validation_epoch_end(self):
        # wall-clock time since the start, so error-vs-time curves can be drawn from the CSV log
        self.log("elapsed_s", time.time() - self._t0, on_epoch=True)

    def configure_optimizers(self):
        oc = self.optim_cfg
        groups = param_groups(self.model, oc.lr, oc.lr_mult, oc.layer_decay, oc.weight_decay)
        if not groups:
            raise ValueError("no trainable parameters (everything is frozen)")
        opt = torch.optim.AdamW(groups, lr=oc.lr)
        if oc.scheduler == "cosine":
            sched = warmup_cosine(opt, oc.epochs * self.steps_per_epoch,
                                  oc.warmup_epochs * self.steps_per_epoch, bool(oc.budget_min))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if oc.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=0.5, patience=max(2, oc.patience // 3))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        if oc.scheduler == "none":
            return opt
        raise ValueError(f"unknown scheduler {oc.scheduler!r}; valid: cosine, plateau, none")


def warmup_cosine(opt, total_steps: int, warmup_steps: int, budgeted: bool = False):
    """Linear warm-up, then cosine decay to zero over the remaining steps (per step).

    The warm-up takes ``warmup_steps`` (at most ``total_steps - 1``; in a budgeted run at
    most 5 % of the steps, so a short budget is not spent ramping up): the rate starts at
    ``1 / (warmup + 1)`` of each group's rate and reaches it after the warm-up. Built from
    torch's ``LinearLR``, ``CosineAnnealingLR`` and ``SequentialLR``.
    """
    from torch.optim import lr_scheduler as S

    total = max(1, total_steps)
    warm = min(warmup_steps, max(total - 1, 0))
    if budgeted:
        warm = min(warm, int(0.05 * total))
    decay = S.CosineAnnealingLR(opt, T_max=max(1, total - warm), eta_min=0.0)
    if warm <= 0:
        return decay
    ramp = S.LinearLR(opt, start_factor=1.0 / (warm + 1), end_factor=1.0, total_iters=warm)
    return S.SequentialLR(opt, [ramp, decay], milestones=[warm])


class GraphDataModule(L.LightningDataModule):
    """Training and validation loaders over lists (or datasets) of crystal graphs.

    The loaders are built once and returned on every call, so that a run measuring its
    throughput before the fit (a wall-clock budget) and the fit draw from one generator.

    Args:
        train: training graphs; val: validation graphs.
        tasks: the run's tasks (for ``sampler="balanced"``).
        batch_size, num_workers: loader settings.
        sampler: ``uniform`` (shuffle) or ``balanced`` (a crystal's weight is 1 / the number
            of crystals carrying its rarest task).
        generator: the seeded generator of the shuffle / sampler.
    """

    def __init__(self, train: Sequence, val: Sequence, tasks: dict[str, Task], batch_size: int,
                 sampler: str = "uniform", num_workers: int = 0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if sampler not in ("uniform", "balanced"):
            raise ValueError(f"data.sampler={sampler!r}; valid: uniform, balanced")
        self.train, self.val, self.tasks = train, val, tasks
        self.batch_size, self.sampler, self.num_workers = batch_size, sampler, num_workers
        self.generator = generator
        self._loaders: dict[str, Any] = {}

    def train_dataloader(self):
        if "train" not in self._loaders:
            from torch_geometric.loader import DataLoader

            sampler = None
            if self.sampler == "balanced":
                sampler = task_balanced_sampler(self.train, self.tasks, self.generator)
            self._loaders["train"] = DataLoader(
                self.train, batch_size=self.batch_size, shuffle=sampler is None, sampler=sampler,
                generator=self.generator if sampler is None else None,
                num_workers=self.num_workers,
            )
        return self._loaders["train"]

    def val_dataloader(self):
        if "val" not in self._loaders:
            from torch_geometric.loader import DataLoader

            self._loaders["val"] = DataLoader(self.val, batch_size=self.batch_size,
                                              num_workers=self.num_workers)
        return self._loaders["val"]


def task_balanced_sampler(graphs, tasks: dict[str, Task], generator):
    """Weighted sampler: a crystal's weight is 1 / (number of crystals with its rarest task)."""
    from torch.utils.data import WeightedRandomSampler

    counts = {t: sum(bool(g[mask_key(t)].any()) for g in graphs) for t in tasks}
    weights = []
    for g in graphs:
        present = [counts[t] for t in tasks if bool(g[mask_key(t)].any())]
        weights.append(1.0 / min(present) if present else 0.0)
    return WeightedRandomSampler(weights, num_samples=len(graphs), replacement=True,
                                 generator=generator)


class MatxferCheckpointIO(CheckpointIO):
    """Writes the matxfer checkpoint format wherever Lightning saves a checkpoint.

    Lightning hands over its own checkpoint dict (the module's weights and loop counters);
    the file written instead is ``build(epoch)``: the matxfer checkpoint of the model as it
    is at that moment (its weights are the ones Lightning is saving), written through a
    temporary file and a rename. Lightning calls this on the global-zero process only.

    Args:
        build: completed epoch index -> matxfer checkpoint dict.
    """

    def __init__(self, build: Callable[[int], dict]):
        self.build = build

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        from matxfer.checkpoint import save_checkpoint

        save_checkpoint(self.build(int(checkpoint.get("epoch", -1))), Path(path))

    def load_checkpoint(self, path, map_location=None, weights_only=True):
        from matxfer.checkpoint import load_checkpoint

        return load_checkpoint(Path(path))

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


def best_checkpoint(dirpath: Path, filename: str = "best") -> ModelCheckpoint:
    """Lightning's ``ModelCheckpoint`` keeping the lowest-``val_loss`` model as
    ``dirpath/best.ckpt`` (in the matxfer format through :class:`MatxferCheckpointIO`),
    saved after validation, before the epoch's ``last.ckpt`` is written."""
    return ModelCheckpoint(
        dirpath=str(dirpath), filename=filename, monitor="val_loss", mode="min", save_top_k=1,
        save_weights_only=True, save_on_train_epoch_end=False, enable_version_counter=False,
        auto_insert_metric_name=False,
    )


class ResumeState(L.Callback):
    """Writes ``last.ckpt`` after every epoch; restores optimiser, scheduler and RNG states
    at the start of a resumed fit.

    Args:
        write: ``(model, state)`` -> None, writes ``last.ckpt`` with ``state`` as its resume
            part (called on the global-zero process).
        generator: the data loader's generator (its state is saved and restored).
        early_stopping, best: the run's ``EarlyStopping`` (or None) and ``ModelCheckpoint``,
            whose states are saved with each epoch.
        resume: the resume part of the ``last.ckpt`` being resumed from, or None.
    """

    def __init__(self, write, generator, early_stopping, best: ModelCheckpoint, resume=None):
        self.write = write
        self.generator = generator
        self.early_stopping = early_stopping
        self.best = best
        self.resume = resume

    def on_train_start(self, trainer, pl_module):
        r = self.resume
        if r is None:
            return
        for opt, st in zip(trainer.optimizers, r["optimizers"]):
            opt.load_state_dict(st)
        for conf, st in zip(trainer.lr_scheduler_configs, r["schedulers"]):
            conf.scheduler.load_state_dict(st)
        # after Lightning has set up the training data loader, before the first batch
        set_rng_state(r["rng"], self.generator)

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1  # completed epochs
        state = {
            "epoch": epoch,
            "finished": bool(trainer.should_stop) or epoch >= (trainer.max_epochs or 0),
            "global_step": int(trainer.global_step),
            "optimizers": [opt.state_dict() for opt in trainer.optimizers],
            "schedulers": [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
            "rng": rng_state(self.generator),
            "best": best_state(self.best),
            "early_stopping": None
            if self.early_stopping is None
            else self.early_stopping.state_dict(),
        }
        if trainer.is_global_zero:
            self.write(pl_module.model, state)


def best_state(best: ModelCheckpoint) -> dict[str, Any]:
    """What a resumed run needs of ``best``: its score and path (plain data)."""
    score = best.best_model_score
    return {
        "best": float(score) if score is not None else float("inf"),
        "best_model_path": best.best_model_path,
    }


def restore_best(best: ModelCheckpoint, state: dict[str, Any]) -> None:
    """Restore :func:`best_state` into a fresh ``ModelCheckpoint`` (same directory)."""
    path = state.get("best_model_path") or ""
    if not path:
        return
    score = torch.tensor(float(state["best"]))
    best.best_model_path = best.kth_best_model_path = path
    best.best_model_score = best.kth_value = score
    best.best_k_models = {path: score}
