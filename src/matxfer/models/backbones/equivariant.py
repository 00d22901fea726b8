"""E(3)-equivariant tensor backbone (NequIP/MatTen-style interaction layers built with e3nn).

Architecture:

1. species embedding (learned by atomic number, or a linear map of tabulated atom
   features ``x``) to ``n`` even scalars ``nx0e``;
2. every edge: Bessel radial basis of ``|r_ij|`` times a smooth polynomial cutoff envelope,
   and real spherical harmonics ``Y_lm(r_ij / |r_ij|)`` for ``l <= l_max`` (component
   normalisation);
3. ``n_layers`` interaction layers, each

   - ``h = Linear(x)`` (mixing, per node),
   - message ``m_ij = TP(h_j, Y(r_ij); w(r_ij))``: an e3nn tensor product with ``uvu``
     paths (every channel of ``h_j`` times the edge harmonics; one weight per path and
     channel, produced per edge by a bias-free MLP of the enveloped radial basis, so an
     edge's message vanishes smoothly at the cutoff),
   - aggregation ``sum_j m_ij / avg_num_neighbors``,
   - ``Linear`` of the aggregate plus a linear self-connection of ``x``, then a Gate
     nonlinearity (SiLU on even scalars, tanh on odd scalars, sigmoid gates on ``l > 0``),
   - a residual connection once the input already has the hidden irreps.

The hidden irreps carry both parities, because the piezoelectric tensor contains ``2o``,
which even-parity features cannot produce. Node features of irreps :attr:`out_spec` are
returned; pooling and the map to targets live in the heads.

Speed (the edge tensor product is nearly all of the cost, and on CPU it is bound by memory
traffic, proportional to ``sum over paths of mul * (2 l1 + 1) * (2 l3 + 1)`` per edge):

- the tensor product is computed by :class:`EdgeTensorProduct`, numerically identical to
  e3nn's ``TensorProduct`` with the same ``uvu`` instructions but grouped per input block
  (e3nn's per-path code spends most of its time slicing; this is ~3x faster here);
- only paths whose output irrep is in the hidden irreps are built, and by default
  (``sh_l_nonscalar=2``, ``max_path_l=7``) non-scalar channels meet harmonics of degree
  <= 2 with ``l1 + l2 + l3 <= 7``; scalar channels meet every degree up to ``l_max`` (that
  is how ``l = 3, 4`` features arise) and every irrep keeps its ``l2 = 0`` neighbour sum.
  ``max_path_l=None, sh_l_nonscalar=None`` keeps every path (about 2x slower).

``benchmarks/train_throughput.py`` measures the throughput.
"""

from __future__ import annotations

from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import Tensor, nn
from torch.nn import functional as F

from matxfer import keys as K
from matxfer.config import Bool, Int, PosFloat, PosInt, Str, Widths
from matxfer.models.base import Backbone, EmbeddingOptions, feature_dim_of, make_embedding
from matxfer.models.registry import register_backbone
from matxfer.nn.e3 import EdgeTensorProduct, Gate, reset_e3nn_parameters
from matxfer.nn.geometry import edge_vectors
from matxfer.nn.radial import BesselBasis, PolynomialCutoff

#: default hidden irreps: both parities for l <= 3 (piezo needs 1o, 2o, 3o) and 4e (elastic);
#: 4o is left out: no target has it and the default paths would reach it only in a 4th layer
DEFAULT_HIDDEN_IRREPS = "16x0e+16x0o+8x1o+8x1e+4x2e+4x2o+2x3o+2x3e+2x4e"

#: mean number of neighbours within 5 A over MP elastic structures (measured: 34.3)
DEFAULT_AVG_NUM_NEIGHBORS = 34.0

#: default tensor-product path selection (see :class:`EdgeTensorProduct`)
DEFAULT_MAX_PATH_L = 7
DEFAULT_SH_L_NONSCALAR = 2


class Interaction(nn.Module):
    """One equivariant interaction layer (see the module docstring).

    Args:
        irreps_in: irreps of the incoming node features.
        irreps_hidden: irreps after the gate (the layer's output).
        l_max_sh: highest degree of the edge spherical harmonics.
        num_radial: size of the radial basis.
        radial_hidden: widths of the hidden layers of the radial MLP.
        avg_num_neighbors: normalisation of the neighbour sum.
        max_path_l: see :class:`EdgeTensorProduct`.
        sh_l_nonscalar: see :class:`EdgeTensorProduct`.
        residual: add the input to the output when the irreps match.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_hidden: o3.Irreps,
        l_max_sh: int,
        num_radial: int,
        radial_hidden: list[int],
        avg_num_neighbors: float,
        max_path_l: int | None = None,
        sh_l_nonscalar: int | None = None,
        residual: bool = True,
    ):
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        irreps_hidden = o3.Irreps(irreps_hidden)
        self.irreps_in = irreps_in
        self.avg_num_neighbors = float(avg_num_neighbors)

        self.gate = Gate(irreps_hidden)
        irreps_gate_in = self.gate.irreps_in
        self.irreps_out = self.gate.irreps_out
        wanted = {ir for _, ir in irreps_gate_in}

        irreps_tp_in = irreps_in.sort().irreps.simplify()
        self.linear_in = o3.Linear(irreps_in, irreps_tp_in)
        self.tp = EdgeTensorProduct(irreps_tp_in, l_max_sh, wanted, max_path_l, sh_l_nonscalar)
        # bias-free, variance-preserving MLP (e3nn): zero input at the cutoff -> zero weights
        self.radial = FullyConnectedNet([num_radial, *radial_hidden, self.tp.weight_numel], F.silu)
        self.linear_out = o3.Linear(self.tp.irreps_out, irreps_gate_in)
        self.self_connection = o3.Linear(irreps_in, irreps_gate_in)
        self.residual = bool(residual) and irreps_in == self.irreps_out

    def reset_parameters(self) -> None:
        """Re-initialise every weight of the layer (e3nn layers included)."""
        reset_e3nn_parameters(self)

    def forward(
        self,
        x: Tensor,
        edge_src: Tensor,
        edge_dst: Tensor,
        sh: Tensor,
        radial: Tensor,
        cache: dict | None = None,
    ) -> Tensor:
        """Update node features.

        Args:
            x: ``[n_atoms, irreps_in.dim]`` node features.
            edge_src: ``[E]`` neighbour index ``j``.
            edge_dst: ``[E]`` centre index ``i``.
            sh: ``[E, (l_max_sh + 1)^2]`` spherical harmonics of the edge directions.
            radial: ``[E, num_radial]`` enveloped radial basis.
            cache: dict shared by the layers of one forward pass (edge bases).

        Returns:
            ``[n_atoms, irreps_out.dim]`` node features.
        """
        h = self.linear_in(x)
        w = self.radial(radial)
        basis = self.tp.edge_basis(sh, cache)
        agg = self.tp(h, edge_src, edge_dst, basis, w, x.shape[0]) / self.avg_num_neighbors
        out = self.gate(self.linear_out(agg) + self.self_connection(x))
        if self.residual:
            out = out + x
        return out


class EquivariantConfig(EmbeddingOptions):
    """Options of the ``equivariant`` backbone (see :class:`EquivariantBackbone`)."""

    hidden_irreps: Str = DEFAULT_HIDDEN_IRREPS
    n_layers: PosInt = 3
    l_max: PosInt = 4
    cutoff: PosFloat = 5.0
    num_radial: PosInt = 8
    radial_hidden: Widths = [32]
    envelope_p: PosInt = 6
    avg_num_neighbors: PosFloat = DEFAULT_AVG_NUM_NEIGHBORS
    max_path_l: Int | None = DEFAULT_MAX_PATH_L
    sh_l_nonscalar: Int | None = DEFAULT_SH_L_NONSCALAR
    residual: Bool = True


@register_backbone("equivariant", config=EquivariantConfig)
class EquivariantBackbone(Backbone):
    """NequIP/MatTen-like equivariant backbone (see the module docstring).

    Args:
        hidden_irreps: irreps of the node features between layers (both parities).
        n_layers: number of interaction layers.
        l_max: highest degree of the edge spherical harmonics (4 for rank-4 targets).
        cutoff: radial cutoff in Angstrom (must match the graph cutoff).
        num_radial: number of Bessel functions.
        radial_hidden: hidden widths of the per-layer radial MLP.
        envelope_p: order of the polynomial cutoff envelope.
        avg_num_neighbors: constant the neighbour sum is divided by.
        num_species: size of the species embedding table (atomic numbers < num_species).
        atom_feature_dim: if given, embed tabulated atom features ``x [n, F]`` with a
            ``Linear(F, n_scalars)`` instead of a table by atomic number.
        atom_features: ``"none"`` or a tabulated feature name (``"cgcnn"``: 92 columns).
        max_path_l: drop tensor-product paths of non-scalar channels with
            ``l_in + l_sh + l_out`` above this (``None``: keep all).
        sh_l_nonscalar: highest harmonic degree combined with non-scalar channels
            (``None``: ``l_max``); scalar channels always see every degree up to ``l_max``.
        residual: residual connections between layers.
    """

    graph_defaults = {"cutoff": 5.0, "max_neighbors": None, "atom_features": "none"}
    equivariant = True

    def __init__(
        self,
        hidden_irreps: str = DEFAULT_HIDDEN_IRREPS,
        n_layers: int = 3,
        l_max: int = 4,
        cutoff: float = 5.0,
        num_radial: int = 8,
        radial_hidden: list[int] | tuple[int, ...] = (32,),
        envelope_p: int = 6,
        avg_num_neighbors: float = DEFAULT_AVG_NUM_NEIGHBORS,
        num_species: int = 119,
        atom_feature_dim: int | None = None,
        atom_features: str = "none",
        max_path_l: int | None = DEFAULT_MAX_PATH_L,
        sh_l_nonscalar: int | None = DEFAULT_SH_L_NONSCALAR,
        residual: bool = True,
    ):
        super().__init__()
        try:
            hidden = o3.Irreps(hidden_irreps)
        except (ValueError, AssertionError) as exc:
            raise ValueError(f"invalid hidden_irreps {hidden_irreps!r}: {exc}") from exc
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if l_max < 0:
            raise ValueError(f"l_max must be >= 0, got {l_max}")
        if not avg_num_neighbors > 0:
            raise ValueError(f"avg_num_neighbors must be > 0, got {avg_num_neighbors}")
        atom_feature_dim = feature_dim_of(atom_features, atom_feature_dim)
        n_scalars = sum(m for m, ir in hidden if ir == o3.Irrep("0e"))
        if n_scalars == 0:
            raise ValueError(f"hidden_irreps {hidden_irreps!r} has no even scalars (0e)")
        self.config = {
            "hidden_irreps": str(hidden),
            "n_layers": int(n_layers),
            "l_max": int(l_max),
            "cutoff": float(cutoff),
            "num_radial": int(num_radial),
            "radial_hidden": [int(h) for h in radial_hidden],
            "envelope_p": int(envelope_p),
            "avg_num_neighbors": float(avg_num_neighbors),
            "num_species": int(num_species),
            "atom_feature_dim": atom_feature_dim,
            "atom_features": str(atom_features),
            "max_path_l": None if max_path_l is None else int(max_path_l),
            "sh_l_nonscalar": None if sh_l_nonscalar is None else int(sh_l_nonscalar),
            "residual": bool(residual),
        }
        self.embedding = make_embedding(num_species, atom_feature_dim, n_scalars)
        self.num_species = int(num_species)
        self.radial_basis = BesselBasis(cutoff, num_radial)
        self.envelope = PolynomialCutoff(cutoff, envelope_p)
        self.irreps_sh = o3.Irreps.spherical_harmonics(l_max)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        irreps = o3.Irreps(f"{n_scalars}x0e")
        layers = []
        for _ in range(n_layers):
            layer = Interaction(
                irreps,
                hidden,
                l_max,
                num_radial,
                list(radial_hidden),
                avg_num_neighbors,
                max_path_l,
                sh_l_nonscalar,
                residual,
            )
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        self.out_spec = irreps

    def layer_groups(self) -> list[str]:
        """``["embedding", "layers.0", ..., "layers.{n-1}"]`` (input to output)."""
        return ["embedding"] + [f"layers.{k}" for k in range(len(self.layers))]

    def forward(self, data) -> dict[str, Tensor]:
        """Node features of a (batched) crystal graph.

        Args:
            data: graph with ``z [n]`` (or ``x [n, F]``), ``pos [n,3]``, ``cell [B,3,3]``,
                ``edge_index [2,E]``, ``cell_shift [E,3]``.

        Returns:
            ``{node_feats: [n, out_spec.dim]}``.
        """
        x = self.embed(data)
        vec = edge_vectors(data)
        src, dst = data[K.EDGE_INDEX]
        length = vec.norm(dim=-1)
        sh = self.sh(vec)
        radial = self.radial_basis(length) * self.envelope(length).unsqueeze(-1)
        cache: dict = {}
        for layer in self.layers:
            x = layer(x, src, dst, sh, radial, cache)
        return {K.NODE_FEATURES: x}
