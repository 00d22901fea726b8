"""The only name -> class look-up for backbones and heads.

Every built-in name is listed in :data:`BUILTIN_BACKBONES` / :data:`BUILTIN_HEADS` with the
module that defines it; the module is imported the first time its name is looked up, so
nothing is imported for a name that is never used and the registry imports none of its
classes' modules at load time (no import cycle). A module whose import fails raises
:class:`RegistryImportError` naming the module and the cause: a listed backbone never
vanishes from the registry silently.

Other code adds classes with the decorators::

    class MyBackboneConfig(ModuleConfig):    # matxfer.config.ModuleConfig
        width: PosInt = 64

    @register_backbone("my-backbone", config=MyBackboneConfig)
    class MyBackbone(Backbone): ...

The config class is the option schema (pydantic): a config's options are validated through it
when the model is built (one line naming the option, the value and what was expected;
unknown options listed with the valid ones), and its defaults are the constructor's.

and other packages through the entry-point groups ``matxfer.backbones`` and
``matxfer.heads`` (``name = "package.module"``: the module registers ``name`` when imported).

Configs name a class and its keyword arguments: ``{"name": "cgcnn", "n_conv": 4}``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from matxfer.interfaces import OutSpec
    from matxfer.models.base import Backbone, Head

log = logging.getLogger(__name__)

#: built-in backbone name -> the module whose import registers it
BUILTIN_BACKBONES: dict[str, str] = {
    "cgcnn": "matxfer.models.backbones.cgcnn",
    "cgcnn-attention": "matxfer.models.backbones.cgcnn",
    "equivariant": "matxfer.models.backbones.equivariant",
    "alignn": "matxfer.models.backbones.alignn",
    "local-frame": "matxfer.models.backbones.local_frame",
    "chgnet": "matxfer.models.backbones.chgnet",
    "sevennet": "matxfer.models.backbones.sevennet",
}

#: built-in head name -> the module whose import registers it
BUILTIN_HEADS: dict[str, str] = {
    "scalar": "matxfer.models.heads.scalar",
    "tensor": "matxfer.models.heads.tensor",
    "born": "matxfer.models.heads.tensor",
    "tensor-product": "matxfer.models.heads.tensor",
    "edge-tensor": "matxfer.models.heads.edge_tensor",
    "edge-atom-tensor": "matxfer.models.heads.edge_tensor",
    "energy": "matxfer.models.heads.energy_forces",
    "direct-forces": "matxfer.models.heads.energy_forces",
    "conservative-forces": "matxfer.models.heads.energy_forces",
}


class RegistryImportError(ImportError):
    """The module that defines a registered name could not be imported."""


def _entry_point_modules(group: str) -> dict[str, str]:
    from importlib.metadata import entry_points

    try:
        return {ep.name: ep.value.split(":")[0] for ep in entry_points(group=group)}
    except Exception as exc:  # noqa: BLE001 - broken distribution metadata: say so, go on
        log.warning("could not read the %s entry points: %s", group, exc)
        return {}


class LazyTable(MutableMapping):
    """name -> class, importing the defining module of a listed name on first look-up.

    Iterating gives every known name (registered or listed) without importing anything;
    reading a value imports its module. Names registered by the decorators are stored
    directly.
    """

    def __init__(self, kind: str, modules: dict[str, str], group: str) -> None:
        self.kind = kind
        self._modules = dict(modules)
        self._group = group
        self._plugins_read = False
        self._classes: dict[str, type] = {}

    def _read_plugins(self) -> None:
        if not self._plugins_read:
            self._plugins_read = True
            for name, module in _entry_point_modules(self._group).items():
                self._modules.setdefault(name, module)

    def module_of(self, name: str) -> str | None:
        """The module that defines ``name`` (None for a class registered at run time only)."""
        self._read_plugins()
        return self._modules.get(name)

    def _load(self, name: str) -> type | None:
        cls = self._classes.get(name)
        if cls is not None:
            return cls
        module = self.module_of(name)
        if module is None:
            return None
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise RegistryImportError(
                f"{self.kind} {name!r} is defined in {module}, which could not be imported: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        cls = self._classes.get(name)
        if cls is None:
            raise RegistryImportError(
                f"{self.kind} {name!r} is listed as defined in {module}, but importing it "
                "registered no such name"
            )
        return cls

    def __getitem__(self, name: str) -> type:
        # KeyError for an unknown name only: ``get`` (from Mapping) then gives its default,
        # while a listed name whose module fails raises RegistryImportError through it
        cls = self._load(name) if isinstance(name, str) else None
        if cls is None:
            raise KeyError(name)
        return cls

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._read_plugins()
        return name in self._classes or name in self._modules

    def __setitem__(self, name: str, cls: type) -> None:
        self._classes[name] = cls

    def __delitem__(self, name: str) -> None:
        if name not in self._classes:
            raise KeyError(name)
        del self._classes[name]

    def __iter__(self) -> Iterator[str]:
        self._read_plugins()
        return iter(sorted(set(self._classes) | set(self._modules)))

    def __len__(self) -> int:
        self._read_plugins()
        return len(set(self._classes) | set(self._modules))

    def __repr__(self) -> str:
        return f"LazyTable({self.kind}: {list(self)})"


BACKBONES = LazyTable("backbone", BUILTIN_BACKBONES, "matxfer.backbones")
HEADS = LazyTable("head", BUILTIN_HEADS, "matxfer.heads")


def _register(table: LazyTable, kind: str, name: str, config: type | None):
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")

    def deco(cls):
        other = table._classes.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"{kind} name {name!r} is already registered to {other.__name__}")
        cls.registry_name = name
        if config is not None:
            cls.Config = config
        table[name] = cls
        return cls

    return deco


def register_backbone(name: str, config: type | None = None):
    """Class decorator registering a backbone under ``name`` with its option schema
    ``config`` (a :class:`matxfer.config.ModuleConfig`)."""
    return _register(BACKBONES, "backbone", name, config)


def register_head(name: str, config: type | None = None):
    """Class decorator registering a head under ``name`` with its option schema ``config``."""
    return _register(HEADS, "head", name, config)


def config_class(cls: type) -> type | None:
    """The option schema a backbone or head class was registered with (None: none)."""
    return cls.__dict__.get("Config")  # not inherited: a subclass declares its own options


def checked_options(cls: type, kind: str, name: str, kwargs: dict, skip: int,
                    where: str | None = None) -> dict:
    """``kwargs`` validated through the class's option schema (values as the schema reads
    them: ``'1e-3'`` -> 0.001); without a schema, only unknown keywords are refused.

    Raises:
        ValueError: one line naming the option (under ``where``, default ``<kind> '<name>'``),
            the value and what was expected, or the unknown options and the valid ones.
    """
    from matxfer.config import validated

    sep = "."
    if where is None:
        where, sep = f"{kind} {name!r}", " option "
    schema = config_class(cls)
    if schema is not None:
        conf = validated(schema, kwargs, where, sep)
        return {k: getattr(conf, k) for k in kwargs}
    params = list(inspect.signature(cls).parameters.values())[skip:]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return kwargs
    valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid: {sorted(valid)}")
    return kwargs


def _split_name(cfg: dict, kind: str, table: LazyTable) -> tuple[str, type, dict]:
    if not isinstance(cfg, dict):
        raise ValueError(f"{kind} config must be a dict with a 'name', got {cfg!r}")
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid: {sorted(table)}")
    return name, table[name], cfg


def build_backbone(cfg: dict[str, Any], where: str | None = None) -> Backbone:
    """Backbone from ``{"name": ..., **options}``.

    Raises:
        ValueError: unknown name, unknown option or a bad value (one line naming it under
            ``where``, e.g. ``model.backbone``, and what was expected).
    """
    name, cls, kwargs = _split_name(cfg, "backbone", BACKBONES)
    return cls(**checked_options(cls, "backbone", name, kwargs, 0, where))


def build_head(cfg: dict[str, Any], in_spec: OutSpec, where: str | None = None) -> Head:
    """Head from ``{"name": ..., **options}`` and the backbone's ``out_spec``.

    Raises:
        ValueError: unknown name, unknown option or a bad value (one line naming it).
    """
    name, cls, kwargs = _split_name(cfg, "head", HEADS)
    return cls(in_spec, **checked_options(cls, "head", name, kwargs, 1, where))


def _task_field(task, field: str, default=None):
    if isinstance(task, dict):
        return task.get(field, default)
    return getattr(task, field, default)


def build_normalizer(task) -> nn.Module:
    """The normaliser of a task, from its kind (:mod:`matxfer.kinds`): scalar, vector
    (``forces``) or irreps (tensor kinds; log-moduli for ``log_isotropic``)."""
    from matxfer.kinds import kind_of

    kind = _task_field(task, "kind", "scalar")
    try:
        return kind_of(kind).normalizer(
            _task_field(task, "formula"), _task_field(task, "parameterization", "linear")
        )
    except ValueError as exc:
        raise ValueError(f"task {_task_field(task, 'name')!r}: {exc}") from None


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
    head_specs = {}  # every head option is checked before anything is built
    for t, c in heads_cfg.items():
        name, cls, kwargs = _split_name(c, "head", HEADS)
        head_specs[t] = (cls, checked_options(cls, "head", name, kwargs, 1, f"model.heads.{t}"))
    backbone = build_backbone(model_cfg["backbone"], "model.backbone")
    heads = nn.ModuleDict({t: cls(backbone.out_spec, **opts) for t, (cls, opts) in head_specs.items()})
    norms = nn.ModuleDict({t: build_normalizer(tasks[t]) for t in heads_cfg})
    return PropertyModel(backbone, heads, norms, tasks)
