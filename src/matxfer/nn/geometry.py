"""Edge geometry computed inside the model from positions and cell."""

from __future__ import annotations

import torch
from torch import Tensor

from matxfer import keys as K


def edge_vectors(data) -> Tensor:
    """Edge vectors ``r_ij = pos[j] + shift @ cell[graph(i)] - pos[i]``.

    Args:
        data: a (batched) crystal graph with ``pos [n,3]``, ``cell [B,3,3]``,
            ``edge_index [2,E]`` (source j, target i) and ``cell_shift [E,3]``.

    Returns:
        ``[E, 3]`` edge vectors, differentiable w.r.t. ``pos`` and ``cell``.
    """
    src, dst = data[K.EDGE_INDEX]
    pos = data[K.POSITIONS]
    cell = data[K.CELL]
    batch = data[K.BATCH] if K.BATCH in data and data[K.BATCH] is not None else None
    if batch is None:
        graph_of_edge = torch.zeros_like(dst)
    else:
        graph_of_edge = batch[dst]
    shift = data[K.CELL_SHIFT].to(pos.dtype)
    offset = torch.einsum("ea,eab->eb", shift, cell.to(pos.dtype)[graph_of_edge])
    return pos[src] + offset - pos[dst]
