"""Training with Lightning: masked multi-task loss, AdamW, schedule, early stopping.

:func:`fit` is what ``matxfer train`` and ``matxfer finetune`` run. It writes into the run
directory: ``best.ckpt`` (matxfer format, updated whenever validation improves, so an
interrupted run keeps its best model), ``last.ckpt`` (written atomically after every epoch:
the matxfer checkpoint plus the state to resume from), ``model.ckpt`` (the final best model
with test metrics), ``metrics.json``, ``split.json``, ``config.yaml``, Lightning's CSV logs and
``train.log``.

Resuming: a rerun on the same run directory continues from ``last.ckpt`` and ends with the
same weights as an uninterrupted run. ``last.ckpt`` stays plain data and tensors (loadable with
``torch.load(weights_only=True)``): weights, optimiser and scheduler state dicts, the RNG
states (torch, CUDA, numpy, Python, the data loader's generator) as tensors and lists, the
number of completed epochs, the best-so-far weights and the early-stopping counters. Lightning
itself starts a fresh fit whose epoch counter is set to the completed epochs; its own
``ckpt_path=`` resume is not used, because its checkpoint is a pickle of loop and callback
objects, it leaves the RNG and loader-generator states out (so the batch order after a resume
would differ), and a checkpoint written at the end of an epoch restarts there through
version-dependent "restart stage" logic. A rerun with a different config on a run directory is
refused (naming the differing keys) unless ``force`` is given, which starts afresh.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from matxfer.config import RunConfig, TaskConfig, to_dict
from matxfer.inference import evaluate_graphs
from matxfer.keys import label_key, mask_key
from matxfer.tasks import FORCES, SCALAR, TENSOR, Task, make_task

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------


def _elementwise(loss: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if loss == "mse":
        return (pred - target) ** 2
    if loss == "l1":
        return (pred - target).abs()
    return torch.nn.functional.huber_loss(pred, target, reduction="none", delta=1.0)


@functools.cache
def _irrep_blocks(formula: str) -> tuple[tuple[int, ...], int]:
    """Block id of every irreps component of a tensor formula, and the number of blocks."""
    from matxfer.normalize import cartesian_basis

    irreps, _ = cartesian_basis(formula)
    ids: list[int] = []
    block = 0
    for mul, ir in irreps:
        for _ in range(mul):
            ids.extend([block] * ir.dim)
            block += 1
    return tuple(ids), block


def entry_loss(task: Task, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of each labelled row (crystal, or atom for per-atom tensors) -> ``[rows]``.

    Scalars: the element-wise loss. Tensors (irreps rows) and forces: ``mse`` is the mean
    squared component error; ``l1`` / ``huber`` apply to the Euclidean norm of each irrep
    block's error (the whole vector for a force) and are averaged over blocks, which keeps
    the loss rotation invariant.
    """
    if task.loss == "mse" or pred.ndim == 1 or (task.kind != FORCES and task.formula is None):
        per = _elementwise(task.loss, pred, target)
        return per.reshape(per.shape[0], -1).mean(dim=1) if per.ndim > 1 else per
    if task.kind == FORCES:  # one l = 1 block per atom: the length of the error vector
        norm = torch.sqrt(((pred - target) ** 2).sum(-1) + 1e-12)
        return _elementwise(task.loss, norm, torch.zeros_like(norm))
    ids, n_blocks = _irrep_blocks(task.formula)
    if pred.shape[-1] != len(ids):
        raise ValueError(
            f"task {task.name!r}: prediction has {pred.shape[-1]} irreps components, the "
            f"formula {task.formula!r} has {len(ids)}"
        )
    index = torch.tensor(ids, device=pred.device)
    err2 = (pred - target) ** 2
    sq = err2.new_zeros((err2.shape[0], n_blocks)).index_add_(1, index, err2)
    norm = torch.sqrt(sq + 1e-12)  # finite gradient at zero error
    return _elementwise(task.loss, norm, torch.zeros_like(norm)).mean(dim=1)


def normalized_target(model, task: Task, y: torch.Tensor) -> torch.Tensor:
    """Label in the normalised space the head predicts in (irreps for tensors)."""
    norm = model.normalizers[task.name]
    if task.kind in (SCALAR, FORCES):
        return norm.normalize(y)
    return norm.normalize(norm.from_cartesian(y))


def task_losses(model, tasks: dict[str, Task], out: dict, batch) -> dict[str, torch.Tensor]:
    """Per-task mean loss over the entries that carry the label (absent labels add nothing).

    Returns:
        task -> scalar loss; tasks without any label in the batch are left out.
    """
    losses = {}
    for name, task in tasks.items():
        mask = batch[mask_key(name)].bool()
        if not bool(mask.any()):
            continue
        y = batch[label_key(name)][mask]
        pred = out[name][mask]
        target = normalized_target(model, task, y).to(pred.dtype)
        per = entry_loss(task, pred, target)
        if task.sign_agnostic:
            per = torch.minimum(per, entry_loss(task, pred, -target))
        if task.weighting == "relative":
            norm = target.reshape(target.shape[0], -1).norm(dim=1)
            per = per / norm.clamp_min(task.relative_floor)
        losses[name] = per.mean()
    return losses


def total_loss(tasks: dict[str, Task], losses: dict[str, torch.Tensor]) -> torch.Tensor:
    tot = None
    for name, l in losses.items():
        term = tasks[name].weight * l
        tot = term if tot is None else tot + term
    if tot is None:
        raise ValueError("a batch without any label for any task")
    return tot


# ----------------------------------------------------------------------------------------
# Lightning module
# ----------------------------------------------------------------------------------------


def _lit_module_class():
    import lightning as L

    from matxfer.transfer import param_groups, set_frozen_eval

    class LitModel(L.LightningModule):
        def __init__(self, model, tasks: dict[str, Task], optim_cfg, steps_per_epoch: int):
            super().__init__()
            self.model = model
            self.tasks = tasks
            self.optim_cfg = optim_cfg
            self.steps_per_epoch = max(1, steps_per_epoch)
            self._t0 = time.time()

        def forward(self, batch):
            return self.model(batch)

        def on_train_epoch_start(self):
            set_frozen_eval(self.model)

        def _step(self, batch):
            out = self.model(batch)
            losses = task_losses(self.model, self.tasks, out, batch)
            return total_loss(self.tasks, losses), losses

        def training_step(self, batch, batch_idx):
            loss, losses = self._step(batch)
            bs = int(batch.num_graphs)
            self.log("train_loss", loss, batch_size=bs, on_step=False, on_epoch=True, prog_bar=True)
            for name, l in losses.items():
                self.log(f"train_loss/{name}", l, batch_size=bs, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            loss, losses = self._step(batch)
            bs = int(batch.num_graphs)
            # averaged over the processes of a multi-device run, so that every rank takes the
            # same early-stopping and best-model decisions
            self.log("val_loss", loss, batch_size=bs, on_step=False, on_epoch=True, prog_bar=True,
                     sync_dist=True)
            for name, l in losses.items():
                self.log(f"val_loss/{name}", l, batch_size=bs, on_step=False, on_epoch=True,
                         sync_dist=True)

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
                total = oc.epochs * self.steps_per_epoch
                warm = min(oc.warmup_epochs * self.steps_per_epoch, max(total - 1, 0))
                if oc.budget_min:  # a budgeted run: the warm-up never swallows the schedule
                    warm = min(warm, int(0.05 * total))

                def lr_lambda(step):
                    if step < warm:
                        return (step + 1) / (warm + 1)
                    prog = (step - warm) / max(1, total - warm)
                    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))

                sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
            if oc.scheduler == "plateau":
                sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(2, oc.patience // 3))
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
            if oc.scheduler == "none":
                return opt
            raise ValueError(f"unknown scheduler {oc.scheduler!r}; valid: cosine, plateau, none")

    return LitModel


def _best_tracker_class():
    import lightning as L

    class BestTracker(L.Callback):
        """Keeps the best-validation weights in memory and writes ``best.ckpt`` each time."""

        def __init__(self, on_improve):
            self.best = math.inf
            self.best_epoch = -1
            self.best_state = None
            self.on_improve = on_improve

        def resume_state(self) -> dict:
            state = None
            if self.best_state is not None:
                state = {k: v.detach().cpu().clone() for k, v in self.best_state.items()}
            return {"best": self.best, "best_epoch": self.best_epoch, "best_state": state}

        def restore(self, state: dict) -> None:
            self.best = float(state["best"])
            self.best_epoch = int(state["best_epoch"])
            self.best_state = state.get("best_state")

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            val = trainer.callback_metrics.get("val_loss")
            if val is None:
                return
            val = float(val)
            if val < self.best:
                self.best = val
                self.best_epoch = trainer.current_epoch
                self.best_state = copy.deepcopy(pl_module.model.state_dict())
                if trainer.is_global_zero:  # one writer in a multi-process run
                    self.on_improve(pl_module.model, val, trainer.current_epoch)

    return BestTracker


# ----------------------------------------------------------------------------------------
# resuming
# ----------------------------------------------------------------------------------------

LAST_CKPT = "last.ckpt"
#: config keys that may differ between a run and its rerun
_RESUME_IGNORED_KEYS = {"out"}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts (``out`` ignored)."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in _RESUME_IGNORED_KEYS)
    return [k for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")]


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state training draws from, as tensors, lists and numbers."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [t.clone() for t in torch.cuda.get_rng_state_all()]
    return {
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": [int(x) for x in py_state], "gauss": gauss},
        "generator": None if generator is None else generator.get_state().clone(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def prepare_run_dir(out: Path, cfg: RunConfig, force: bool = False) -> dict[str, Any] | None:
    """Check a run directory before training; return its ``last.ckpt`` to resume from, or None.

    A directory holding a run (``last.ckpt`` or ``config.yaml``) of a different config is
    refused unless ``force``. With ``force``, or when there is nothing to resume, the earlier
    checkpoints and metrics are removed and training starts afresh.

    Raises:
        ValueError: the config differs (the message names the differing keys), or
            ``last.ckpt`` is unreadable.
    """
    from matxfer.checkpoint import load_checkpoint

    last = out / LAST_CKPT
    new = to_dict(cfg)
    ckpt = None
    old = None
    if last.is_file() and not force:
        try:
            ckpt = load_checkpoint(last)
        except ValueError as exc:
            raise ValueError(f"{exc}; rerun with --force to start {out} afresh") from None
        if "resume" not in ckpt:
            raise ValueError(f"{last} holds no resume state; rerun with --force to start afresh")
        old = ckpt.get("config") or {}
    elif (out / "config.yaml").is_file() and not force:
        old = yaml.safe_load((out / "config.yaml").read_text()) or {}
    if old is not None:
        diff = config_differences(old, new)
        if diff:
            fo, fn = _flatten(old), _flatten(new)
            shown = ", ".join(
                f"{k} ({fo.get(k, '<absent>')!r} -> {fn.get(k, '<absent>')!r})" for k in diff[:8]
            )
            more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
            raise ValueError(
                f"{out} holds a run with a different config; differing keys: {shown}{more}. "
                "Use another --out, or --force to discard that run and start afresh"
            )
    if ckpt is None:  # a fresh start: nothing of an earlier run may pass for this one's
        for name in (LAST_CKPT, "best.ckpt", "model.ckpt", "metrics.json", "test_predictions.json"):
            (out / name).unlink(missing_ok=True)
    return ckpt


def _resume_callback_class():
    import lightning as L

    class ResumeState(L.Callback):
        """Writes ``last.ckpt`` after every epoch; restores optimiser, scheduler and RNG
        states at the start of a resumed fit."""

        def __init__(self, write, generator, early_stopping, tracker, resume=None):
            self.write = write
            self.generator = generator
            self.early_stopping = early_stopping
            self.tracker = tracker
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
                "best": self.tracker.resume_state(),
                "early_stopping": None
                if self.early_stopping is None
                else self.early_stopping.state_dict(),
            }
            if trainer.is_global_zero:
                self.write(pl_module.model, state)

    return ResumeState


def _start_at_epoch(trainer, epoch: int, global_step: int) -> None:
    """Make a fresh Lightning fit count on from ``epoch`` completed epochs."""
    prog = trainer.fit_loop.epoch_progress
    for tracker in (prog.total, prog.current):
        tracker.ready = tracker.started = tracker.processed = tracker.completed = epoch
    loop = trainer.fit_loop.epoch_loop
    if hasattr(loop, "_batches_that_stepped"):
        loop._batches_that_stepped = global_step  # the CSV log's step column continues


#: the CSV log of the epochs before a resume, kept until it is merged back
STASHED_CSV = "metrics.before_resume.csv"


def _csv_rows(text: str) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def _csv_text(rows: list[dict[str, str]]) -> str:
    """CSV of ``rows`` under the union of their columns (first-seen order)."""
    import csv
    import io

    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _stash_csv_log(logs: Path) -> str | None:
    """Move the CSV log of an interrupted run aside before resuming, and return its text.

    Lightning's CSV logger appends to an existing ``metrics.csv`` under a header of its own
    and fails when the old rows have other columns, so the file is moved to
    :data:`STASHED_CSV` (rows of an earlier stash, left by a run interrupted again before
    its merge, come first) and merged back after the fit (:func:`_merge_csv_logs`).
    """
    texts = [p.read_text() for p in (logs / STASHED_CSV, logs / "metrics.csv") if p.is_file()]
    if not texts:
        return None
    text = _csv_text([r for t in texts for r in _csv_rows(t)])
    (logs / STASHED_CSV).write_text(text)
    (logs / "metrics.csv").unlink(missing_ok=True)
    return text


def _merge_csv_logs(path: Path, earlier: str | None, start_epoch: int) -> None:
    """Put back the rows of the epochs before a resume (Lightning's CSV logger restarts its file)."""
    if not earlier:
        return
    old_rows = [
        r
        for r in _csv_rows(earlier)
        if r.get("epoch") not in (None, "") and int(float(r["epoch"])) < start_epoch
    ]
    new_rows = _csv_rows(path.read_text()) if path.is_file() else []
    path.write_text(_csv_text(old_rows + new_rows))


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


def task_balanced_sampler(graphs, tasks: dict[str, Task], generator):
    """Weighted sampler: a crystal's weight is 1 / (number of crystals with its rarest task)."""
    from torch.utils.data import WeightedRandomSampler

    counts = {t: sum(bool(g[mask_key(t)].any()) for g in graphs) for t in tasks}
    weights = []
    for g in graphs:
        present = [counts[t] for t in tasks if bool(g[mask_key(t)].any())]
        weights.append(1.0 / min(present) if present else 0.0)
    return WeightedRandomSampler(torch.tensor(weights, dtype=torch.double), num_samples=len(graphs),
                                 replacement=True, generator=generator)


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
    config is refused unless ``force`` (see :func:`prepare_run_dir`).
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger
    from torch_geometric.loader import DataLoader

    from matxfer.checkpoint import (
        _plain,
        build_checkpoint,
        file_sha256,
        load_checkpoint,
        save_checkpoint,
    )
    from matxfer.train.data import prepare_data
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
        parent = load_checkpoint(cfg.transfer.init_from) if cfg.transfer.init_from else None
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

            provenance["parent_sha256"] = file_sha256(resolve(cfg.transfer.init_from))
        provenance.update(
            {
                "data_fingerprint": data.fingerprint,
                "datasets": list(cfg.data.datasets),
                "dropped": data.dropped,
                "command": command,
                "seed": cfg.seed,
                "train_label_means": {k: v.tolist() for k, v in train_means.items()},
                # elements of the training crystals (prediction warns about others)
                "train_elements": sorted(
                    {
                        e.symbol
                        for r in data.train_records()
                        for e in r.structure.composition.element_composition
                    }
                ),
                "symprec": cfg.trainer.symprec,
            }
        )
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
        train_graphs = data.subset(data.split.train)
        sampler = task_balanced_sampler(train_graphs, tasks, gen) if cfg.data.sampler == "balanced" else None
        if cfg.data.sampler not in ("uniform", "balanced"):
            raise ValueError(f"data.sampler={cfg.data.sampler!r}; valid: uniform, balanced")
        train_loader = DataLoader(
            train_graphs, batch_size=bs, shuffle=sampler is None, sampler=sampler,
            generator=gen if sampler is None else None, num_workers=cfg.trainer.num_workers,
        )
        val_graphs = data.subset(data.split.val)
        val_loader = DataLoader(val_graphs, batch_size=bs, num_workers=cfg.trainer.num_workers)
        LitModel = _lit_module_class()
        lit = LitModel(model, tasks, cfg.optim, len(train_loader))
        cached = _cache_frozen_outputs(cfg, model, settings, train_graphs + val_graphs)

        def ckpt_of(m, metrics=None):
            return build_checkpoint(
                m, tasks, settings.to_dict(), atom_state, data.split.to_dict(), provenance,
                metrics, to_dict(cfg),
            )

        def on_improve(m, val, epoch):
            save_checkpoint(ckpt_of(m, {"val_loss": val, "epoch": epoch}), out / "best.ckpt")

        def write_last(m, state):
            ck = ckpt_of(m, {"epoch": state["epoch"] - 1})
            ck["resume"] = _plain(state, int_keys=True)
            save_checkpoint(ck, out / LAST_CKPT)  # temporary file + rename: never half written

        tracker = _best_tracker_class()(on_improve)
        early = None
        if cfg.optim.patience > 0:
            early = EarlyStopping("val_loss", patience=cfg.optim.patience, mode="min")
        resume = None
        if resume_ckpt is not None:
            resume = resume_ckpt["resume"]
            model.load_state_dict(resume_ckpt["state_dict"])
            tracker.restore(resume["best"])
            if early is not None and resume.get("early_stopping") is not None:
                early.load_state_dict(resume["early_stopping"])
            log.info("%s: resuming from %s after epoch %d", cfg.name, out / LAST_CKPT, resume["epoch"])
        callbacks = [tracker, _resume_callback_class()(write_last, gen, early, tracker, resume)]
        if early is not None:
            callbacks.append(early)
        show_bar = cfg.trainer.progress and os.environ.get("MATXFER_PROGRESS", "1") != "0"
        if show_bar:
            callbacks.append(TQDMProgressBar(refresh_rate=max(1, len(train_loader) // 10)))
        if cfg.optim.budget_min:
            # the budget is for training: data preparation and frozen-feature caching before
            # it are reported beside it (provenance.budget.prepare_s), not counted
            prep_s = time.time() - t0
            plan = ((resume_ckpt or {}).get("provenance") or {}).get("budget")
            if plan is None:  # a resumed run keeps the schedule it was planned with
                plan = plan_budget(model, tasks, train_loader, val_loader, cfg.optim.budget_min)
                plan["prepare_s"] = round(prep_s, 2)
            plan = {k: v for k, v in plan.items() if k != "budget_min"}
            cfg.optim.epochs = plan["epochs"]
            cfg.optim.max_time_min = cfg.optim.budget_min
            lit.optim_cfg = cfg.optim
            provenance["budget"] = {**plan, "budget_min": cfg.optim.budget_min}
            log.info("budget %.1f min: %.1f s per epoch measured -> %d epochs",
                     cfg.optim.budget_min, plan["epoch_s"], plan["epochs"])
        max_time = None
        if cfg.optim.max_time_min:
            max_time = {"minutes": float(cfg.optim.max_time_min)}
        trainer = L.Trainer(
            max_epochs=cfg.optim.epochs,
            max_time=max_time,
            accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices,
            num_nodes=cfg.trainer.num_nodes,
            strategy=cfg.trainer.strategy,
            precision=cfg.trainer.precision,
            deterministic=cfg.trainer.deterministic,
            gradient_clip_val=cfg.optim.grad_clip or None,
            callbacks=callbacks,
            logger=CSVLogger(str(out), name="logs", version=""),
            enable_checkpointing=False,
            enable_progress_bar=show_bar,
            enable_model_summary=False,
            log_every_n_steps=max(1, min(50, len(train_loader))),
            num_sanity_val_steps=0,
            # plain no_grad for validation: conservative forces (-dE/dpos) need autograd there
            inference_mode=False,
        )
        earlier_csv = None
        if resume is not None:
            _start_at_epoch(trainer, int(resume["epoch"]), int(resume.get("global_step", 0)))
            earlier_csv = _stash_csv_log(out / "logs")
            import warnings

            # the earlier rows are put back after the fit (_merge_csv_logs)
            warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
        try:
            if resume is None or not resume.get("finished"):
                trainer.fit(lit, train_loader, val_loader)
            if resume is not None and trainer.is_global_zero:
                _merge_csv_logs(out / "logs" / "metrics.csv", earlier_csv, int(resume["epoch"]))
                (out / "logs" / STASHED_CSV).unlink(missing_ok=True)
        finally:
            if cached:
                from matxfer.feature_cache import detach_outputs, stop_reading_cached_outputs

                stop_reading_cached_outputs(model.backbone)
                detach_outputs(cached)
        if tracker.best_state is not None:
            model.load_state_dict(tracker.best_state)
        model.eval()
        if not trainer.is_global_zero:
            # other processes of a multi-device run: rank 0 evaluates and writes the run
            return FitResult(out, out / "model.ckpt", {}, time.time() - t0,
                             trainable_parameters(model), tracker.best_epoch)
        model.cpu()
        metrics = {}
        for split_name in ("val", "test"):
            ids = getattr(data.split, split_name)
            if ids:
                m, pairs = evaluate_graphs(
                    model, tasks, data.subset(ids), batch_size=max(bs, 64),
                    symprec=cfg.trainer.symprec, train_means=train_means,
                )
                metrics[split_name] = m
                if split_name == "test":
                    _write_predictions(out / "test_predictions.json", pairs)
        wall = time.time() - t0
        metrics["best_epoch"] = tracker.best_epoch
        metrics["epochs_run"] = max(trainer.current_epoch, int(resume["epoch"]) if resume else 0)
        metrics["wall_time_s"] = wall
        n_train = trainable_parameters(model)
        metrics["trainable_params"] = n_train
        ck = save_checkpoint(ckpt_of(model, metrics), out / "model.ckpt")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
        log.info("%s: done in %.1f s; test metrics %s", cfg.name, wall, metrics.get("test"))
        return FitResult(out, ck, metrics, wall, n_train, tracker.best_epoch)
    finally:
        logging.getLogger("matxfer").removeHandler(handler)
        handler.close()
