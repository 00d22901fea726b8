"""Inference on crystal graphs: load a checkpoint, predict, evaluate against labels.

Below training (:mod:`matxfer.train`) and studies: :func:`~matxfer.train.loop.fit`
evaluates its model with :func:`evaluate_graphs`, ``matxfer evaluate`` and the shipped-model
build evaluate checkpoints with it, and :class:`matxfer.predict.Predictor` predicts with
:func:`predict_graphs` (or :func:`predict_members_graphs` for an ensemble) on a model from
:func:`load_predictor`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from matxfer import keys as K
from matxfer.keys import label_key, mask_key
from matxfer.tasks import TENSOR, Task


def load_predictor(path_or_ckpt: str | Path | dict) -> tuple[Any, dict[str, Task], Any, Any, dict]:
    """Model, tasks, graph settings and atom featurizer of a checkpoint.

    Args:
        path_or_ckpt: a checkpoint file, a shipped model's name (``matxfer models``) or an
            already loaded checkpoint dict.

    Returns:
        ``(model, tasks, settings, featurizer or None, checkpoint dict)``.
    """
    from matxfer.checkpoint import check_finite_weights, load_checkpoint, model_from_checkpoint
    from matxfer.data.atom_features import AtomFeaturizer
    from matxfer.data.graphs import GraphSettings

    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    check_finite_weights(ckpt, "a checkpoint" if isinstance(path_or_ckpt, dict) else path_or_ckpt)
    model, tasks = model_from_checkpoint(ckpt)
    settings = GraphSettings.from_dict(ckpt["graph"])
    feat = AtomFeaturizer.from_state(ckpt["atom_features"]) if ckpt.get("atom_features") else None
    return model, tasks, settings, feat, ckpt


@torch.no_grad()
def predict_graphs(model, graphs, batch_size: int = 64) -> list[dict[str, np.ndarray]]:
    """Physical-unit predictions for each graph (per-atom tensors split per graph)."""
    from torch_geometric.loader import DataLoader

    model.eval()
    results: list[dict[str, np.ndarray]] = []
    for batch in DataLoader(graphs, batch_size=batch_size, shuffle=False):
        pred = model.predict(batch)
        counts = torch.bincount(batch[K.BATCH], minlength=batch.num_graphs).tolist()
        per_graph = [dict() for _ in range(batch.num_graphs)]
        for name, val in pred.items():
            val = val.detach().cpu().double().numpy()
            if not getattr(model.heads[name], "per_atom", False):
                for i in range(batch.num_graphs):
                    per_graph[i][name] = val[i]
            else:  # per atom
                start = 0
                for i, c in enumerate(counts):
                    per_graph[i][name] = val[start : start + c]
                    start += c
        results.extend(per_graph)
    return results


def predict_members_graphs(model, graphs, batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Each member's physical-unit prediction for each graph: task -> ``[K, ...]`` (the
    backbone runs once per batch)."""
    from torch_geometric.loader import DataLoader

    model.eval()
    results: list[dict[str, np.ndarray]] = []
    for batch in DataLoader(graphs, batch_size=batch_size, shuffle=False):
        conservative = any(getattr(h, "conservative", False) for h in model.heads.values())
        with torch.enable_grad() if conservative else torch.no_grad():
            pred = model.predict_members(batch)
        counts = torch.bincount(batch[K.BATCH], minlength=batch.num_graphs).tolist()
        per_graph: list[dict[str, np.ndarray]] = [{} for _ in range(batch.num_graphs)]
        for name, val in pred.items():
            val = val.detach().cpu().double().numpy()
            if not getattr(model.heads[name], "per_atom", False):
                for i in range(batch.num_graphs):
                    per_graph[i][name] = val[:, i]
            else:
                start = 0
                for i, c in enumerate(counts):
                    per_graph[i][name] = val[:, start : start + c]
                    start += c
        results.extend(per_graph)
    return results


def evaluate_graphs(
    model,
    tasks: dict[str, Task],
    graphs,
    batch_size: int = 64,
    symprec: float | None = None,
    train_means: dict[str, np.ndarray] | None = None,
) -> tuple[dict, dict]:
    """Metrics per task on labelled graphs; also returns (pred, true, ids) per task.

    Args:
        symprec: when given, every crystal-tensor prediction is first projected onto the
            invariants of the crystal's point group (spglib tolerance in Angstrom; see
            :mod:`matxfer.symmetry`), and the metrics record it (``symprec``), the share of
            symmetry-forbidden components predicted exactly zero, and for piezo tensors the
            metrics on the non-centrosymmetric crystals.
        train_means: per tensor task, the mean training label; the metrics of the zero and
            training-mean predictors on the same crystals are added under ``baselines``.
    """
    from matxfer.kinds import kind_of
    from matxfer.metrics import baseline_metrics

    preds = predict_graphs(model, graphs, batch_size)
    tensor_formulas = {n: t.formula for n, t in tasks.items() if t.kind == TENSOR}
    groups = None
    if symprec is not None and tensor_formulas:
        from matxfer.symmetry import project_predictions

        groups = project_predictions(preds, graphs, tensor_formulas, symprec)
    metrics: dict[str, dict] = {}
    pairs: dict[str, dict] = {}
    for name, task in tasks.items():
        kind = kind_of(task.kind)
        p, t, ids, idx = [], [], [], []
        for i, (g, pr) in enumerate(zip(graphs, preds)):
            mask = g[mask_key(name)]
            if not bool(mask.any()):
                continue
            pi, ti = kind.scored(pr[name], g[label_key(name)].double().numpy())
            p.append(pi)
            t.append(ti)
            ids.append(g.material_id)
            idx.append(i)
        if task.kind != TENSOR:
            metrics[name] = kind.metrics(p, t, task.formula)
        else:  # crystal tensors: scored after symmetry projection, against baselines
            centro = forbidden = None
            if groups is not None and idx:
                from matxfer.symmetry import forbidden_mask

                centro = np.array([groups[i].centrosymmetric for i in idx])
                forbidden = np.stack([forbidden_mask(groups[i].rotations, task.formula) for i in idx])
            ta = np.array(t)
            metrics[name] = kind.metrics(p, t, task.formula, centrosymmetric=centro,
                                         forbidden=forbidden)
            if symprec is not None:
                metrics[name]["symprec"] = float(symprec)
            if train_means is not None and name in train_means and len(ta):
                metrics[name]["baselines"] = baseline_metrics(
                    ta, task.formula, train_means[name], centro
                )
        pairs[name] = {"pred": p, "true": t, "ids": ids}
    return metrics, pairs
