"""Run configuration: frozen dataclass schemas loaded from YAML with ``key=value`` overrides.

Unknown keys are errors everywhere. Dotted overrides on the command line
(``optim.lr=1e-3 model.backbone.n_layers=2``) are parsed as YAML scalars.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class SplitConfig:
    """How to split the labelled entries.

    Attributes:
        fractions: train/val/test fractions.
        seed: split seed (ids are ranked by a hash of seed and id).
        sizes: absolute train/val/test sizes instead (None entries take the rest).
        file: a saved split (JSON with train/val/test id lists) to use as is.
    """

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    sizes: tuple[int | None, int | None, int | None] | None = None
    file: str | None = None


@dataclass
class DataConfig:
    """Which data to train on.

    Attributes:
        datasets: registry names; several are merged by material id (each material keeps the
            labels it has).
        targets: the labels to learn (one head each).
        limit: parse at most this many entries per dataset (quick runs).
        validate: drop entries that fail ``matxfer data validate``.
        exclude_ids_from: datasets whose material ids are removed (leakage control).
        exclude_ids: explicit ids to remove.
        train_size: subsample the training split to this size (learning curves).
        data_dir: data directory (default ``$MATXFER_DATA_DIR`` / ``../shared/data``).
        sampler: ``uniform`` or ``balanced`` (multi-task: each training crystal is drawn with
            probability proportional to 1 / (count of its rarest task), so rare tasks do not
            starve).
    """

    datasets: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    limit: int | None = None
    validate: bool = True
    exclude_ids_from: list[str] = field(default_factory=list)
    exclude_ids: list[str] = field(default_factory=list)
    train_size: int | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    data_dir: str | None = None
    sampler: str = "uniform"


@dataclass
class GraphConfig:
    """Graph settings; ``None`` fields take the backbone's defaults."""

    cutoff: float | None = None
    max_neighbors: int | None = None
    fallback_k: int = 12
    line_graph: bool | None = None
    keep_shell: bool | None = None
    atom_features: str | None = None
    atom_table: str | None = None  # path of an atom_init.json for atom_features="table"


@dataclass
class TaskConfig:
    """Per-task settings.

    Attributes:
        weight: weight of the task in the summed loss.
        loss: ``mse``, ``l1`` or ``huber``; default ``mse`` for scalars and ``l1`` (on the
            norm of each irrep block's error) for tensors.
        weighting: ``none`` or ``relative``: divide each crystal's loss by the norm of its
            (normalised) label, floored at ``relative_floor``, so heavy-tailed tensor labels
            are fitted in relative error instead of being dominated by the few largest.
        relative_floor: floor of that norm, in normalised units.
        sign_agnostic: score each crystal by the better of ``y`` and ``-y`` (a diagnostic for
            labels whose polar axis may point against the structure's; odd-rank tensors only).
        parameterization: ``linear`` or ``log_isotropic`` (dielectric and elastic tensors:
            the model predicts the log of the isotropic moduli and the anisotropy relative to
            them, so heavy-tailed labels are fitted in relative error).
    """

    weight: float = 1.0
    loss: str | None = None
    weighting: str = "none"
    relative_floor: float = 0.1
    sign_agnostic: bool = False
    parameterization: str = "linear"


@dataclass
class OptimConfig:
    """Optimiser and schedule.

    Attributes:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        epochs: maximum epochs.
        batch_size: graphs per batch.
        scheduler: ``cosine`` (with linear warm-up), ``plateau`` or ``none``.
        warmup_epochs: linear warm-up length for ``cosine``.
        patience: early-stopping patience in epochs (0 disables early stopping).
        grad_clip: gradient-norm clipping (0 disables).
        lr_mult: learning-rate multipliers by parameter-name prefix, e.g. {"backbone": 0.1}.
        layer_decay: layer-wise LR decay factor (1 disables): the last backbone layer group
            gets ``lr * layer_decay``, the one before ``lr * layer_decay**2``, and so on.
        max_time_min: stop training after this many minutes (None: no limit).
        budget_min: a wall-clock training budget in minutes (None: none). The training
            throughput is measured on a few batches of the run's own data first; ``epochs``
            is then set so that the cosine schedule ends inside the budget, the warm-up is
            capped at 5 % of it, and ``max_time_min`` becomes the budget (a hard stop).
    """

    lr: float = 2e-3
    weight_decay: float = 1e-5
    epochs: int = 100
    batch_size: int = 32
    scheduler: str = "cosine"
    warmup_epochs: int = 2
    patience: int = 20
    grad_clip: float = 10.0
    lr_mult: dict[str, float] = field(default_factory=dict)
    layer_decay: float = 1.0
    max_time_min: float | None = None
    budget_min: float | None = None


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    progress: bool = True
    deterministic: bool = True
    cache_frozen_features: bool = True  # frozen backbone: compute its outputs once
    # tensor predictions are projected onto the invariants of each crystal's point group
    # before they are scored (spglib tolerance in Angstrom; None: scored as predicted)
    symprec: float | None = 0.01


@dataclass
class TransferConfig:
    """How a pretrained checkpoint is reused (``matxfer finetune``).

    Attributes:
        init_from: the pretrained checkpoint.
        recipe: ``scratch``, ``head`` (frozen backbone, new heads), ``full`` (all trainable),
            ``freeze:k`` (embedding + first k layer groups frozen, later ones re-initialised).
        keep_heads: pretrained heads to keep (multi-task fine-tuning).
        reinit_after_frozen: for ``freeze:k``, re-initialise the layers after the frozen ones.
    """

    init_from: str | None = None
    recipe: str = "full"
    keep_heads: list[str] = field(default_factory=list)
    reinit_after_frozen: bool = True


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    out: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    model: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)


# ----------------------------------------------------------------------------------------


def _from_dict(cls, data: Any, where: str):
    """Build dataclass ``cls`` from a dict, refusing unknown keys."""
    if data is None:
        return cls()
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(
            f"unknown key(s) {sorted(unknown)} in {where or 'config'}; valid: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        sub = f"{where}.{name}" if where else name
        ftype = _SUBCONFIGS.get((cls, name))
        if ftype is not None:
            kwargs[name] = _from_dict(ftype, value, sub)
        elif (cls, name) == (RunConfig, "tasks"):
            if not isinstance(value, dict):
                raise ValueError(f"{sub}: expected a mapping of task name -> settings")
            kwargs[name] = {k: _from_dict(TaskConfig, v, f"{sub}.{k}") for k, v in value.items()}
        elif isinstance(value, list) and f.type.startswith("tuple"):
            kwargs[name] = tuple(value)
        elif isinstance(value, str) and "float" in f.type:
            kwargs[name] = _as_float(value, sub)
        elif isinstance(value, dict) and "dict[str, float]" in f.type:
            kwargs[name] = {k: _as_float(v, f"{sub}.{k}") for k, v in value.items()}
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _as_float(value: Any, where: str) -> float:
    """YAML 1.1 reads ``1e-3`` as a string; accept it where a number is expected."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {value!r}") from None


_SUBCONFIGS = {
    (RunConfig, "data"): DataConfig,
    (RunConfig, "graph"): GraphConfig,
    (RunConfig, "optim"): OptimConfig,
    (RunConfig, "trainer"): TrainerConfig,
    (RunConfig, "transfer"): TransferConfig,
    (DataConfig, "split"): SplitConfig,
}


def to_dict(cfg) -> dict[str, Any]:
    """Plain nested dict (lists instead of tuples), safe for YAML and checkpoints."""

    def conv(x):
        if dataclasses.is_dataclass(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x

    return conv(cfg)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ValueError(f"override {item!r}: {p!r} is not a mapping")
            node = node[p]
        node[parts[-1]] = yaml.safe_load(value)
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply overrides, and validate it (unknown keys are errors)."""
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the top level of a config must be a mapping")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    cfg = _from_dict(RunConfig, raw, "")
    if not isinstance(cfg.model, dict):
        raise ValueError("model: expected a mapping with 'backbone' and 'heads'")
    unknown = set(cfg.model) - {"backbone", "heads"}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in model; valid: ['backbone', 'heads']")
    return cfg
