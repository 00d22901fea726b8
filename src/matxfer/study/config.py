"""Study configuration: pretraining runs, targets, recipes, sizes and seeds.

Every field is type- and range-checked when read (the specs are pydantic models of
:mod:`matxfer.config`, checked through :func:`matxfer.config.validated`); the run configs
inside (``base``, pretraining ``config``) are checked when each run is built.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Lt

from matxfer.config import (
    Float,
    Int,
    Note,
    Recipe,
    Section,
    Str,
    apply_overrides,
    read_yaml,
    rule,
    validated,
)


class PretrainSpec(Section):
    """One pretraining run, shared by every cell that uses it.

    Exactly one of:

    - ``config``: a run config (dict, merged over the study's ``base``) that is trained;
    - ``checkpoint``: an existing matxfer checkpoint, used as it is;
    - ``import``: third-party weights converted on first use (into
      ``DIR/pretrain/<name>/model.ckpt``): ``chgnet:0.3.0`` (CHGNet, needs the ``chgnet``
      extra), ``sevennet:0`` (SevenNet-0; ``sevennet:7net-l3i5`` for another model of the
      ``sevenn`` wheel; a ``:project`` or ``:split`` suffix sets the backbone's ``parity``;
      needs the ``sevennet`` extra) or ``cgcnn:<model>`` (an original CGCNN checkpoint,
      ``<model>.pth.tar`` in the ``cgcnn`` folder of the pretrained-weights directory, or a path to one; its
      ``atom_init.json`` beside it).
    """

    name: Str
    config: dict[Str, Any] | None = None
    checkpoint: Str | None = None
    importer: Str | None = None


def _sizes_ok(v: list) -> bool:
    return len(v) > 0 and all(x == "all" if isinstance(x, str) else x >= 1 for x in v)


class TargetSpec(Section):
    """One fine-tuning target.

    Attributes:
        name: label of the target in tables.
        data: run-config ``data`` section (datasets, targets, exclude_ids_from...).
        sizes: training-set sizes ("all" for every available entry).
        test_fraction / val_fraction: fixed held-out fractions (same for every cell).
        test_size / val_size: absolute sizes instead of fractions.
        split_seed: seed of the fixed test/val split.
        tasks: run-config ``tasks`` section of this target's cells (loss, weighting,
            parameterization of its labels).
    """

    name: Str
    data: dict[Str, Any]
    sizes: Annotated[list[Int | Str], Note("training-set sizes >= 1 or 'all'"), rule(_sizes_ok)]
    test_fraction: Annotated[Float, Ge(0), Lt(1)] = 0.1
    val_fraction: Annotated[Float, Ge(0), Lt(1)] = 0.1
    test_size: Annotated[Int, Ge(0)] | None = None
    val_size: Annotated[Int, Ge(0)] | None = None
    split_seed: Int = 0
    tasks: dict[Str, Any] = {}


class RecipeSpec(Section):
    """A transfer recipe: ``kind`` in scratch | head | full | freeze:K, from a pretraining run.

    ``overrides`` are run-config dotted overrides for this recipe only
    (e.g. ``optim.lr_mult.backbone=0.1``). ``head`` is the head config given to every
    target label of the recipe's cells (e.g. ``{name: tensor-product}``), or a mapping from
    label to head config (``{piezo_tensor: {name: tensor-product}}``; other labels keep their
    default head).
    """

    name: Str
    kind: Recipe = "scratch"
    pretrained: Str | None = None
    overrides: list[Str] = []
    keep_heads: list[Str] = []
    head: dict[Str, Any] | None = None


class StudyConfig(Section):
    """A whole study: pretraining runs x targets x recipes x sizes x seeds."""

    name: Str
    base: dict[Str, Any]
    pretrain: list[PretrainSpec]
    targets: list[TargetSpec]
    recipes: list[RecipeSpec]
    seeds: list[Int]
    scratch_pretrained: Str | None = None
    reference: dict[Str, Any] = {}
    notes: Str = ""


#: kinds of third-party weights a study can import (``import: <kind>:<what>``)
IMPORTERS = ("chgnet", "cgcnn", "sevennet")

_STUDY_KEYS = {"name", "base", "pretrain", "targets", "recipes", "seeds", "scratch_pretrained",
               "reference", "notes"}


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    unknown = set(d) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where}; valid: {sorted(allowed)}")


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the top level of a study config must be a mapping")
    raw = apply_overrides(raw, overrides or [])
    return study_from_dict(raw)


def study_from_dict(raw: dict[str, Any]) -> StudyConfig:
    raw = copy.deepcopy(raw)
    _check_keys(raw, _STUDY_KEYS, "study")
    for key, want in (("name", str), ("notes", str), ("base", dict), ("pretrain", dict),
                      ("targets", dict), ("recipes", list), ("reference", dict),
                      ("scratch_pretrained", str)):
        value = raw.get(key)
        if value is not None and not isinstance(value, want):
            kind = {str: "a string", dict: "a mapping", list: "a list"}[want]
            raise ValueError(f"{key}: expected {kind}, got {value!r}")
    pre = []
    for name, spec in (raw.get("pretrain") or {}).items():
        spec = spec or {}
        if not isinstance(spec, dict):
            raise ValueError(f"pretrain.{name}: expected a mapping with config, checkpoint or import, got {spec!r}")
        if spec.get("config") is not None and not isinstance(spec["config"], dict):
            raise ValueError(f"pretrain.{name}.config: expected a mapping (a run config), got {spec['config']!r}")
        if spec.get("checkpoint") is not None and not isinstance(spec["checkpoint"], str):
            raise ValueError(f"pretrain.{name}.checkpoint: expected a path, got {spec['checkpoint']!r}")
        _check_keys(spec, {"config", "checkpoint", "import"}, f"pretrain.{name}")
        given = [k for k in ("config", "checkpoint", "import") if spec.get(k)]
        if len(given) != 1:
            raise ValueError(f"pretrain.{name}: give exactly one of 'config', 'checkpoint' or 'import'")
        if spec.get("import"):
            kind = str(spec["import"]).split(":", 1)[0]
            if kind not in IMPORTERS or ":" not in str(spec["import"]):
                raise ValueError(
                    f"pretrain.{name}.import={spec['import']!r}; valid: 'chgnet:<version>', "
                    "'sevennet:<model>[:<parity>]' or 'cgcnn:<model or .pth.tar path>'"
                )
        pre.append(PretrainSpec(name=name, config=spec.get("config"), checkpoint=spec.get("checkpoint"),
                                importer=spec.get("import")))
    targets = []
    tkeys = {"data", "sizes", "test_fraction", "val_fraction", "test_size", "val_size", "split_seed",
             "tasks"}
    for name, spec in (raw.get("targets") or {}).items():
        if not isinstance(spec, dict):
            raise ValueError(f"targets.{name}: expected a mapping with 'data' and 'sizes', got {spec!r}")
        _check_keys(spec, tkeys, f"targets.{name}")
        if "data" not in spec or "sizes" not in spec:
            raise ValueError(f"targets.{name}: needs 'data' and 'sizes'")
        t = validated(TargetSpec, {"name": name, **spec}, f"targets.{name}")
        if t.test_fraction + t.val_fraction >= 1:
            raise ValueError(
                f"targets.{name}: test_fraction + val_fraction = {t.test_fraction + t.val_fraction:g} "
                "leaves nothing to train on (expected < 1)"
            )
        targets.append(t)
    recipes = []
    names = {p.name for p in pre}
    for i, item in enumerate(raw.get("recipes") or []):
        if isinstance(item, str):
            item = {"name": item, "kind": item}
        if not isinstance(item, dict):
            raise ValueError(f"recipes[{i}]: expected a mapping or a recipe name, got {item!r}")
        _check_keys(item, {"name", "kind", "pretrained", "overrides", "keep_heads", "head"},
                    "recipes[]")
        if "name" not in item:
            raise ValueError(f"recipes[{i}]: needs a 'name'")
        head = item.get("head")
        if head is not None and not (
            isinstance(head, dict)
            and (head.get("name") or all(isinstance(v, dict) and v.get("name") for v in head.values()))
        ):
            raise ValueError(
                f"recipe {item.get('name')!r}: head must be a head config with a 'name', or a "
                "mapping from label to such a config"
            )
        r = validated(RecipeSpec, item, f"recipes[{i}]")
        if r.kind != "scratch" and r.pretrained is None:
            raise ValueError(f"recipe {r.name!r} ({r.kind}) needs 'pretrained: <pretrain run>'")
        if r.pretrained is not None and r.pretrained not in names:
            raise ValueError(f"recipe {r.name!r}: unknown pretraining run {r.pretrained!r}")
        recipes.append(r)
    if not any(r.kind == "scratch" for r in recipes):
        recipes.insert(0, RecipeSpec(name="scratch", kind="scratch"))
    if len({r.name for r in recipes}) != len(recipes):
        raise ValueError("recipe names must be unique")
    seeds = raw.get("seeds", 5)
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = list(range(seeds))
    elif (
        isinstance(seeds, list)
        and seeds
        and all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
    ):
        seeds = list(seeds)
    else:
        raise ValueError(
            f"seeds: expected a number of seeds >= 1 or a non-empty list of integers, got {seeds!r}"
        )
    scratch_pre = raw.get("scratch_pretrained")
    if scratch_pre is not None and scratch_pre not in names:
        raise ValueError(f"scratch_pretrained: unknown pretraining run {scratch_pre!r}")
    if not targets:
        raise ValueError("a study needs at least one target")
    return StudyConfig(
        name=raw.get("name", "study"),
        base=raw.get("base") or {},
        pretrain=pre,
        targets=targets,
        recipes=recipes,
        seeds=seeds,
        scratch_pretrained=scratch_pre,
        reference=raw.get("reference") or {},
        notes=raw.get("notes", ""),
    )
