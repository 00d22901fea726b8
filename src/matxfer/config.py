"""Run configuration: frozen dataclass schemas loaded from YAML with ``key=value`` overrides.

Unknown keys are errors everywhere, and every field is type- and range-checked when read
(:func:`check_field`): a wrong value is one line naming the key, the value and what was
expected. Dotted overrides on the command line (``optim.lr=1e-3 model.backbone.n_layers=2``)
are parsed as YAML scalars.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Callable
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
        stratify: ``none``, or ``crystal_system``: each crystal system (spglib, 0.1 Angstrom)
            is split with ``fractions`` on its own, so test and validation hold every system
            in its share.
    """

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    sizes: tuple[int | None, int | None, int | None] | None = None
    file: str | None = None
    stratify: str = "none"


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
        graph_store: folder of an on-disk graph store (:mod:`matxfer.data.graph_store`,
            built by ``matxfer data build-store`` or here on first use, resumed and extended
            as needed): the graphs are then read from it by the DataLoader
            (``trainer.num_workers`` worker processes) instead of held in memory.
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
    graph_store: str | None = None


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
    precision: str | int = "32-true"
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
# type and range checks: every field is checked when read, one line naming key, value and
# what was expected
# ----------------------------------------------------------------------------------------

_RECIPE_RE = re.compile(r"scratch|head|full|freeze:\d+")


def _fractions_ok(v: tuple[float, ...]) -> bool:
    return all(0.0 <= x <= 1.0 for x in v) and abs(sum(v) - 1.0) <= 1e-6


_GE0 = (lambda v: v >= 0, ">= 0")
_GE1 = (lambda v: v >= 1, ">= 1")
_GT0 = (lambda v: v > 0, "> 0")

#: (dataclass, field) -> (test of the type-checked value, what is expected); None passes
#: wherever the type allows it
RULES: dict[tuple[type, str], tuple[Callable[[Any], bool], str]] = {
    (SplitConfig, "fractions"): (
        _fractions_ok,
        "3 fractions (train, val, test), each in [0, 1], summing to 1",
    ),
    (SplitConfig, "sizes"): (lambda v: all(x is None or x >= 0 for x in v), "3 sizes >= 0 or null"),
    (SplitConfig, "stratify"): (lambda v: v in ("none", "crystal_system"), "one of none, crystal_system"),
    (DataConfig, "limit"): _GE1,
    (DataConfig, "train_size"): _GE1,
    (DataConfig, "sampler"): (lambda v: v in ("uniform", "balanced"), "one of uniform, balanced"),
    (GraphConfig, "cutoff"): _GT0,
    (GraphConfig, "max_neighbors"): _GE1,
    (GraphConfig, "fallback_k"): _GE1,
    (TaskConfig, "weight"): _GE0,
    (TaskConfig, "loss"): (lambda v: v in ("mse", "l1", "huber"), "one of mse, l1, huber"),
    (TaskConfig, "weighting"): (lambda v: v in ("none", "relative"), "one of none, relative"),
    (TaskConfig, "relative_floor"): _GT0,
    (TaskConfig, "parameterization"): (
        lambda v: v in ("linear", "log_isotropic"),
        "one of linear, log_isotropic",
    ),
    (OptimConfig, "lr"): _GT0,
    (OptimConfig, "weight_decay"): _GE0,
    (OptimConfig, "epochs"): _GE1,
    (OptimConfig, "batch_size"): _GE1,
    (OptimConfig, "scheduler"): (
        lambda v: v in ("cosine", "plateau", "none"),
        "one of cosine, plateau, none",
    ),
    (OptimConfig, "warmup_epochs"): _GE0,
    (OptimConfig, "patience"): _GE0,
    (OptimConfig, "grad_clip"): _GE0,
    (OptimConfig, "lr_mult"): (lambda v: all(x >= 0 for x in v.values()), "multipliers >= 0"),
    (OptimConfig, "layer_decay"): (lambda v: 0 < v <= 1, "in (0, 1]"),
    (OptimConfig, "max_time_min"): _GT0,
    (OptimConfig, "budget_min"): _GT0,
    (TrainerConfig, "symprec"): _GT0,
    (TrainerConfig, "num_nodes"): _GE1,
    (TrainerConfig, "num_workers"): _GE0,
    (TransferConfig, "recipe"): (
        lambda v: bool(_RECIPE_RE.fullmatch(v)),
        "one of scratch, head, full, freeze:K (K >= 0)",
    ),
}


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "anything"
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is dict:
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _plural(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_plural(a) for a in typing.get_args(tp))
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings",
            type(None): "nulls"}.get(tp, _describe(tp))


class _Mismatch(ValueError):
    pass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (YAML-1.1 number strings such as ``1e-3`` read as numbers);
    raises :class:`_Mismatch` when it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(value, a, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                v = float(value)
            except ValueError:
                raise _Mismatch from None
            if value.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity"):
                return v
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        return [_element(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _Mismatch
        return tuple(_element(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return {_element(k, args[0], where): _element(v, args[1], f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"no type check for {tp!r} ({where})")


def _element(value: Any, tp: Any, where: str) -> Any:
    try:
        return _coerce(value, tp, where)
    except _Mismatch:
        raise ValueError(f"{where}: expected {_describe(tp)}, got {value!r}") from None


def check_field(cls: type, name: str, value: Any, where: str, tp: Any = None) -> Any:
    """The value of field ``name`` of dataclass ``cls`` after its type and range checks.

    Raises:
        ValueError: one line naming the key, the value and what was expected.
    """
    if tp is None:
        tp = typing.get_type_hints(cls)[name]
    rule = RULES.get((cls, name))
    expected = _describe(tp)
    if rule is not None:  # a rule saying what the value is replaces the type's name
        expected = rule[1] if rule[1].startswith(("one of", "3 ")) else f"{expected} ({rule[1]})"
    members = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if isinstance(value, str) and str not in members and any(
        typing.get_origin(m) in (list, tuple) for m in members
    ):
        raise ValueError(
            f"{where}: expected {expected}, got the string {value!r} (write it as a list: [{value}])"
        )
    try:
        out = _coerce(value, tp, where)
    except _Mismatch:
        raise ValueError(f"{where}: expected {expected}, got {value!r}") from None
    if rule is not None and out is not None and not rule[0](out):
        extra = f" (sum {sum(out):g})" if (cls, name) == (SplitConfig, "fractions") else ""
        raise ValueError(f"{where}: expected {expected}, got {value!r}{extra}")
    return out


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
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = f"{where}.{name}" if where else name
        ftype = _SUBCONFIGS.get((cls, name))
        if ftype is not None:
            kwargs[name] = _from_dict(ftype, value, sub)
        elif (cls, name) == (RunConfig, "tasks"):
            if not isinstance(value, dict):
                raise ValueError(f"{sub}: expected a mapping of task name -> settings, got {value!r}")
            kwargs[name] = {k: _from_dict(TaskConfig, v, f"{sub}.{k}") for k, v in value.items()}
        else:
            kwargs[name] = check_field(cls, name, value, sub, hints[name])
    return cls(**kwargs)


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
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a syntax error is one line naming the file, line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not a YAML text file (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start} is not UTF-8 text)"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply overrides, and validate it (unknown keys are errors)."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
        if raw is None:
            raise ValueError(
                f"{path}: the config is empty (no keys); a run config names at least "
                "data.datasets and data.targets"
            )
        raw = raw or {}
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
    for key in ("backbone", "heads"):
        value = cfg.model.get(key)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"model.{key}: expected a mapping, got {value!r}")
    check_cutoffs(cfg.graph.cutoff, cfg.model)
    return cfg


def check_cutoffs(graph_cutoff: float | None, model: dict[str, Any]) -> None:
    """Raise when the cutoffs a run config gives explicitly disagree.

    Compares ``graph.cutoff``, ``model.backbone.cutoff`` and every ``model.heads.<task>.cutoff``
    that is set (other backbone and head options are checked when the model is built).

    Raises:
        ValueError: naming every key and value that disagree.
    """
    given: list[tuple[str, Any]] = []
    if graph_cutoff is not None:
        given.append(("graph.cutoff", graph_cutoff))
    bb = model.get("backbone")
    if isinstance(bb, dict) and bb.get("cutoff") is not None:
        given.append(("model.backbone.cutoff", bb["cutoff"]))
    for task, head in (model.get("heads") or {}).items():
        if isinstance(head, dict) and head.get("cutoff") is not None:
            given.append((f"model.heads.{task}.cutoff", head["cutoff"]))
    if len(given) < 2:
        return
    try:
        first = float(given[0][1])
        if all(abs(float(v) - first) <= 1e-9 for _, v in given[1:]):
            return
    except (TypeError, ValueError):
        return  # a value of the wrong type: its own field check reports it
    values = ", ".join(f"{k}={v!r}" for k, v in given)
    raise ValueError(
        f"the cutoffs disagree: {values}; one cutoff serves the graphs, the backbone and the "
        "heads: set graph.cutoff only (backbones and heads read it)"
    )
