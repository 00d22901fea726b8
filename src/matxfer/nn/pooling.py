"""Per-graph pooling of node features."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from matxfer import keys as K

#: accepted ``reduce`` values
Reduce = Literal["mean", "sum"]
REDUCES: tuple[str, ...] = get_args(Reduce)


def check_reduce(reduce: str) -> str:
    """Return ``reduce`` or raise a ValueError naming it."""
    if reduce not in REDUCES:
        raise ValueError(f"unknown reduce {reduce!r}; valid: {list(REDUCES)}")
    return reduce


def graph_index(data, n_nodes: int, device=None) -> tuple[Tensor, int]:
    """Graph index of every node and the number of graphs.

    Args:
        data: a crystal graph or a batch of them.
        n_nodes: number of nodes (used when ``data`` is a single, unbatched graph).
        device: device of the returned index for an unbatched graph.

    Returns:
        ``(batch [n_nodes] long, num_graphs)``.
    """
    batch = data[K.BATCH] if K.BATCH in data and data[K.BATCH] is not None else None
    if batch is None:
        return torch.zeros(n_nodes, dtype=torch.long, device=device), 1
    num_graphs = getattr(data, "num_graphs", None)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    return batch, int(num_graphs)


def pool(x: Tensor, batch: Tensor, num_graphs: int, reduce: str = "mean") -> Tensor:
    """Sum or average node features per graph.

    Args:
        x: ``[n_nodes, ...]`` node features.
        batch: ``[n_nodes]`` graph index of each node.
        num_graphs: number of graphs ``B``.
        reduce: ``"mean"`` or ``"sum"``.

    Returns:
        ``[B, ...]`` pooled features (zeros for a graph without nodes).
    """
    check_reduce(reduce)
    out = x.new_zeros((num_graphs, *x.shape[1:])).index_add_(0, batch, x)
    if reduce == "mean":
        counts = torch.bincount(batch, minlength=num_graphs).clamp_min(1).to(x.dtype)
        out = out / counts.view(-1, *([1] * (x.dim() - 1)))
    return out
