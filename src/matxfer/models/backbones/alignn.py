"""ALIGNN backbone: edge-gated graph convolutions on the atom graph and its line graph.

Architecture (Choudhary & DeCost, npj Comput. Mater. 7, 185 (2021)):

1. inputs, all computed inside the model from ``pos``/``cell``:

   - atoms: learned embedding of the atomic number, or a linear map of tabulated atom
     features ``x`` (``atom_feature_dim``);
   - bonds (edges of the atom graph): Gaussian expansion of ``|r_ij|`` on ``[0, cutoff]``
     followed by two ``Linear -> norm -> SiLU`` blocks;
   - bond pairs (edges of the line graph, ``line_index``): Gaussian expansion of the bond
     angle cosine on ``[-1, 1]`` followed by two ``Linear -> norm -> SiLU`` blocks;

2. ``n_alignn`` ALIGNN layers: an edge-gated convolution on the line graph (its nodes are
   the bonds, its edges the bond pairs) updates the bond and bond-pair features, then an
   edge-gated convolution on the atom graph updates the atom and bond features (the last
   ALIGNN layer does not update the bond-pair features, which nothing reads afterwards);
3. ``n_gcn`` edge-gated convolutions on the atom graph only.

Edge-gated convolution (:class:`EdgeGatedConv`), for node features ``x`` and edge features
``y`` of edges ``j -> i``::

    m_ij  = A x_j + B x_i + C y_ij                                  (edge pre-activation)
    s_ij  = sigmoid(m_ij)
    h_i   = U x_i + (sum_j s_ij * V x_j) / (sum_j s_ij + eps)       (gates normalised per i)
    x_i  <- x_i + SiLU(norm(h_i))
    y_ij <- y_ij + SiLU(norm(m_ij))

Every input is a function of distances and angles, so the outputs are invariant under
rotations (proper and improper), translations and atom permutations. The backbone returns
per-atom and per-bond features; pooling belongs to the heads.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from annotated_types import Ge
from torch import Tensor, nn

from matxfer import keys as K
from matxfer.config import Int, PosFloat, PosInt
from matxfer.data.graphs import bond_cosines
from matxfer.models.base import Backbone, EmbeddingOptions, feature_dim_of
from matxfer.models.registry import register_backbone
from matxfer.nn.geometry import edge_vectors
from matxfer.nn.radial import GaussianBasis

#: accepted ``norm`` values
Norm = Literal["batch", "layer", "none"]
NORMS: tuple[str, ...] = get_args(Norm)


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


def _apply_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """Apply ``norm`` to ``[rows, width]``; empty inputs pass through (batch norm rejects them)."""
    if x.shape[0] == 0:
        return x
    return norm(x)


class _LinearNormAct(nn.Module):
    """``Linear -> norm -> SiLU`` on ``[rows, in_dim]``."""

    def __init__(self, in_dim: int, out_dim: int, norm: str):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = _norm(norm, out_dim)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(_apply_norm(self.norm, self.linear(x)))


class _Embeddings(nn.Module):
    """Atom, bond and bond-pair input embeddings (one parameter group for freezing).

    Attributes:
        atom: ``nn.Embedding(num_species, width)`` or ``nn.Linear(atom_feature_dim, width)``.
        bond: Gaussian basis of ``|r_ij|`` -> two ``Linear -> norm -> SiLU`` blocks.
        angle: Gaussian basis of ``cos(theta)`` -> two ``Linear -> norm -> SiLU`` blocks.
    """

    def __init__(
        self,
        width: int,
        num_species: int,
        atom_feature_dim: int | None,
        cutoff: float,
        num_rbf: int,
        num_angle_rbf: int,
        embedding_dim: int,
        norm: str,
    ):
        super().__init__()
        if atom_feature_dim is None:
            self.atom: nn.Module = nn.Embedding(num_species, width)
        else:
            self.atom = nn.Linear(atom_feature_dim, width)
        step = cutoff / (num_rbf - 1)
        self.bond_basis = GaussianBasis(0.0, cutoff, step)
        self.bond = nn.Sequential(
            _LinearNormAct(self.bond_basis.num_basis, embedding_dim, norm),
            _LinearNormAct(embedding_dim, width, norm),
        )
        self.angle_basis = GaussianBasis(-1.0, 1.0, 2.0 / (num_angle_rbf - 1))
        self.angle = nn.Sequential(
            _LinearNormAct(self.angle_basis.num_basis, embedding_dim, norm),
            _LinearNormAct(embedding_dim, width, norm),
        )


class EdgeGatedConv(nn.Module):
    """Edge-gated graph convolution with residual updates of nodes and edges.

    The four node-side linear maps (``A``, ``B``, ``V``, ``U`` in the module docstring) are
    one ``Linear(width, 4 width)`` applied per node before gathering, which is cheaper than
    applying them per edge.

    Args:
        width: feature width of nodes and edges.
        norm: ``"batch"``, ``"layer"`` or ``"none"``.
        eps: added to the per-node sum of gates.
        update_edges: also return updated edge features (``False``: the edges are returned
            unchanged and the edge normalisation is not built; used where nothing reads
            the updated edges, so that no parameter is left without a gradient).
    """

    def __init__(self, width: int, norm: str = "batch", eps: float = 1e-6, update_edges: bool = True):
        super().__init__()
        self.width = int(width)
        self.node_linear = nn.Linear(width, 4 * width)
        self.edge_linear = nn.Linear(width, width)
        self.node_norm = _norm(norm, width)
        self.edge_norm = _norm(norm, width) if update_edges else None
        self.act = nn.SiLU()
        self.eps = float(eps)

    def forward(self, x: Tensor, y: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
        """Update nodes and edges.

        Args:
            x: ``[N, width]`` node features.
            y: ``[M, width]`` edge features.
            src: ``[M]`` source node ``j`` of each edge.
            dst: ``[M]`` target node ``i`` of each edge (messages flow ``j -> i``).

        Returns:
            ``(x' [N, width], y' [M, width])``.
        """
        w = self.width
        gate_src, gate_dst, value, self_term = self.node_linear(x).split(w, dim=-1)
        m = gate_src[src] + gate_dst[dst] + self.edge_linear(y)
        s = m.sigmoid()
        num = x.new_zeros((x.shape[0], w)).index_add_(0, dst, s * value[src])
        den = x.new_zeros((x.shape[0], w)).index_add_(0, dst, s)
        h = self_term + num / (den + self.eps)
        x_out = x + self.act(_apply_norm(self.node_norm, h))
        if self.edge_norm is None:
            return x_out, y
        y_out = y + self.act(_apply_norm(self.edge_norm, m))
        return x_out, y_out


class ALIGNNLayer(nn.Module):
    """One ALIGNN layer: line-graph convolution (bonds, bond pairs), then atom-graph convolution.

    Args:
        width: feature width.
        norm: ``"batch"``, ``"layer"`` or ``"none"``.
        update_bond_pairs: return updated bond-pair features (``False`` in the last ALIGNN
            layer, whose bond-pair output nothing reads).
    """

    def __init__(self, width: int, norm: str = "batch", update_bond_pairs: bool = True):
        super().__init__()
        self.line_conv = EdgeGatedConv(width, norm, update_edges=update_bond_pairs)
        self.atom_conv = EdgeGatedConv(width, norm)

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        z: Tensor,
        edge_index: Tensor,
        line_index: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Update atoms, bonds and bond pairs.

        Args:
            x: ``[n_atoms, width]`` atom features.
            y: ``[E, width]`` bond features.
            z: ``[T, width]`` bond-pair features.
            edge_index: ``[2, E]`` (source j, target i).
            line_index: ``[2, T]`` (source bond, target bond).

        Returns:
            ``(x' [n_atoms, width], y' [E, width], z' [T, width])``.
        """
        y, z = self.line_conv(y, z, line_index[0], line_index[1])
        x, y = self.atom_conv(x, y, edge_index[0], edge_index[1])
        return x, y, z


class ALIGNNConfig(EmbeddingOptions):
    """Options of the ``alignn`` backbone (see :class:`ALIGNN`)."""

    width: PosInt = 256
    n_alignn: Annotated[Int, Ge(0)] = 4
    n_gcn: Annotated[Int, Ge(0)] = 4
    cutoff: PosFloat = 8.0
    num_rbf: PosInt = 80
    num_angle_rbf: PosInt = 40
    embedding_dim: PosInt = 64
    norm: Norm = "batch"


@register_backbone("alignn", config=ALIGNNConfig)
class ALIGNN(Backbone):
    """Atomistic line graph neural network (see the module docstring).

    Args:
        width: feature width of atoms, bonds and bond pairs.
        n_alignn: number of ALIGNN layers (line graph + atom graph).
        n_gcn: number of atom-graph-only layers after them.
        cutoff: upper end of the bond-length Gaussian basis (Angstrom; the graph cutoff).
        num_rbf: number of Gaussians for bond lengths on ``[0, cutoff]``.
        num_angle_rbf: number of Gaussians for bond-angle cosines on ``[-1, 1]``.
        embedding_dim: hidden width of the bond and angle embedding blocks.
        norm: ``"batch"`` (as in ALIGNN), ``"layer"`` or ``"none"``.
        num_species: size of the atomic-number embedding table.
        atom_feature_dim: if given, embed tabulated atom features ``x [n, F]`` with a
            ``Linear(F, width)`` instead of a table by atomic number.
        atom_features: ``"none"`` (embedding by atomic number) or a tabulated feature name
            (``"cgcnn"``: 92 columns unless ``atom_feature_dim`` says otherwise).
    """

    graph_defaults = {"cutoff": 8.0, "max_neighbors": 12, "line_graph": True, "atom_features": "none"}
    equivariant = False

    def __init__(
        self,
        width: int = 256,
        n_alignn: int = 4,
        n_gcn: int = 4,
        cutoff: float = 8.0,
        num_rbf: int = 80,
        num_angle_rbf: int = 40,
        embedding_dim: int = 64,
        norm: str = "batch",
        num_species: int = 119,
        atom_feature_dim: int | None = None,
        atom_features: str = "none",
    ):
        super().__init__()
        atom_feature_dim = feature_dim_of(atom_features, atom_feature_dim)
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if n_alignn < 0 or n_gcn < 0 or n_alignn + n_gcn < 1:
            raise ValueError(
                f"need n_alignn >= 0, n_gcn >= 0 and at least one layer, got n_alignn={n_alignn}, "
                f"n_gcn={n_gcn}"
            )
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Angstrom, got {cutoff}")
        if num_rbf < 2:
            raise ValueError(f"num_rbf must be >= 2, got {num_rbf}")
        if num_angle_rbf < 2:
            raise ValueError(f"num_angle_rbf must be >= 2, got {num_angle_rbf}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid: {list(NORMS)}")
        if num_species < 1:
            raise ValueError(f"num_species must be >= 1, got {num_species}")
        if atom_feature_dim is not None and atom_feature_dim < 1:
            raise ValueError(f"atom_feature_dim must be >= 1 or None, got {atom_feature_dim}")
        self.config = {
            "width": int(width),
            "n_alignn": int(n_alignn),
            "n_gcn": int(n_gcn),
            "cutoff": float(cutoff),
            "num_rbf": int(num_rbf),
            "num_angle_rbf": int(num_angle_rbf),
            "embedding_dim": int(embedding_dim),
            "norm": str(norm),
            "num_species": int(num_species),
            "atom_feature_dim": None if atom_feature_dim is None else int(atom_feature_dim),
            "atom_features": str(atom_features),
        }
        self.num_species = int(num_species)
        self.embedding = _Embeddings(
            int(width),
            int(num_species),
            self.config["atom_feature_dim"],
            float(cutoff),
            int(num_rbf),
            int(num_angle_rbf),
            int(embedding_dim),
            norm,
        )
        self.alignn_layers = nn.ModuleList(
            ALIGNNLayer(width, norm, update_bond_pairs=k < n_alignn - 1) for k in range(n_alignn)
        )
        self.gcn_layers = nn.ModuleList(EdgeGatedConv(width, norm) for _ in range(n_gcn))
        self.out_spec = int(width)

    def layer_groups(self) -> list[str]:
        """``["embedding", "alignn_layers.0", ..., "gcn_layers.0", ...]`` (input to output)."""
        return (
            ["embedding"]
            + [f"alignn_layers.{k}" for k in range(len(self.alignn_layers))]
            + [f"gcn_layers.{k}" for k in range(len(self.gcn_layers))]
        )

    def embed(self, data) -> Tensor:
        """Initial atom features from ``z`` (embedding table) or tabulated ``x`` (linear map).

        Args:
            data: graph with ``z [n]`` and, for a linear embedding, ``x [n, F]``.

        Returns:
            ``[n, width]``.

        Raises:
            ValueError: atomic number outside the table, or missing / mis-sized ``x``.
        """
        atom = self.embedding.atom
        if isinstance(atom, nn.Embedding):
            z = data[K.ATOMIC_NUMBERS]
            if z.numel() and (int(z.max()) >= atom.num_embeddings or int(z.min()) < 0):
                bad = int(z.max()) if int(z.max()) >= atom.num_embeddings else int(z.min())
                raise ValueError(
                    f"atomic number {bad} outside the embedding table "
                    f"(num_species={atom.num_embeddings})"
                )
            return atom(z)
        x = data[K.ATOM_FEATURES] if K.ATOM_FEATURES in data else None
        if x is None:
            raise ValueError(
                "this backbone embeds tabulated atom features (atom_feature_dim="
                f"{atom.in_features}) but the graph has no 'x'; build graphs with atom_features"
            )
        if x.shape[-1] != atom.in_features:
            raise ValueError(
                f"graph atom features have {x.shape[-1]} columns, the backbone expects "
                f"atom_feature_dim={atom.in_features}"
            )
        return atom(x.to(atom.weight.dtype))

    def forward(self, data) -> dict[str, Tensor]:
        """Atom and bond features of a (batched) crystal graph.

        Args:
            data: graph with ``z [n]`` (or ``x [n, F]``), ``pos [n, 3]``, ``cell [B, 3, 3]``,
                ``edge_index [2, E]``, ``cell_shift [E, 3]`` and, when ``n_alignn > 0``,
                ``line_index [2, T]`` (offset by the number of edges when batched).

        Returns:
            ``{node_feats: [n, width], edge_feats: [E, width]}``.

        Raises:
            ValueError: the graph has no line graph although ALIGNN layers need one.
        """
        emb = self.embedding
        x = self.embed(data)
        vec = edge_vectors(data)
        edge_index = data[K.EDGE_INDEX]
        y = emb.bond(emb.bond_basis(vec.norm(dim=-1)))
        if len(self.alignn_layers):
            line_index = data[K.LINE_INDEX] if K.LINE_INDEX in data else None
            if line_index is None:
                raise ValueError(
                    "the alignn backbone needs the line graph: build graphs with "
                    "line_graph=True (graph.line_graph in the run config)"
                )
            z = emb.angle(emb.angle_basis(bond_cosines(vec, line_index)))
            for layer in self.alignn_layers:
                x, y, z = layer(x, y, z, edge_index, line_index)
        for conv in self.gcn_layers:
            x, y = conv(x, y, edge_index[0], edge_index[1])
        return {K.NODE_FEATURES: x, K.EDGE_FEATURES: y}
