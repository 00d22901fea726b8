"""Run configuration: typed pydantic models read from YAML with ``key=value`` overrides.

The schema is a tree of pydantic v2 models (``extra="forbid"``: unknown keys are errors
everywhere). Settings with a fixed set of values are ``Literal`` types and numbers carry their
ranges, so every field is type- and range-checked when the config is read, before any data
is loaded; :func:`validated` turns pydantic's errors into one line naming the key, the value
and what was expected. Scalars are strict (``1`` is not ``true``, ``2.5`` is not an integer);
numbers written the YAML-1.1 way (``1e-3``, which YAML reads as a string) are numbers.
Dotted overrides on the command line (``optim.lr=1e-3 model.backbone.n_layers=2``) are parsed
as YAML scalars. Backbone and head options (``model.*``) are checked against the config
class each one registers (:mod:`matxfer.models.registry`).
"""

from __future__ import annotations

import copy
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError
from pydantic_core import PydanticCustomError


class _Words:
    """Annotation metadata carrying words for error messages."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"


class Expect(_Words):
    """What a field expects, in words (replaces the type's own description)."""


class Note(_Words):
    """A condition in words, added in parentheses to the type's description
    (``a list of integers (sizes >= 1)``)."""


def _yaml_number(value: Any) -> Any:
    """``'1e-3'`` (a YAML-1.1 string) -> 1e-3; nan / inf strings and others unchanged."""
    if isinstance(value, str) and value.strip().lower().lstrip("+-") not in ("nan", "inf", "infinity"):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def rule(test: typing.Callable[[Any], bool], extra: typing.Callable[[Any], str] | None = None,
         expected: str | None = None):
    """An after-validator failing with a ``rule`` error when ``test(value)`` is false
    (``extra(value)`` is appended to the message; ``expected`` replaces the field's own
    description in it)."""

    def check(value: Any) -> Any:
        if value is not None and not test(value):
            ctx = {"extra": extra(value) if extra else "", "expected": expected or ""}
            raise PydanticCustomError("rule", "{extra}", ctx)
        return value

    return AfterValidator(check)


Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_yaml_number), Strict()]
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]

#: option types of backbone and head configs
PosInt = Annotated[int, Strict(), Ge(1)]
PosFloat = Annotated[float, BeforeValidator(_yaml_number), Strict(), Gt(0)]
NonNegFloat = Annotated[float, BeforeValidator(_yaml_number), Strict(), Ge(0)]
Widths = Annotated[list[PosInt], Note("widths >= 1")]


class ModuleConfig(BaseModel):
    """Base of the option schema each backbone and head declares next to its code
    (``@register_backbone(name, config=...)``): unknown options are errors, every value is
    type- and range-checked when the model is built, and the defaults are the
    constructor's."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


_RECIPE_RE = re.compile(r"scratch|head|full|freeze:\d+")
Recipe = Annotated[Str, Expect("one of scratch, head, full, freeze:K (K >= 0)"),
                   rule(lambda v: bool(_RECIPE_RE.fullmatch(v)))]


def _fractions_ok(v: tuple[float, ...]) -> bool:
    return all(0.0 <= x <= 1.0 for x in v) and abs(sum(v) - 1.0) <= 1e-6


def _sum_note(v: tuple[float, ...]) -> str:
    return f" (sum {sum(v):g})" if abs(sum(v) - 1.0) > 1e-6 else ""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors; attributes stay assignable."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


with warnings.catch_warnings():
    # DataConfig.validate (drop invalid entries) shadows a deprecated BaseModel method
    warnings.filterwarnings("ignore", message=r"Field name \"validate\"")

    class SplitConfig(Section):
        """How to split the labelled entries.

        Attributes:
            fractions: train/val/test fractions.
            seed: split seed (ids are ranked by a hash of seed and id).
            sizes: absolute train/val/test sizes instead (None entries take the rest).
            file: a saved split (JSON with train/val/test id lists) to use as is.
            stratify: ``none``, or ``crystal_system``: each crystal system (spglib, 0.1
                Angstrom) is split with ``fractions`` on its own, so test and validation hold
                every system in its share.
        """

        fractions: Annotated[
            tuple[Float, Float, Float],
            Expect("3 fractions (train, val, test), each in [0, 1], summing to 1"),
            rule(_fractions_ok, _sum_note),
        ] = (0.8, 0.1, 0.1)
        seed: Int = 0
        sizes: Annotated[
            tuple[Annotated[Int, Ge(0)] | None, Annotated[Int, Ge(0)] | None,
                  Annotated[Int, Ge(0)] | None] | None,
            Expect("3 sizes >= 0 or null (train, val, test)"),
        ] = None
        file: Str | None = None
        stratify: Literal["none", "crystal_system"] = "none"

    class DataConfig(Section):
        """Which data to train on.

        Attributes:
            datasets: registry names; several are merged by material id (each material keeps
                the labels it has).
            targets: the labels to learn (one head each).
            limit: parse at most this many entries per dataset (quick runs).
            validate: drop entries that fail ``matxfer data validate``.
            exclude_ids_from: datasets whose material ids are removed (leakage control).
            exclude_ids: explicit ids to remove.
            train_size: subsample the training split to this size (learning curves).
            data_dir: data directory (default ``$MATXFER_DATA_DIR`` / ``../shared/data``).
            sampler: ``uniform`` or ``balanced`` (multi-task: each training crystal is drawn
                with probability proportional to 1 / (count of its rarest task), so rare tasks
                do not starve).
            graph_store: folder of an on-disk graph store (:mod:`matxfer.data.graph_store`,
                built by ``matxfer data build-store`` or here on first use, resumed and
                extended as needed): the graphs are then read from it by the DataLoader
                (``trainer.num_workers`` worker processes) instead of held in memory.
        """

        datasets: list[Str] = []
        targets: list[Str] = []
        limit: Annotated[Int, Ge(1)] | None = None
        validate: Bool = True  # type: ignore[assignment]
        exclude_ids_from: list[Str] = []
        exclude_ids: list[Str] = []
        train_size: Annotated[Int, Ge(1)] | None = None
        split: SplitConfig = SplitConfig()
        data_dir: Str | None = None
        sampler: Literal["uniform", "balanced"] = "uniform"
        graph_store: Str | None = None


class GraphConfig(Section):
    """Graph settings; ``None`` fields take the backbone's defaults."""

    cutoff: Annotated[Float, Gt(0)] | None = None
    max_neighbors: Annotated[Int, Ge(1)] | None = None
    fallback_k: Annotated[Int, Ge(1)] = 12
    line_graph: Bool | None = None
    keep_shell: Bool | None = None
    atom_features: Str | None = None
    atom_table: Str | None = None  # path of an atom_init.json for atom_features="table"


class TaskConfig(Section):
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

    weight: Annotated[Float, Ge(0)] = 1.0
    loss: Annotated[Literal["mse", "l1", "huber"] | None, Expect("one of mse, l1, huber")] = None
    weighting: Literal["none", "relative"] = "none"
    relative_floor: Annotated[Float, Gt(0)] = 0.1
    sign_agnostic: Bool = False
    parameterization: Literal["linear", "log_isotropic"] = "linear"


class OptimConfig(Section):
    """Optimiser and schedule.

    Attributes:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        epochs: maximum epochs.
        batch_size: graphs per batch.
        scheduler: ``cosine`` (linear warm-up, then cosine decay to zero), ``plateau`` or
            ``none``.
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

    lr: Annotated[Float, Gt(0)] = 2e-3
    weight_decay: Annotated[Float, Ge(0)] = 1e-5
    epochs: Annotated[Int, Ge(1)] = 100
    batch_size: Annotated[Int, Ge(1)] = 32
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    warmup_epochs: Annotated[Int, Ge(0)] = 2
    patience: Annotated[Int, Ge(0)] = 20
    grad_clip: Annotated[Float, Ge(0)] = 10.0
    lr_mult: Annotated[
        dict[Str, Float],
        rule(lambda v: all(x >= 0 for x in v.values()),
             expected="a mapping of parameter-name prefixes to multipliers >= 0"),
    ] = {}
    layer_decay: Annotated[Float, Gt(0), Le(1)] = 1.0
    max_time_min: Annotated[Float, Gt(0)] | None = None
    budget_min: Annotated[Float, Gt(0)] | None = None


class TrainerConfig(Section):
    """Lightning trainer settings and evaluation options."""

    accelerator: Str = "auto"
    devices: Any = 1
    num_nodes: Annotated[Int, Ge(1)] = 1
    strategy: Str = "auto"
    precision: Str | Int = "32-true"
    num_workers: Annotated[Int, Ge(0)] = 0
    progress: Bool = True
    deterministic: Bool = True
    cache_frozen_features: Bool = True  # frozen backbone: compute its outputs once
    # tensor predictions are projected onto the invariants of each crystal's point group
    # before they are scored (spglib tolerance in Angstrom; None: scored as predicted)
    symprec: Annotated[Float, Gt(0)] | None = 0.01


class TransferConfig(Section):
    """How a pretrained checkpoint is reused (``matxfer finetune``).

    Attributes:
        init_from: the pretrained checkpoint.
        recipe: ``scratch``, ``head`` (frozen backbone, new heads), ``full`` (all trainable),
            ``freeze:k`` (embedding + first k layer groups frozen, later ones re-initialised).
        keep_heads: pretrained heads to keep (multi-task fine-tuning).
        reinit_after_frozen: for ``freeze:k``, re-initialise the layers after the frozen ones.
    """

    init_from: Str | None = None
    recipe: Recipe = "full"
    keep_heads: list[Str] = []
    reinit_after_frozen: Bool = True


class RunConfig(Section):
    """A training run: data, graphs, model, tasks, optimiser, trainer and transfer recipe."""

    name: Str = "run"
    seed: Int = 0
    out: Str | None = None
    data: DataConfig = DataConfig()
    graph: GraphConfig = GraphConfig()
    model: dict[Str, Any] = {}
    tasks: dict[Str, TaskConfig] = {}
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    transfer: TransferConfig = TransferConfig()


# ----------------------------------------------------------------------------------------
# pydantic errors -> one line naming the key, the value and what was expected
# ----------------------------------------------------------------------------------------


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, *meta]`` -> ``(T, meta)`` (nested Annotated flattened)."""
    meta: list[Any] = []
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp, meta = args[0], list(args[1:]) + meta
    return tp, meta


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _constraints(tp: Any, meta: list[Any]) -> list[str]:
    """Range constraints on a type (``>= 1``, ``in (0, 1]``...), from its metadata and from
    the non-null members of a union."""
    marks = {type(m): m for m in meta if isinstance(m, (Ge, Gt, Le, Lt))}
    out = []
    lo = marks.get(Ge) or marks.get(Gt)
    hi = marks.get(Le) or marks.get(Lt)
    if lo is not None and hi is not None:
        left = "[" if isinstance(lo, Ge) else "("
        right = "]" if isinstance(hi, Le) else ")"
        out.append(f"in {left}{_num(_bound(lo))}, {_num(_bound(hi))}{right}")
    elif lo is not None:
        out.append(f"{'>=' if isinstance(lo, Ge) else '>'} {_num(_bound(lo))}")
    elif hi is not None:
        out.append(f"{'<=' if isinstance(hi, Le) else '<'} {_num(_bound(hi))}")
    if _is_union(tp):
        for member in typing.get_args(tp):
            inner, m = _unwrap(member)
            out.extend(_constraints(inner, m))
    return out


def _bound(mark: Any) -> Any:
    return next(getattr(mark, k) for k in ("ge", "gt", "le", "lt") if hasattr(mark, k))


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe(tp: Any) -> str:
    """What a value of annotation ``tp`` must be, in words (``an integer or null (>= 1)``)."""
    base, meta = _unwrap(tp)
    for m in meta:
        if isinstance(m, Expect):
            return m.text
    text = _type_words(base)
    extra = _constraints(base, meta) + [m.text for m in meta if isinstance(m, Note)]
    return f"{text} ({', '.join(extra)})" if extra else text


def _type_words(tp: Any) -> str:
    tp, meta = _unwrap(tp)
    for m in meta:
        if isinstance(m, Expect):
            return m.text
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "anything"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if _is_union(tp):
        return " or ".join(_type_words(a) for a in args)
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is dict:
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _plural(tp: Any) -> str:
    tp, _ = _unwrap(tp)
    if _is_union(tp):
        return " or ".join(_plural(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mappings"
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings",
            type(None): "nulls"}.get(tp, _type_words(tp))


def _field_type(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields[name]
    if not info.metadata:
        return info.annotation
    return Annotated.__class_getitem__((info.annotation, *info.metadata))  # type: ignore[attr-defined]


def _walk(model: type[BaseModel], raw: Any, loc: tuple) -> tuple[list[str], Any, Any, bool]:
    """Follow an error location through the schema and the raw input.

    Returns:
        (key parts, annotation at the location, raw value at the location, whether the
        whole location was followed); the walk stops
        at a union (pydantic's member tags follow in ``loc``) and at a field described as a
        whole (an :class:`Expect` annotation: an error inside it is reported on it).
    """
    parts: list[str] = []
    tp: Any = model
    value = raw
    complete = 0
    for elem in loc:
        base, meta = _unwrap(tp)
        if any(isinstance(m, Expect) for m in meta):
            break
        if _is_union(base):
            members = [m for m in typing.get_args(base) if m is not type(None)]
            if len(members) != 1:
                break
            base, _ = _unwrap(members[0])
        origin, args = typing.get_origin(base), typing.get_args(base)
        if isinstance(base, type) and issubclass(base, BaseModel) and isinstance(elem, str) \
                and elem in base.model_fields:
            tp = _field_type(base, elem)
            parts.append(elem)
        elif origin is list and isinstance(elem, int):
            tp = args[0]
            parts[-1:] = [f"{parts[-1] if parts else ''}[{elem}]"]
        elif origin is tuple and isinstance(elem, int) and elem < len(args):
            tp = args[elem]
            parts[-1:] = [f"{parts[-1] if parts else ''}[{elem}]"]
        elif origin is dict and isinstance(elem, str):
            tp = args[1]
            parts.append(elem)
        else:
            break
        complete += 1
        if isinstance(value, dict):
            value = value.get(elem)
        elif isinstance(value, (list, tuple)) and isinstance(elem, int) and elem < len(value):
            value = value[elem]
        else:
            value = None
    return parts, tp, value, complete == len(loc)


def _message(model: type[BaseModel], raw: Any, exc: ValidationError, where: str,
             sep: str = ".") -> str:
    errors = exc.errors()

    def key(parts: list[str]) -> str:
        inner = ".".join(p for p in parts if p)
        return sep.join(p for p in (where, inner) if p)

    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        parent = extra[0]["loc"][:-1]
        names = sorted(str(e["loc"][-1]) for e in extra if e["loc"][:-1] == parent)
        parts, tp, _, _ = _walk(model, raw, parent)
        section, _ = _unwrap(tp)
        valid = sorted(section.model_fields) if isinstance(section, type) and issubclass(section, BaseModel) else []
        return f"unknown key(s) {names} in {key(parts) or 'config'}; valid: {valid}"
    err = errors[0]
    parts, tp, value, whole = _walk(model, raw, tuple(err["loc"]))
    if value is None and err.get("input") is not None and err["type"] != "missing":
        value = err["input"]
    name = key(parts) or "config"
    if err["type"] == "missing" and whole:
        return f"{name}: missing (expected {describe(tp)})"
    ctx = err.get("ctx") or {}
    expected = (ctx.get("expected") if err["type"] == "rule" else None) or describe(tp)
    base, _ = _unwrap(tp)
    if _is_union(base):
        members = [m for m in typing.get_args(base) if m is not type(None)]
        base = _unwrap(members[0])[0] if len(members) == 1 else base
    if isinstance(value, str) and typing.get_origin(base) in (list, tuple):
        return f"{name}: expected {expected}, got the string {value!r} (write it as a list: [{value}])"
    note = ctx.get("extra", "") if err["type"] == "rule" else ""
    return f"{name}: expected {expected}, got {value!r}{note}"


def validated(model: type[BaseModel], raw: Any, where: str = "", sep: str = "."):
    """``model`` built from ``raw`` (a mapping; None: the defaults).

    Raises:
        ValueError: one line naming the key (prefixed by ``where``), the value given and
            what was expected; unknown keys are named with the valid ones. ``sep`` joins
            ``where`` and the key (``model.backbone.width``; ``head 'scalar' option hidden``).
    """
    if raw is None:
        raw = {}
    if isinstance(raw, model):
        return raw
    if not isinstance(raw, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_message(model, raw, exc, where, sep)) from None


# ----------------------------------------------------------------------------------------


def to_dict(cfg) -> dict[str, Any]:
    """Plain nested dict (lists instead of tuples), safe for YAML and checkpoints."""

    def conv(x):
        if isinstance(x, BaseModel):
            return {name: conv(getattr(x, name)) for name in type(x).model_fields}
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
    """A checked :class:`RunConfig` from a plain dict (see :func:`validated`)."""
    cfg = validated(RunConfig, raw)
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
