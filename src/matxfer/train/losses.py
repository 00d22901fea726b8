"""The masked multi-task training loss.

Each task's loss is averaged over the entries that carry its label (an absent label adds
nothing, it is never read as zero) and the task losses are summed with their weights.
Tensor targets are compared in the normalised irreps space the heads predict in.
"""

from __future__ import annotations

import functools

import torch

from matxfer.keys import label_key, mask_key
from matxfer.kinds import kind_of
from matxfer.tasks import FORCES, Task


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
    return kind_of(task.kind).normalized(model.normalizers[task.name], y)


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
