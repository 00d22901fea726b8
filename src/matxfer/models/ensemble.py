"""Ensembles: K heads (with their normalisers) over one shared frozen backbone.

:class:`EnsembleModel` runs the backbone once per batch and every member's heads on its
output; :meth:`EnsembleModel.predict` is the mean over members (so it stands in for a
:class:`~matxfer.models.base.PropertyModel` wherever predictions are made) and
:meth:`EnsembleModel.predict_members` gives each member's prediction (for the spread).

:func:`make_ensemble` combines checkpoints trained on the same backbone and tasks into one
checkpoint with ``members`` (see :mod:`matxfer.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class EnsembleModel(nn.Module):
    """Members sharing one backbone module.

    Args:
        members: :class:`~matxfer.models.base.PropertyModel` s whose ``backbone`` is the
            same module object, with the same tasks.
    """

    def __init__(self, members: list):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        backbone = members[0].backbone
        if any(m.backbone is not backbone for m in members):
            raise ValueError("ensemble members must share one backbone module")
        heads = set(members[0].heads)
        if any(set(m.heads) != heads for m in members):
            raise ValueError("ensemble members must have the same tasks")
        self.backbone = backbone
        self.members = nn.ModuleList(members)
        self.tasks = dict(members[0].tasks)

    @property
    def heads(self):
        """The first member's heads (what callers read of them: ``per_atom``)."""
        return self.members[0].heads

    @property
    def normalizers(self):
        return self.members[0].normalizers

    def __len__(self) -> int:
        return len(self.members)

    def predict_members(self, data) -> dict[str, Tensor]:
        """Each member's prediction in physical units: task -> ``[K, ...]``."""
        conservative = any(
            getattr(h, "conservative", False) for m in self.members for h in m.heads.values()
        )
        if conservative:  # forces by autograd: each member runs its own graph
            per = [m.predict(data) for m in self.members]
        else:
            out = self.backbone(data)
            per = []
            for m in self.members:
                res = {}
                for name, head in m.heads.items():
                    norm = m.normalizers[name]
                    y = norm.denormalize(head(out, data))
                    if hasattr(norm, "to_cartesian"):
                        y = norm.to_cartesian(y)
                    res[name] = y
                per.append(res)
        return {name: torch.stack([p[name] for p in per]) for name in per[0]}

    def predict(self, data) -> dict[str, Tensor]:
        """Mean over members (physical units), shaped as a single model's."""
        return {k: v.mean(0) for k, v in self.predict_members(data).items()}

    def forward(self, data) -> dict[str, Tensor]:
        raise TypeError("EnsembleModel is for prediction: use predict or predict_members")


def _non_backbone(sd: dict) -> dict:
    from matxfer.checkpoint import BACKBONE_PREFIX

    return {k: v for k, v in sd.items() if not k.startswith(BACKBONE_PREFIX)}


def make_ensemble(paths: list[str | Path], slim: bool | None = None) -> dict[str, Any]:
    """One checkpoint with ``members`` from checkpoints over the same backbone and tasks.

    The members must share the model config (backbone and heads), the tasks, the graph
    settings and the backbone weights (same :func:`~matxfer.checkpoint.backbone_sha256`).
    The result's top-level fields are member 0's (split, provenance, config), with
    ``provenance.members`` naming every source file and seed; its ``state_dict`` holds the
    shared backbone only, each member's heads and normalisers are in ``members``. ``slim``: store a
    third-party backbone by reference (default: when it can be, i.e. a frozen ``chgnet``
    or ``sevennet`` backbone).

    Raises:
        CheckpointError: fewer than one path, or members that differ in what they share.
    """
    from matxfer.checkpoint import (
        BACKBONE_PREFIX,
        REFERENCE_BACKBONES,
        CheckpointError,
        backbone_is_frozen_in,
        backbone_sha256,
        file_sha256,
        load_checkpoint,
        slim_checkpoint,
    )

    if not paths:
        raise CheckpointError("make_ensemble: no member checkpoints given")
    cks = [load_checkpoint(p) for p in paths]
    for p, ck in zip(paths, cks):
        if ck.get("members"):
            raise CheckpointError(f"make_ensemble: {p} is already an ensemble")

    def backbone_hash(ck):
        if ck.get("backbone_ref"):
            return ck["backbone_ref"]["sha256"]
        sd = ck["state_dict"]
        return backbone_sha256(
            {k[len(BACKBONE_PREFIX):]: v for k, v in sd.items() if k.startswith(BACKBONE_PREFIX)}
        )

    first = cks[0]
    h0 = backbone_hash(first)
    for p, ck in zip(paths[1:], cks[1:]):
        for key in ("model_config", "tasks", "graph"):
            if ck[key] != first[key]:
                raise CheckpointError(
                    f"make_ensemble: {p} differs from {paths[0]} in {key}; members must share "
                    "the backbone, heads, tasks and graph settings"
                )
        h = backbone_hash(ck)
        if h != h0:
            raise CheckpointError(
                f"make_ensemble: {p} has another backbone (sha256 {h}) than {paths[0]} "
                f"(sha256 {h0}); members must share one frozen backbone"
            )
    if len(cks) > 1 and not all(backbone_is_frozen_in(ck) for ck in cks):
        raise CheckpointError(
            "make_ensemble: members must share a frozen backbone (recipe head); these were "
            "trained with their backbones free, so their backbones are not the same"
        )
    out = dict(first)
    # the top level keeps only the shared backbone; heads and normalisers are the members'
    out["state_dict"] = {
        k: v for k, v in first["state_dict"].items() if k.startswith(BACKBONE_PREFIX)
    }
    out["members"] = [
        {
            "state_dict": _non_backbone(ck["state_dict"]),
            "seed": (ck.get("provenance") or {}).get("seed"),
            "metrics": ck.get("metrics") or {},
            "source": Path(p).name,
        }
        for p, ck in zip(paths, cks)
    ]
    prov = dict(first.get("provenance") or {})
    prov["members"] = [
        {"file": str(p), "sha256": file_sha256(p), "seed": (ck.get("provenance") or {}).get("seed")}
        for p, ck in zip(paths, cks)
    ]
    elements = set()
    for ck in cks:
        elements |= set((ck.get("provenance") or {}).get("train_elements") or [])
    if elements:
        prov["train_elements"] = sorted(elements)
    out["provenance"] = prov
    out["metrics"] = {}
    name = first["model_config"]["backbone"].get("name")
    if slim is None:
        slim = name in REFERENCE_BACKBONES and backbone_is_frozen_in(first)
    if slim:
        out = slim_checkpoint(out)
    return out
