"""Scalar head: pool node features per crystal, then an MLP -> one number per crystal."""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor

from matxfer import keys as K
from matxfer.config import Bool, ModuleConfig, Widths
from matxfer.models.base import Head
from matxfer.models.registry import register_head
from matxfer.nn.mlp import MLP, Activation
from matxfer.nn.pooling import Reduce, check_reduce, graph_index, pool


def scalar_channels(in_spec) -> tuple[int, list[int] | None]:
    """Width of the invariant input and, for irreps, the indices of its ``0e`` components.

    Pseudo-scalars (``0o``) change sign under improper rotations and are left out.
    """
    if isinstance(in_spec, bool) or not isinstance(in_spec, (int, o3.Irreps, str)):
        raise ValueError(f"in_spec must be an int width or e3nn Irreps, got {in_spec!r}")
    if isinstance(in_spec, int):
        if in_spec < 1:
            raise ValueError(f"in_spec width must be >= 1, got {in_spec}")
        return in_spec, None
    irreps = o3.Irreps(in_spec)
    idx: list[int] = []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        if ir == o3.Irrep("0e"):
            idx.extend(range(sl.start, sl.start + mul))
    if not idx:
        raise ValueError(f"in_spec {irreps} has no 0e channels for a scalar head")
    return len(idx), idx


class ScalarHeadConfig(ModuleConfig):
    """Options of the ``scalar`` head (see :class:`ScalarHead`)."""

    hidden: Widths = [64]
    act: Activation = "silu"
    input_activation: Bool = False
    reduce: Reduce = "mean"


@register_head("scalar", config=ScalarHeadConfig)
class ScalarHead(Head):
    """Pooling (``mean`` for intensive, ``sum`` for extensive targets) + MLP -> ``[B]``.

    On an irreps backbone only the ``0e`` channels are used. With
    ``hidden=[32], act="softplus", input_activation=True`` and mean pooling this is the
    original CGCNN read-out (``conv_to_fc`` = ``mlp.linears.0``, ``fc_out`` = the last).

    Args:
        in_spec: the backbone's ``out_spec``.
        hidden: hidden widths of the MLP.
        act: activation name.
        input_activation: apply the activation to the pooled features first.
        reduce: ``"mean"`` or ``"sum"``.
    """

    per_atom = False
    task_kinds = ("scalar",)

    def __init__(
        self,
        in_spec,
        hidden: list[int] | tuple[int, ...] = (64,),
        act: str = "silu",
        input_activation: bool = False,
        reduce: str = "mean",
    ):
        super().__init__()
        width, idx = scalar_channels(in_spec)
        self.reduce = check_reduce(reduce)
        self.config = {
            "hidden": [int(h) for h in hidden],
            "act": str(act),
            "input_activation": bool(input_activation),
            "reduce": reduce,
        }
        if idx is not None:
            self.register_buffer("channels", torch.tensor(idx, dtype=torch.long), persistent=False)
        else:
            self.channels = None
        self.mlp = MLP(width, list(hidden), 1, act, input_activation=input_activation)

    def forward(self, backbone_out: dict, data) -> Tensor:
        """Prediction (normalised units).

        Args:
            backbone_out: ``{node_feats: [n_atoms, width or irreps.dim]}``.
            data: the (batched) graph, for the graph index of every atom.

        Returns:
            ``[B]``.
        """
        x = backbone_out[K.NODE_FEATURES]
        if self.channels is not None:
            x = x.index_select(1, self.channels)
        batch, num_graphs = graph_index(data, x.shape[0], x.device)
        return self.mlp(pool(x, batch, num_graphs, self.reduce)).squeeze(-1)
