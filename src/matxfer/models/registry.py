"""The only name -> class look-up for backbones and heads.

Built-in names: backbones ``cgcnn``, ``cgcnn-attention``, ``equivariant``; heads ``scalar``,
``tensor``, ``born``. Other modules add more with the decorators::

    @register_backbone("alignn")
    class ALIGNN(Backbone): ...

Configs name a class and its keyword arguments: ``{"name": "cgcnn", "n_conv": 4}``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from matxfer.interfaces import OutSpec
    from matxfer.models.base import Backbone, Head

log = logging.getLogger(__name__)

BACKBONES: dict[str, type] = {}
HEADS: dict[str, type] = {}


def _register(table: dict[str, type], kind: str, name: str):
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")

    def deco(cls):
        other = table.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"{kind} name {name!r} is already registered to {other.__name__}")
        cls.registry_name = name
        table[name] = cls
        return cls

    return deco


def import_submodules(package: str, path) -> list[str]:
    """Import every module of a package (so their classes register); returns their names.

    A module that fails to import is reported with a warning and skipped, so one broken
    optional backbone does not take the others down.
    """
    done = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        name = f"{package}.{info.name}"
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report and keep the rest usable
            log.warning("could not import %s (its registrations are missing): %s", name, exc)
            continue
        done.append(name)
    return done


def register_backbone(name: str):
    """Class decorator registering a backbone under ``name``."""
    return _register(BACKBONES, "backbone", name)


def register_head(name: str):
    """Class decorator registering a head under ``name``."""
    return _register(HEADS, "head", name)


def _check_kwargs(cls: type, kind: str, name: str, kwargs: dict, skip: int) -> None:
    """Raise a ValueError listing the valid keys when ``kwargs`` has unknown ones."""
    params = list(inspect.signature(cls).parameters.values())[skip:]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown {kind} {name!r} option(s) {unknown}; valid: {valid}")


def _split_name(cfg: dict, kind: str, table: dict[str, type]) -> tuple[str, type, dict]:
    if not isinstance(cfg, dict):
        raise ValueError(f"{kind} config must be a dict with a 'name', got {cfg!r}")
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid: {sorted(table)}")
    return name, table[name], cfg


def build_backbone(cfg: dict[str, Any]) -> Backbone:
    """Backbone from ``{"name": ..., **kwargs}``.

    Raises:
        ValueError: unknown name or unknown keyword (the message lists the valid ones).
    """
    name, cls, kwargs = _split_name(cfg, "backbone", BACKBONES)
    _check_kwargs(cls, "backbone", name, kwargs, 0)
    return cls(**kwargs)


def build_head(cfg: dict[str, Any], in_spec: OutSpec) -> Head:
    """Head from ``{"name": ..., **kwargs}`` and the backbone's ``out_spec``.

    Raises:
        ValueError: unknown name or unknown keyword (the message lists the valid ones).
    """
    name, cls, kwargs = _split_name(cfg, "head", HEADS)
    _check_kwargs(cls, "head", name, kwargs, 1)
    return cls(in_spec, **kwargs)


def _task_field(task, field: str, default=None):
    if isinstance(task, dict):
        return task.get(field, default)
    return getattr(task, field, default)


def build_normalizer(task) -> nn.Module:
    """Build the normaliser of a task: scalar, vector (``forces``) or irreps (tensor kinds)."""
    from matxfer.normalize import (
        IrrepsNormalizer,
        LogIsotropicNormalizer,
        ScalarNormalizer,
        VectorNormalizer,
    )

    kind = _task_field(task, "kind", "scalar")
    if kind == "scalar":
        return ScalarNormalizer()
    if kind == "forces":
        return VectorNormalizer()
    formula = _task_field(task, "formula")
    if not formula:
        raise ValueError(f"task {_task_field(task, 'name')!r} of kind {kind!r} has no formula")
    if _task_field(task, "parameterization", "linear") == "log_isotropic":
        return LogIsotropicNormalizer(formula)
    return IrrepsNormalizer(formula)


def _head_for_task(task_name: str, cfg: dict, task) -> dict:
    """Check a head config against its task; fill in the task's formula if the head takes one."""
    if not isinstance(cfg, dict):
        raise ValueError(f"head config of task {task_name!r} must be a dict, got {cfg!r}")
    cls = HEADS.get(str(cfg.get("name")))
    if cls is None:
        raise ValueError(
            f"unknown head {cfg.get('name')!r} for task {task_name!r}; valid: {sorted(HEADS)}"
        )
    kind = _task_field(task, "kind", "scalar")
    kinds = getattr(cls, "task_kinds", None)
    if kinds is not None and kind not in kinds:
        raise ValueError(
            f"head {cfg['name']!r} predicts {list(kinds)} targets but task {task_name!r} "
            f"is {kind!r}"
        )
    formula = _task_field(task, "formula")
    takes_formula = "formula" in inspect.signature(cls).parameters
    if takes_formula and formula:
        if "formula" not in cfg:
            cfg = {**cfg, "formula": formula}
        elif cfg["formula"] != formula:
            raise ValueError(
                f"head formula {cfg['formula']!r} differs from task {task_name!r}'s {formula!r}"
            )
    return cfg


def build_model(model_cfg: dict[str, Any], tasks: dict[str, Any]):
    """:class:`~matxfer.models.base.PropertyModel` from a model config and the tasks.

    Args:
        model_cfg: ``{"backbone": {"name": ..., ...}, "heads": {task: {"name": ..., ...}}}``.
        tasks: task name -> :class:`matxfer.tasks.Task` (or its dict); one head per task.

    Raises:
        ValueError: unknown keys or names, or heads and tasks that do not match.
    """
    from matxfer.models.base import PropertyModel

    if not isinstance(model_cfg, dict):
        raise ValueError(f"model config must be a dict, got {model_cfg!r}")
    unknown = sorted(set(model_cfg) - {"backbone", "heads"})
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown}; valid: ['backbone', 'heads']")
    if "backbone" not in model_cfg:
        raise ValueError("model config needs a 'backbone' entry")
    heads_cfg = dict(model_cfg.get("heads") or {})
    if set(heads_cfg) != set(tasks):
        raise ValueError(
            f"heads {sorted(heads_cfg)} do not match tasks {sorted(tasks)}: one head per task"
        )
    heads_cfg = {t: _head_for_task(t, c, tasks[t]) for t, c in heads_cfg.items()}
    backbone = build_backbone(model_cfg["backbone"])
    heads = nn.ModuleDict({t: build_head(c, backbone.out_spec) for t, c in heads_cfg.items()})
    norms = nn.ModuleDict({t: build_normalizer(tasks[t]) for t in heads_cfg})
    return PropertyModel(backbone, heads, norms, tasks)


# register the built-in classes (their modules import the decorators above)
import matxfer.models.backbones  # noqa: E402,F401
import matxfer.models.heads  # noqa: E402,F401

#: packages outside matxfer.models whose import registers more classes
PLUGIN_PACKAGES = ("matxfer.pretrained.chgnet_backbone", "matxfer.pretrained.sevennet_backbone")
for _pkg in PLUGIN_PACKAGES:
    try:
        importlib.import_module(_pkg)
    except Exception as _exc:  # noqa: BLE001
        log.warning("could not import %s (its registrations are missing): %s", _pkg, _exc)
