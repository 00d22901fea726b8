"""CGCNN backbone (Xie & Grossman, PRL 120, 145301, 2018) and its attention variant.

One class, :class:`CGCNN`, with the convolution as a parameter (:attr:`CGCNN.conv_class`);
``cgcnn`` uses :class:`CGCNNConv`, ``cgcnn-attention`` (:class:`CGCNNAttention`)
:class:`AttentionConv`. Everything else (embedding, Gaussian expansion, layer groups, graph
defaults, config keys) is shared, and so are the parameter names: ``embedding``,
``convs.N.*``.

``cgcnn``: per conv layer, for every edge ``j -> i`` with Gaussian-expanded length ``u_ij``:

    z_ij = v_i (+) v_j (+) u_ij
    [g_ij, c_ij] = BN1(z_ij W + b)                 (split into two halves of width F)
    v_i <- softplus(v_i + BN2(sum_j sigmoid(g_ij) * softplus(c_ij)))

BN1 normalises over edges, BN2 over atoms. ``z_ij W`` is evaluated as
``v_i W_i + v_j W_j + u_ij W_u`` (the three column blocks of ``fc_full.weight``): the two
atom products are taken once per atom and gathered per edge, so the per-edge matrix
product only covers the edge features. When every atom has the same number ``k`` of
incoming edges, stored centre by centre (graphs cut at ``max_neighbors`` without
``keep_shell``, and CGCNN compatibility graphs), the edges are handled as a dense
``[n_atoms, k, .]`` block and summed over ``k``, as the original code does; any other
graph takes the sparse path (gather per edge, ``index_add`` per centre). Both paths
compute the same function. Parameter names follow the original code
(``embedding``, ``convs.N.fc_full``, ``convs.N.bn1``, ``convs.N.bn2``) so released CGCNN
checkpoints map onto this module key for key (their ``conv_to_fc``/``fc_out`` belong to a
scalar head).

``cgcnn-attention``: softmax attention over each atom's incoming edges. Per layer, for
every edge ``j -> i`` with Gaussian-expanded length ``u_ij`` and ``z_ij = v_i (+) v_j (+) u_ij``:

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

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.utils import softmax

from matxfer import keys as K
from matxfer.config import NonNegFloat, PosFloat, PosInt
from matxfer.models.base import Backbone, EmbeddingOptions, feature_dim_of, make_embedding
from matxfer.models.registry import register_backbone
from matxfer.nn.geometry import edge_vectors
from matxfer.nn.radial import GaussianBasis

#: graph settings of the CGCNN family
CGCNN_GRAPH_DEFAULTS = {"cutoff": 8.0, "max_neighbors": 12, "atom_features": "none"}


class CGCNNConv(nn.Module):
    """One CGCNN convolution.

    Args:
        width: atom feature width ``F``.
        edge_dim: edge feature width (Gaussian basis size).
    """

    def __init__(self, width: int, edge_dim: int):
        super().__init__()
        self.width = width
        self.fc_full = nn.Linear(2 * width + edge_dim, 2 * width)
        self.bn1 = nn.BatchNorm1d(2 * width)
        self.bn2 = nn.BatchNorm1d(width)

    def forward(
        self, v: Tensor, edge_src: Tensor, edge_dst: Tensor, u: Tensor, k: int | None = None
    ) -> Tensor:
        """Update atom features.

        Args:
            v: ``[n_atoms, F]`` atom features.
            edge_src: ``[E]`` neighbour index ``j``.
            edge_dst: ``[E]`` centre index ``i``.
            u: ``[E, edge_dim]`` edge features.
            k: edges per atom when the edges come centre by centre, ``k`` each (edge
                ``e`` ends at atom ``e // k``; :func:`neighbours_per_atom` checks it):
                dense path. ``None``: sparse path, any edge order.

        Returns:
            ``[n_atoms, F]``.
        """
        w, b = self.fc_full.weight, self.fc_full.bias
        width = self.width
        # per-atom products with the centre and neighbour blocks of the weight, in one matmul
        atom_w = torch.cat([w[:, :width], w[:, width : 2 * width]], dim=0)
        centre, nbr = F.linear(v, atom_w).chunk(2, dim=-1)
        centre = centre + b
        # per edge: neighbour term gathered, plus the edge-feature product
        h = torch.addmm(nbr.index_select(0, edge_src), u, w[:, 2 * width :].t())
        n = v.shape[0]
        if k is not None:
            h = (h.view(n, k, 2 * width) + centre.unsqueeze(1)).view(-1, 2 * width)
        else:
            h = h + centre.index_select(0, edge_dst)
        gate, core = self.bn1(h).chunk(2, dim=-1)
        msg = torch.sigmoid(gate) * F.softplus(core)
        if k is not None:
            summed = msg.view(n, k, width).sum(dim=1)
        else:
            summed = v.new_zeros(v.shape).index_add_(0, edge_dst, msg)
        return F.softplus(v + self.bn2(summed))


def neighbours_per_atom(edge_dst: Tensor, n_atoms: int) -> int | None:
    """``k`` when the edges come centre by centre with ``k`` per atom (edge ``e`` ends at atom
    ``e // k``, as in a graph cut at ``max_neighbors`` whose atoms all have that many), else
    ``None``."""
    n_edges = int(edge_dst.numel())
    if n_atoms < 1 or n_edges == 0 or n_edges % n_atoms:
        return None
    k = n_edges // n_atoms
    centres = torch.arange(n_atoms, device=edge_dst.device, dtype=edge_dst.dtype)
    if not torch.equal(edge_dst.view(n_atoms, k), centres.unsqueeze(1).expand(n_atoms, k)):
        return None
    return k


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


class CGCNNConfig(EmbeddingOptions):
    """Options of the ``cgcnn`` and ``cgcnn-attention`` backbones (see :class:`CGCNN`)."""

    width: PosInt = 64
    n_conv: PosInt = 3
    gaussian_start: NonNegFloat = 0.0
    gaussian_stop: PosFloat = 8.0
    gaussian_step: PosFloat = 0.2
    gaussian_width: PosFloat | None = None


@register_backbone("cgcnn", config=CGCNNConfig)
class CGCNN(Backbone):
    """Crystal graph convolutional network backbone.

    Args:
        width: atom feature width ``F`` (64 in the released checkpoints).
        n_conv: number of convolution layers (released checkpoints: 4).
        gaussian_start: first Gaussian centre (Angstrom).
        gaussian_stop: last Gaussian centre (Angstrom).
        gaussian_step: spacing of the centres (Angstrom).
        gaussian_width: Gaussian width (``None``: the step, as in CGCNN).
        num_species: size of the embedding table by atomic number.
        atom_feature_dim: embed tabulated atom features ``x [n, F_in]`` with
            ``Linear(F_in, width)`` (92 for CGCNN's ``atom_init.json``) instead of a table.
        atom_features: ``"none"`` (embedding by atomic number) or a tabulated feature
            name (``"cgcnn"``: 92 columns unless ``atom_feature_dim`` says otherwise).
    """

    graph_defaults = dict(CGCNN_GRAPH_DEFAULTS)
    equivariant = False
    #: the convolution, built as ``conv_class(width, edge_dim)`` for each layer
    conv_class: ClassVar[type[nn.Module]] = CGCNNConv
    #: use the convolution's dense path on graphs with ``k`` edges per atom stored centre by
    #: centre (:func:`neighbours_per_atom`); ``False`` forces the sparse path
    dense_neighbours: bool = True

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
            self.conv_class(width, self.expansion.num_basis) for _ in range(n_conv)
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
        k = None
        if self.dense_neighbours and self.conv_class is CGCNNConv:
            k = neighbours_per_atom(dst, v.shape[0])
        for conv in self.convs:
            v = conv(v, src, dst, u) if k is None else conv(v, src, dst, u, k)
        return {K.NODE_FEATURES: v}


@register_backbone("cgcnn-attention", config=CGCNNConfig)
class CGCNNAttention(CGCNN):
    """CGCNN with softmax attention instead of the sigmoid gate (:class:`AttentionConv`; see
    the module docstring). Same arguments as :class:`CGCNN`."""

    conv_class = AttentionConv
