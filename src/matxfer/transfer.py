"""Transfer operations: plain functions the CLI and configs both call.

- :func:`freeze` freezes parameters by name pattern (glob) and remembers the modules whose
  normalisation statistics must stay fixed too;
- :func:`apply_recipe` turns a recipe name (``scratch``, ``head``, ``full``, ``freeze:k``)
  into freezing / re-initialisation on a model built from a pretrained checkpoint;
- :func:`param_groups` builds optimiser groups with learning-rate multipliers by name
  prefix and layer-wise decay;
- :func:`load_backbone_into` copies a checkpoint's backbone weights strictly.

"Frozen" means no gradient AND frozen normalisation statistics: frozen modules are kept in
eval mode during training (see :func:`set_frozen_eval`), so their parameters and buffers
are bit-identical afterwards.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from typing import Any, cast

import torch
from torch import nn

log = logging.getLogger(__name__)

RECIPES = ("scratch", "head", "full", "freeze:k")
FROZEN_ATTR = "_matxfer_frozen_prefixes"


def parse_recipe(recipe: str) -> tuple[str, int | None]:
    """``"freeze:2"`` -> ("freeze", 2); ``"head"`` -> ("head", None)."""
    m = re.fullmatch(r"freeze:(\d+)", recipe)
    if m:
        return "freeze", int(m.group(1))
    if recipe in ("scratch", "head", "full"):
        return recipe, None
    raise ValueError(f"unknown recipe {recipe!r}; valid: scratch, head, full, freeze:K (K >= 0)")


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Freeze parameters whose names match any glob pattern; returns their names.

    Modules entirely under a frozen prefix are also recorded so that
    :func:`set_frozen_eval` keeps their batch-norm statistics fixed.
    """
    frozen = []
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(name)
    prefixes = set(getattr(model, FROZEN_ATTR, set()))
    for pat in patterns:
        prefixes.add(pat[:-2] if pat.endswith(".*") else pat)
    setattr(model, FROZEN_ATTR, prefixes)
    if not frozen and patterns:
        raise ValueError(f"freeze patterns {patterns} matched no parameter")
    return frozen


def frozen_module_names(model: nn.Module) -> list[str]:
    prefixes: set[str] = getattr(model, FROZEN_ATTR, set())
    out = []
    for name, _ in model.named_modules():
        if name and any(name == p or fnmatch.fnmatchcase(name, p) for p in prefixes):
            out.append(name)
    return out


def set_frozen_eval(model: nn.Module) -> None:
    """Put frozen modules in eval mode (call after every ``model.train()``)."""
    names = set(frozen_module_names(model))
    for name, module in model.named_modules():
        if name in names:
            module.eval()


def reinit(module: nn.Module) -> int:
    """Re-initialise every sub-module that has ``reset_parameters``; returns how many."""
    n = 0
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            cast(Any, m).reset_parameters()
            n += 1
    if hasattr(module, "reset_parameters"):
        cast(Any, module).reset_parameters()
        n += 1
    return n


def _submodule(model: nn.Module, prefix: str) -> nn.Module:
    return model.get_submodule(prefix)  # "layers.0" reaches list items too


def apply_recipe(model, recipe: str, reinit_after_frozen: bool = True) -> dict:
    """Freeze / re-initialise ``model`` (a PropertyModel with pretrained backbone weights).

    Returns a provenance dict (recipe, frozen parameter names, re-initialised groups).
    """
    kind, k = parse_recipe(recipe)
    groups = [f"backbone.{g}" for g in model.backbone.layer_groups()]
    info: dict = {"recipe": recipe, "frozen": [], "reinitialised": []}
    if kind == "head":
        info["frozen"] = freeze(model, ["backbone.*"])
    elif kind == "freeze":
        assert k is not None  # parse_recipe gives freeze:k a k
        if k > len(groups) - 1:
            raise ValueError(
                f"freeze:{k} but the backbone has only {len(groups) - 1} layer groups after the "
                f"embedding ({groups})"
            )
        frozen_groups = groups[: k + 1]  # the embedding + first k layers
        info["frozen"] = freeze(model, [f"{g}.*" for g in frozen_groups])
        if reinit_after_frozen:
            for g in groups[k + 1 :]:
                reinit(_submodule(model, g))
                info["reinitialised"].append(g)
    return info


def param_groups(
    model: nn.Module,
    lr: float,
    lr_mult: dict[str, float] | None = None,
    layer_decay: float = 1.0,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Optimiser parameter groups.

    Args:
        model: a PropertyModel.
        lr: base learning rate (heads get it).
        lr_mult: multipliers by parameter-name prefix (longest match wins),
            e.g. ``{"backbone": 0.1}``.
        layer_decay: layer-wise decay over the backbone's layer groups: the last group gets
            ``lr * layer_decay``, the one before ``lr * layer_decay**2``...
        weight_decay: AdamW weight decay (not applied to biases and norms).
    """
    lr_mult = lr_mult or {}
    groups_order: list[str] = []
    if layer_decay != 1.0 and hasattr(model, "backbone"):
        groups_order = [f"backbone.{g}" for g in cast(Any, model).backbone.layer_groups()]
    buckets: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = 1.0
        best = -1
        for prefix, m in lr_mult.items():
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                mult, best = m, len(prefix)
        for depth, g in enumerate(reversed(groups_order)):
            if name.startswith(g + "."):
                mult *= layer_decay ** (depth + 1)
                break
        wd = 0.0 if (p.ndim <= 1) else weight_decay
        buckets.setdefault((lr * mult, wd), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in buckets.items()]


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_backbone_into(model, ckpt: dict) -> dict:
    """Copy the checkpoint's backbone weights into ``model.backbone`` (strict on the backbone).

    Returns a report with the keys that did not match (must be empty).
    """
    sd = {k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    missing, unexpected = model.backbone.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            "pretrained backbone does not match the configured one: "
            f"missing {list(missing)[:6]}, unexpected {list(unexpected)[:6]}"
        )
    return {"backbone_tensors": len(sd)}


def load_heads_into(model, ckpt: dict, heads: list[str]) -> list[str]:
    """Copy pretrained heads (and their normalisers) named in ``heads`` into ``model``."""
    done = []
    for h in heads:
        for part in ("heads", "normalizers"):
            prefix = f"{part}.{h}."
            sd = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
            if not sd:
                if part == "heads":
                    raise ValueError(f"checkpoint has no head {h!r}")
                continue
            getattr(model, part)[h].load_state_dict(sd, strict=True)
        done.append(h)
    return done
