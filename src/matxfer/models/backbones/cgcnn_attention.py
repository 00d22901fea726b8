"""Attention variant of CGCNN: softmax attention over each atom's incoming edges.

Per layer, for every edge ``j -> i`` with Gaussian-expanded length ``u_ij`` and
``z_ij = v_i (+) v_j (+) u_ij``:

    c_ij = exp(<v_i, v_j> <u_ij, u_ij>) / sum_k exp(<v_i, v_k> <u_ik, u_ik>)
    v_i <- v_i + sum_j c_ij * softplus(z_ij W_s + b_s)

Reading of the formula: ``c_ij`` is one scalar per edge (the logit is a product of two dot
products), normalised over the incoming edges of atom ``i``, and ``c_ij (.) softplus(...)``
scales the whole F-wide message of that edge. One ``Linear(2F + G, F)`` per layer replaces
CGCNN's ``Linear(2F + G, 2F)`` and its two batch-norms, hence about half the weights.
The softmax subtracts the per-atom maximum logit before exponentiating, so logits of any
magnitude give finite outputs (very large ones make the attention hard).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.utils import softmax

from matxfer import keys as K
from matxfer.models.backbones.cgcnn import CGCNN_GRAPH_DEFAULTS
from matxfer.models.base import Backbone, feature_dim_of, make_embedding
from matxfer.models.registry import register_backbone
from matxfer.nn.geometry import edge_vectors
from matxfer.nn.radial import GaussianBasis


class AttentionConv(nn.Module):
    """One attention convolution.

    Args:
        width: atom feature width ``F``.
        edge_dim: edge feature width ``G``.
    """

    def __init__(self, width: int, edge_dim: int):
        super().__init__()
        self.fc = nn.Linear(2 * width + edge_dim, width)

    def attention(self, v: Tensor, edge_src: Tensor, edge_dst: Tensor, u: Tensor) -> Tensor:
        """Attention weights ``c_ij``: ``[E]``, summing to one over each atom's incoming edges."""
        logits = (v.index_select(0, edge_dst) * v.index_select(0, edge_src)).sum(-1)
        logits = logits * (u * u).sum(-1)
        return softmax(logits, edge_dst, num_nodes=v.shape[0])

    def forward(self, v: Tensor, edge_src: Tensor, edge_dst: Tensor, u: Tensor) -> Tensor:
        """Update atom features.

        Args:
            v: ``[n_atoms, F]`` atom features.
            edge_src: ``[E]`` neighbour index ``j``.
            edge_dst: ``[E]`` centre index ``i``.
            u: ``[E, G]`` edge features.

        Returns:
            ``[n_atoms, F]``.
        """
        c = self.attention(v, edge_src, edge_dst, u)
        z = torch.cat([v.index_select(0, edge_dst), v.index_select(0, edge_src), u], dim=-1)
        msg = c.unsqueeze(-1) * F.softplus(self.fc(z))
        return v + v.new_zeros(v.shape).index_add_(0, edge_dst, msg)


@register_backbone("cgcnn-attention")
class CGCNNAttention(Backbone):
    """CGCNN with softmax attention instead of the sigmoid gate (see the module docstring).

    Args:
        width: atom feature width ``F``.
        n_conv: number of attention layers.
        gaussian_start: first Gaussian centre (Angstrom).
        gaussian_stop: last Gaussian centre (Angstrom).
        gaussian_step: spacing of the centres (Angstrom).
        gaussian_width: Gaussian width (``None``: the step).
        num_species: size of the embedding table by atomic number.
        atom_feature_dim: embed tabulated atom features with ``Linear(F_in, width)``.
        atom_features: ``"none"`` or a tabulated feature name (``"cgcnn"``: 92 columns).
    """

    graph_defaults = dict(CGCNN_GRAPH_DEFAULTS)
    equivariant = False

    def __init__(
        self,
        width: int = 64,
        n_conv: int = 3,
        gaussian_start: float = 0.0,
        gaussian_stop: float = 8.0,
        gaussian_step: float = 0.2,
        gaussian_width: float | None = None,
        num_species: int = 119,
        atom_feature_dim: int | None = None,
        atom_features: str = "none",
    ):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if n_conv < 1:
            raise ValueError(f"n_conv must be >= 1, got {n_conv}")
        atom_feature_dim = feature_dim_of(atom_features, atom_feature_dim)
        self.config = {
            "width": int(width),
            "n_conv": int(n_conv),
            "gaussian_start": float(gaussian_start),
            "gaussian_stop": float(gaussian_stop),
            "gaussian_step": float(gaussian_step),
            "gaussian_width": None if gaussian_width is None else float(gaussian_width),
            "num_species": int(num_species),
            "atom_feature_dim": atom_feature_dim,
            "atom_features": str(atom_features),
        }
        self.embedding = make_embedding(num_species, atom_feature_dim, width)
        self.num_species = int(num_species)
        self.expansion = GaussianBasis(gaussian_start, gaussian_stop, gaussian_step, gaussian_width)
        self.convs = nn.ModuleList(
            AttentionConv(width, self.expansion.num_basis) for _ in range(n_conv)
        )
        self.out_spec = int(width)

    def layer_groups(self) -> list[str]:
        """``["embedding", "convs.0", ..., "convs.{n-1}"]`` (input to output)."""
        return ["embedding"] + [f"convs.{k}" for k in range(len(self.convs))]

    def forward(self, data) -> dict[str, Tensor]:
        """Atom features of a (batched) crystal graph.

        Args:
            data: graph with ``z [n]`` (or ``x [n, F_in]``), ``pos``, ``cell``,
                ``edge_index [2, E]``, ``cell_shift [E, 3]``.

        Returns:
            ``{node_feats: [n, width]}``.
        """
        v = self.embed(data)
        src, dst = data[K.EDGE_INDEX]
        u = self.expansion(edge_vectors(data).norm(dim=-1))
        for conv in self.convs:
            v = conv(v, src, dst, u)
        return {K.NODE_FEATURES: v}
