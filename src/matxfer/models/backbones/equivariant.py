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

import functools

import numpy as np
import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import Tensor, nn
from torch.nn import functional as F

from matxfer import keys as K
from matxfer.models.base import Backbone, feature_dim_of, make_embedding
from matxfer.models.registry import register_backbone
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


_ACTS = {"silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


@functools.cache
def second_moment_scale(act: str) -> float:
    """``1 / sqrt(E[act(z)^2])`` for ``z ~ N(0, 1)`` (Gauss-Hermite quadrature, cached)."""
    x, w = np.polynomial.hermite_e.hermegauss(120)
    fx = _ACTS[act](torch.tensor(x, dtype=torch.float64)).numpy()
    return float(1.0 / np.sqrt(np.sum(w * fx**2) / np.sqrt(2.0 * np.pi)))


class Gate(nn.Module):
    """Gate nonlinearity: activations on scalars, sigmoid gates multiplying ``l > 0`` irreps.

    Input layout ``scalars + gates + gated`` (:attr:`irreps_in`), output ``scalars + gated``
    (:attr:`irreps_out`). Even scalars get SiLU, odd scalars tanh (odd, so parity is kept),
    each gate (one ``0e`` per gated irrep) a sigmoid; every activation is rescaled to unit
    second moment for unit-normal inputs. Same function as ``e3nn.nn.Gate`` with these
    activations, built without its sampling-based normalisation (much faster to construct).

    Args:
        irreps_gated_out: irreps to produce (scalars ``0e``/``0o`` and gated ``l > 0``).
    """

    def __init__(self, irreps_gated_out: o3.Irreps):
        super().__init__()
        irreps = o3.Irreps(irreps_gated_out)
        scalars = o3.Irreps([(m, ir) for m, ir in irreps if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in irreps if ir.l > 0])
        gates = o3.Irreps([(gated.num_irreps, (0, 1))]) if gated.num_irreps else o3.Irreps("")
        self.irreps_in = scalars + gates + gated
        self.irreps_out = scalars + gated
        self.n_scalars = scalars.dim
        self.n_gates = gates.dim
        scale = []
        for mul, ir in scalars:
            act = "silu" if ir.p == 1 else "tanh"
            scale += [second_moment_scale(act)] * mul
        is_odd = [ir.p == -1 for mul, ir in scalars for _ in range(mul)]
        dt = torch.get_default_dtype()
        self.register_buffer("scalar_scale", torch.tensor(scale, dtype=dt), persistent=False)
        self.register_buffer("odd", torch.tensor(is_odd, dtype=torch.bool), persistent=False)
        self.gate_scale = second_moment_scale("sigmoid")
        # gate index of every gated component
        repeat = [ir.dim for mul, ir in gated for _ in range(mul)]
        index = torch.repeat_interleave(
            torch.arange(len(repeat)), torch.tensor(repeat, dtype=torch.long)
        )
        self.register_buffer("gate_index", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., irreps_in.dim]`` -> ``[..., irreps_out.dim]``."""
        n_v = x.shape[-1] - self.n_scalars - self.n_gates
        s, g, v = x.split([self.n_scalars, self.n_gates, n_v], dim=-1)
        s = torch.where(self.odd, torch.tanh(s), F.silu(s)) * self.scalar_scale.to(x.dtype)
        if self.n_gates == 0:
            return s
        g = torch.sigmoid(g) * self.gate_scale
        return torch.cat([s, v * g.index_select(-1, self.gate_index)], dim=-1)


@torch.no_grad()
def reset_e3nn_parameters(module: nn.Module) -> int:
    """Re-draw the weights of the e3nn layers inside ``module`` as e3nn initialises them.

    e3nn's ``o3.Linear`` and ``FullyConnectedNet`` layers have no ``reset_parameters``;
    their weights are standard normal (the normalisation is applied in ``forward``) and
    ``o3.Linear`` biases start at zero. Returns the number of layers reset.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, o3.Linear):
            if m.weight.numel():
                m.weight.normal_()
            if getattr(m, "bias", None) is not None and m.bias.numel():
                m.bias.zero_()
            n += 1
        elif type(m).__name__ == "_Layer" and isinstance(getattr(m, "weight", None), nn.Parameter):
            m.weight.normal_()  # a FullyConnectedNet layer
            n += 1
    return n


def _keep_path(l1: int, l2: int, l3: int, max_path_l: int | None, sh_l_nonscalar: int) -> bool:
    """Whether the path ``l1 x l2 -> l3`` is built.

    Scalar inputs (``l1 = 0``) and plain neighbour sums (``l2 = 0``) are always kept;
    other paths need ``l2 <= sh_l_nonscalar`` and ``l1 + l2 + l3 <= max_path_l``.
    """
    if l1 == 0 or l2 == 0:
        return True
    if l2 > sh_l_nonscalar:
        return False
    return max_path_l is None or l1 + l2 + l3 <= max_path_l


class EdgeTensorProduct(nn.Module):
    """``uvu`` tensor product of neighbour irreps with edge harmonics, summed over neighbours.

    For every input block ``(mul, l1 p1)`` (channels ``u``), every harmonic degree ``l2`` and
    every output ``l3`` allowed by the triangle rule whose irrep ``(l3, p1 (-1)^l2)`` is in
    ``wanted``, the path output of edge ``e = (j -> i)`` is

        out[e, u, :] = w[e, path, u] sqrt(2 l3 + 1) sum_ab C(l1,l2,l3)[a, b, :] x_j[u, a] Y[e, b]

    with ``C`` e3nn's Wigner-3j symbols: exactly ``e3nn.o3.TensorProduct`` with ``uvu``
    instructions, ``irrep_normalization="component"`` and ``path_normalization="element"``
    (each path writes its own output block). It is computed per input block as
    ``M = Y @ C_big`` (edge geometry only, shared by every layer with the same paths),
    a ``(2 l1 + 1)``-term contraction with the channels, the path weights broadcast over
    each ``l3`` segment, and a scatter-sum to the centre atoms, instead of one einsum per
    path: on CPU this is several times faster and avoids slicing every path.

    Args:
        irreps_in: irreps of the node features (sorted and simplified).
        l_max_sh: highest harmonic degree.
        wanted: output irreps to produce.
        max_path_l: drop paths of non-scalar inputs (``l1 > 0``) with ``l1 + l2 + l3``
            above this (``None``: keep all). Paths of scalar inputs are always kept (they
            are cheap and the only way harmonics of every degree enter), and so are the
            ``l2 = 0`` paths (a radial-weighted neighbour sum of every irrep).
        sh_l_nonscalar: highest harmonic degree ``l2`` combined with non-scalar inputs
            (``None``: ``l_max_sh``).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        l_max_sh: int,
        wanted: set,
        max_path_l: int | None = None,
        sh_l_nonscalar: int | None = None,
    ):
        super().__init__()
        if sh_l_nonscalar is None:
            sh_l_nonscalar = l_max_sh
        irreps_in = o3.Irreps(irreps_in)
        if irreps_in != irreps_in.sort().irreps.simplify():
            raise ValueError(f"EdgeTensorProduct needs sorted, simplified irreps, got {irreps_in}")
        self.irreps_in = irreps_in
        n_sh = (l_max_sh + 1) ** 2
        dtype = torch.get_default_dtype()
        self.groups: list[dict] = []
        mid: list[tuple[int, o3.Irrep]] = []
        mid_cols: list[list[int]] = []
        self.paths: list[tuple[int, int, int]] = []  # (block, l2, unsorted output index)
        raw_offset = 0
        w_offset = 0
        x_offset = 0
        for block, (mul, ir_in) in enumerate(irreps_in):
            l1, a = ir_in.l, ir_in.dim
            by_l3: dict[int, list[int]] = {}
            for l2 in range(l_max_sh + 1):
                for l3 in range(abs(l1 - l2), l1 + l2 + 1):
                    if o3.Irrep(l3, ir_in.p * (-1) ** l2) not in wanted:
                        continue
                    if not _keep_path(l1, l2, l3, max_path_l, sh_l_nonscalar):
                        continue
                    by_l3.setdefault(l3, []).append(l2)
            x_slice = (x_offset, x_offset + mul * a)
            x_offset += mul * a
            if not by_l3:
                continue
            # columns: l3 segments in increasing l3; inside, paths (l2 increasing) x (2 l3 + 1)
            n_k = sum(len(l2s) * (2 * l3 + 1) for l3, l2s in by_l3.items())
            cbig = torch.zeros(n_sh, a, n_k, dtype=torch.float64)
            segments = []
            k0 = 0
            # raw layout of this block: per segment [mul, n_paths, 2 l3 + 1]
            for l3 in sorted(by_l3):
                l2s = by_l3[l3]
                d3 = 2 * l3 + 1
                seg_raw = raw_offset
                for q, l2 in enumerate(l2s):
                    c = o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * d3**0.5
                    kq = k0 + q * d3
                    cbig[l2 * l2 : l2 * l2 + 2 * l2 + 1, :, kq : kq + d3] = c.permute(1, 0, 2)
                    cols = [
                        seg_raw + (u * len(l2s) + q) * d3 + m for u in range(mul) for m in range(d3)
                    ]
                    self.paths.append((block, l2, len(mid)))
                    mid.append((mul, o3.Irrep(l3, ir_in.p * (-1) ** l2)))
                    mid_cols.append(cols)
                segments.append(
                    {
                        "l3": l3,
                        "n_paths": len(l2s),
                        "k": (k0, k0 + len(l2s) * d3),
                        "w": (w_offset, w_offset + len(l2s) * mul),
                    }
                )
                k0 += len(l2s) * d3
                raw_offset += mul * len(l2s) * d3
                w_offset += len(l2s) * mul
            self.register_buffer(
                f"cbig_{block}", cbig.reshape(n_sh, a * n_k).to(dtype), persistent=False
            )
            key = (l1, tuple((l3, tuple(by_l3[l3])) for l3 in sorted(by_l3)))
            self.groups.append(
                {
                    "block": block,
                    "key": key,
                    "mul": mul,
                    "a": a,
                    "n_k": n_k,
                    "x_slice": x_slice,
                    "segments": segments,
                }
            )
        if not mid:
            raise ValueError(f"no tensor-product path from {irreps_in} reaches {sorted(wanted)}")
        self._x_sizes = [mul * ir.dim for mul, ir in irreps_in]
        self._w_sizes = []
        for g in self.groups:
            g["x_part"] = g["block"]
            g["k_sizes"] = [seg["k"][1] - seg["k"][0] for seg in g["segments"]]
            for seg in g["segments"]:
                seg["w_part"] = len(self._w_sizes)
                self._w_sizes.append(seg["w"][1] - seg["w"][0])
        self.raw_dim = raw_offset
        self.weight_numel = w_offset
        irreps_mid = o3.Irreps(mid)
        sorted_mid, perm, inv = irreps_mid.sort()
        gather = [c for k in range(len(mid)) for c in mid_cols[inv[k]]]
        self.register_buffer("mid_index", torch.tensor(gather, dtype=torch.long), False)
        #: output irreps (sorted, simplified)
        self.irreps_out = sorted_mid.simplify()
        #: output irreps before simplification (one entry per path)
        self.irreps_mid = sorted_mid
        #: (block, l2, index in :attr:`irreps_mid`) of every path, in weight order
        self.paths = [(blk, l2, perm[k]) for blk, l2, k in self.paths]

    def edge_basis(self, sh: Tensor, cache: dict | None = None) -> list[Tensor]:
        """``M = Y @ C_big`` of every input block: ``[E, 2 l1 + 1, K]`` each.

        Cached by path set, so later layers with the same paths reuse it.

        Args:
            sh: ``[E, (l_max_sh + 1)^2]`` edge spherical harmonics.
            cache: dict shared by the layers of one forward pass.
        """
        out = []
        for g in self.groups:
            key = g["key"]
            if cache is not None and key in cache:
                out.append(cache[key])
                continue
            cbig = getattr(self, f"cbig_{g['block']}").to(sh.dtype)
            m = (sh @ cbig).view(sh.shape[0], g["a"], g["n_k"])
            if cache is not None:
                cache[key] = m
            out.append(m)
        return out

    def forward(
        self,
        x: Tensor,
        edge_src: Tensor,
        edge_dst: Tensor,
        basis: list[Tensor],
        weight: Tensor,
        num_nodes: int,
    ) -> Tensor:
        """Sum of the path outputs over each atom's incoming edges.

        Args:
            x: ``[n_atoms, irreps_in.dim]`` node features.
            edge_src: ``[E]`` neighbour index ``j``.
            edge_dst: ``[E]`` centre index ``i``.
            basis: :meth:`edge_basis` of the edges.
            weight: ``[E, weight_numel]`` per-edge path weights.
            num_nodes: number of atoms.

        Returns:
            ``[n_atoms, irreps_out.dim]`` (sorted, simplified layout).
        """
        n_e = edge_src.shape[0]
        # split (not slice): the backward of one split is one concatenation
        xs_all = x.split(self._x_sizes, dim=1)
        ws_all = weight.split(self._w_sizes, dim=1)
        outs = []
        for g, m in zip(self.groups, basis):
            mul, a = g["mul"], g["a"]
            # neighbour channels, component-major: a x [E, mul]
            xs = xs_all[g["x_part"]].index_select(0, edge_src).view(n_e, mul, a)
            xa = xs.transpose(1, 2).contiguous().unbind(dim=1)
            ma = m.unbind(dim=1)  # a x [E, K]
            y = xa[0].unsqueeze(-1) * ma[0].unsqueeze(1)
            for i in range(1, a):
                y = y.addcmul(xa[i].unsqueeze(-1), ma[i].unsqueeze(1))
            # path weights, broadcast over the 2 l3 + 1 components of each path
            for seg, yk in zip(g["segments"], y.split(g["k_sizes"], dim=2)):
                n_p, d3 = seg["n_paths"], 2 * seg["l3"] + 1
                w = ws_all[seg["w_part"]].view(n_e, n_p, mul).transpose(1, 2)
                yw = (yk.reshape(n_e, mul, n_p, d3) * w.unsqueeze(-1)).reshape(n_e, -1)
                outs.append(yw.new_zeros((num_nodes, yw.shape[1])).index_add_(0, edge_dst, yw))
        raw = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return raw.index_select(1, self.mid_index)


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


@register_backbone("equivariant")
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
