"""Cartesian tensor heads for invariant backbones: edge sums of invariant weights times r̂ products.

An invariant backbone (CGCNN, ALIGNN, ...) gives rotation-invariant atom features ``h_i``
(and possibly bond features ``e_ij``). A tensor with the right transformation law is built
from them as a sum over the edges ``j -> i`` of invariant weights times products of the unit
bond vector ``n = r̂_ij`` (from the centre ``i`` to the neighbour ``j``) and Kronecker deltas,
symmetrised to the target's index symmetry:

======================  =============================================================
formula                 terms per edge (one invariant weight each)
======================  =============================================================
``ij=ji``               ``n_i n_j``;  ``δ_ij``
``ij`` (per atom)       ``n_i n_j``;  ``δ_ij``;  and ``V_i W_j`` with ``V = Σ a n``,
                        ``W = Σ b n`` (products of two edge sums: the antisymmetric
                        ``1e`` part, which a single vector cannot make)
``ijk=ikj``             ``n_i n_j n_k``;  ``n_i δ_jk``;  ``δ_ij n_k + δ_ik n_j``
``ijkl=jikl=klij``      ``n_i n_j n_k n_l``;  ``δ_ij n_k n_l + δ_kl n_i n_j``;
                        ``δ_ik n_j n_l + δ_il n_j n_k + δ_jk n_i n_l + δ_jl n_i n_k``;
                        ``δ_ij δ_kl``;  ``δ_ik δ_jl + δ_il δ_jk``
======================  =============================================================

The weights come from an MLP of ``[h_i, h_j, RBF(|r_ij|)]`` (plus a linear map of
``e_ij`` when the backbone returns bond features). Using ``h_i`` and ``h_j`` in this order
makes the weight of ``i -> j`` differ from that of ``j -> i``; with symmetric weights the
odd-rank terms of the two directions of a bond (``n`` and ``-n``) would cancel and no
piezoelectric tensor could be predicted.

Channels: every term has ``channels`` weights per edge, giving ``channels`` tensors per
atom ``T_i^c``. They are mixed with invariant gates,
``T_i = Σ_c g_c(h_i, log(1 + |T_i^1|^2), ..., log(1 + |T_i^C|^2)) T_i^c``, which makes the
head nonlinear in the geometry (many-body) while keeping the transformation law, because
Frobenius norms are invariant under every orthogonal ``R``.

Physics built in: under any orthogonal ``R`` (rotations and improper rotations) the
prediction transforms with ``R`` on every index; odd-rank (polar) tensors change sign under
the inversion, so a centrosymmetric crystal gives zero (its atoms pair up with opposite
per-atom tensors); the crystal-level tensor obeys the point group of the structure.

Outputs are the normalised irreps coordinates ``matxfer.tensors.to_irreps(T, formula)``
that the task's ``IrrepsNormalizer`` and the loss work with (the same contract as the
equivariant ``tensor`` head).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from e3nn import o3
from torch import Tensor, nn

from matxfer import keys as K
from matxfer.config import Bool, ModuleConfig, PosFloat, PosInt, Widths
from matxfer.models.base import Head
from matxfer.models.heads.scalar import scalar_channels
from matxfer.models.registry import register_head
from matxfer.nn.geometry import edge_vectors
from matxfer.nn.mlp import MLP, Activation
from matxfer.nn.pooling import Reduce, check_reduce, graph_index, pool
from matxfer.nn.radial import GaussianBasis
from matxfer.tensors import irreps_of, to_irreps

#: order (number of n factors) of the edge moment of every term, per formula
_TERM_ORDERS: dict[str, tuple[int, ...]] = {
    "ij=ji": (2, 0),
    "ij": (2, 0, 1, 1),
    "ijk=ikj": (3, 1, 1),
    "ijkl=jikl=klij": (4, 2, 2, 0, 0),
}

#: formulas the per-atom head accepts
AtomFormula = Literal["ij", "ij=ji"]
ATOM_FORMULAS: tuple[str, ...] = get_args(AtomFormula)


def _rank(formula: str) -> int:
    return len(formula.split("=")[0])


def _check_formula(formula: str, allowed) -> str:
    if formula not in allowed:
        raise ValueError(f"unknown formula {formula!r} for an edge tensor head; valid: {list(allowed)}")
    return formula


def _check_in_spec(in_spec) -> tuple[int, list[int] | None]:
    """Invariant input width, and for an irreps backbone the indices of its ``0e`` channels.

    On an equivariant backbone the head reads only the true scalars (``0e``): the tensor's
    direction dependence comes from the bond vectors, as on an invariant backbone.
    """
    if isinstance(in_spec, bool) or not isinstance(in_spec, (int, str, o3.Irreps)):
        raise ValueError(
            f"edge tensor heads need an int feature width or irreps with 0e channels, got "
            f"in_spec={in_spec!r}"
        )
    if isinstance(in_spec, int):
        if in_spec < 1:
            raise ValueError(f"in_spec (backbone width) must be >= 1, got {in_spec}")
        return int(in_spec), None
    try:
        return scalar_channels(in_spec)
    except ValueError as exc:
        raise ValueError(f"edge tensor head: {exc} (in_spec={in_spec!r})") from None


def _powers(n: Tensor, max_order: int) -> dict[int, Tensor]:
    """Flattened tensor powers of unit vectors: ``{k: [E, 3^k]}`` for ``1 <= k <= max_order``."""
    out = {}
    cur = None
    for k in range(1, max_order + 1):
        cur = n if cur is None else (cur.unsqueeze(-1) * n.unsqueeze(-2)).reshape(n.shape[0], -1)
        out[k] = cur
    return out


def _assemble(formula: str, moments: list[Tensor]) -> Tensor:
    """Per-atom channel tensors from the edge moments of the terms.

    Args:
        formula: one of :data:`_TERM_ORDERS`.
        moments: per term ``[n, C, 3^k]`` (``k`` its order; ``[n, C, 1]`` for order 0).

    Returns:
        ``[n, C, 3, ..., 3]`` (rank of the formula) with the formula's index symmetry.
    """
    n, c = moments[0].shape[:2]
    eye = torch.eye(3, dtype=moments[0].dtype, device=moments[0].device)
    if formula in ("ij=ji", "ij"):
        t = moments[0].view(n, c, 3, 3) + moments[1].view(n, c, 1, 1) * eye
        if formula == "ij":
            t = t + moments[2].unsqueeze(-1) * moments[3].unsqueeze(-2)
        return t
    if formula == "ijk=ikj":
        m3, v1, v2 = moments
        t = m3.view(n, c, 3, 3, 3)
        t = t + torch.einsum("nci,jk->ncijk", v1, eye)
        t = t + torch.einsum("ij,nck->ncijk", eye, v2) + torch.einsum("ik,ncj->ncijk", eye, v2)
        return t
    m4, p2, q2, s3, s4 = moments
    p = p2.view(n, c, 3, 3)
    q = q2.view(n, c, 3, 3)
    t = m4.view(n, c, 3, 3, 3, 3)
    t = t + torch.einsum("ij,nckl->ncijkl", eye, p) + torch.einsum("kl,ncij->ncijkl", eye, p)
    t = (
        t
        + torch.einsum("ik,ncjl->ncijkl", eye, q)
        + torch.einsum("il,ncjk->ncijkl", eye, q)
        + torch.einsum("jk,ncil->ncijkl", eye, q)
        + torch.einsum("jl,ncik->ncijkl", eye, q)
    )
    dd = torch.einsum("ij,kl->ijkl", eye, eye)
    cross = torch.einsum("ik,jl->ijkl", eye, eye) + torch.einsum("il,jk->ijkl", eye, eye)
    t = t + s3.view(n, c, 1, 1, 1, 1) * dd + s4.view(n, c, 1, 1, 1, 1) * cross
    return t


class _EdgeTensorBase(Head):
    """Per-atom Cartesian tensors from edge sums (shared by the crystal and per-atom heads)."""

    def _build(
        self,
        in_spec,
        formula: str,
        hidden,
        channels: int,
        num_rbf: int,
        cutoff: float,
        edge_features: bool | None,
        gate: bool,
        avg_num_neighbors: float,
        act: str,
    ) -> None:
        width, scalar_idx = _check_in_spec(in_spec)
        if scalar_idx is not None:
            self.register_buffer("scalar_idx", torch.tensor(scalar_idx, dtype=torch.long), persistent=False)
        else:
            self.scalar_idx = None
        hidden = [int(h) for h in hidden]
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty list of widths >= 1, got {hidden}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if num_rbf < 2:
            raise ValueError(f"num_rbf must be >= 2, got {num_rbf}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Angstrom, got {cutoff}")
        if not avg_num_neighbors > 0:
            raise ValueError(f"avg_num_neighbors must be > 0, got {avg_num_neighbors}")
        if edge_features not in (None, True, False):
            raise ValueError(f"edge_features must be None (auto), True or False, got {edge_features!r}")
        self.formula = formula
        self.rank = _rank(formula)
        self.irreps = irreps_of(formula)
        self.orders = _TERM_ORDERS[formula]
        self.channels = int(channels)
        self.width = width
        self.use_edge_features = edge_features
        self.gate = bool(gate)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.rbf = GaussianBasis(0.0, float(cutoff), float(cutoff) / (num_rbf - 1))
        self.node_in = nn.Linear(2 * width + self.rbf.num_basis, hidden[0])
        self.edge_in = nn.Linear(width, hidden[0], bias=False) if edge_features is not False else None
        n_out = self.channels * len(self.orders)
        self.weights = MLP(hidden[0], hidden[1:], n_out, act, input_activation=True)
        self.gate_mlp: MLP | None
        if self.gate:
            self.gate_mlp = MLP(width + self.channels, [hidden[-1]], self.channels, act)
        else:
            self.gate_mlp = None

    def atom_tensors(self, backbone_out: dict, data) -> Tensor:
        """Per-atom Cartesian tensors.

        Args:
            backbone_out: ``{node_feats: [n, width]}`` and optionally ``edge_feats: [E, width]``.
            data: the (batched) crystal graph (``pos``, ``cell``, ``edge_index``,
                ``cell_shift``, ``batch``).

        Returns:
            ``[n, 3, ..., 3]`` (rank of the formula).

        Raises:
            ValueError: on feature widths that do not match ``in_spec``, or missing bond
                features when ``edge_features=True``.
        """
        h = backbone_out[K.NODE_FEATURES]
        if self.scalar_idx is not None:
            h = h.index_select(-1, self.scalar_idx)
        if h.ndim != 2 or h.shape[-1] != self.width:
            raise ValueError(
                f"node features have shape {tuple(h.shape)}, the head expects [n, {self.width}]"
            )
        src, dst = data[K.EDGE_INDEX]
        vec = edge_vectors(data).to(h.dtype)
        length = vec.norm(dim=-1)
        unit = vec / length.clamp_min(1e-12).unsqueeze(-1)
        pre = self.node_in(torch.cat([h[dst], h[src], self.rbf(length)], dim=-1))
        e = backbone_out.get(K.EDGE_FEATURES)
        if self.use_edge_features is True and e is None:
            raise ValueError("edge_features=True but the backbone returns no edge features")
        if self.edge_in is not None and e is not None:
            if e.shape != (src.shape[0], self.width):
                raise ValueError(
                    f"edge features have shape {tuple(e.shape)}, the head expects "
                    f"[{src.shape[0]}, {self.width}]"
                )
            pre = pre + self.edge_in(e)
        w = self.weights(pre).view(-1, self.channels, len(self.orders))  # [E, C, terms]
        powers = _powers(unit, max(self.orders))
        blocks = []
        for t, k in enumerate(self.orders):
            wt = w[:, :, t].unsqueeze(-1)
            blocks.append(wt if k == 0 else wt * powers[k].unsqueeze(1))
        sizes = [b.shape[-1] for b in blocks]
        per_edge = torch.cat(blocks, dim=-1)  # [E, C, sum 3^k]
        summed = h.new_zeros((h.shape[0], *per_edge.shape[1:])).index_add_(0, dst, per_edge)
        summed = summed / self.avg_num_neighbors
        t_c = _assemble(self.formula, list(summed.split(sizes, dim=-1)))  # [n, C, 3, ...]
        flat = t_c.reshape(h.shape[0], self.channels, -1)
        if self.gate_mlp is not None:
            inv = torch.log1p((flat**2).sum(-1))  # [n, C], invariant
            g = self.gate_mlp(torch.cat([h, inv], dim=-1))
            out = (g.unsqueeze(-1) * flat).sum(1)
        else:
            out = flat.sum(1)
        return out.view(h.shape[0], *(3,) * self.rank)


class _EdgeHeadOptions(ModuleConfig):
    """Options both edge tensor heads take (see :class:`_EdgeTensorBase`)."""

    hidden: Widths = [64, 64]
    channels: PosInt = 8
    num_rbf: PosInt = 16
    cutoff: PosFloat = 8.0
    edge_features: Bool | None = None
    gate: Bool = True
    avg_num_neighbors: PosFloat = 12.0
    act: Activation = "silu"


class EdgeTensorHeadConfig(_EdgeHeadOptions):
    """Options of the ``edge-tensor`` head (see :class:`EdgeTensorHead`)."""

    formula: Literal["ij=ji", "ij", "ijk=ikj", "ijkl=jikl=klij"] = "ij=ji"  # _TERM_ORDERS
    reduce: Reduce = "mean"


@register_head("edge-tensor", config=EdgeTensorHeadConfig)
class EdgeTensorHead(_EdgeTensorBase):
    """Crystal tensor head for invariant backbones (see the module docstring).

    Args:
        in_spec: node-feature width of the backbone (``int``).
        formula: ``"ij=ji"`` (dielectric), ``"ijk=ikj"`` (piezoelectric),
            ``"ijkl=jikl=klij"`` (elastic) or ``"ij"``.
        hidden: widths of the edge-weight MLP (the first is the width of the input layer).
        channels: tensors per term and atom (mixed by the invariant gates).
        num_rbf: Gaussians of the bond length on ``[0, cutoff]``.
        cutoff: upper end of the bond-length basis (Angstrom).
        edge_features: use the backbone's bond features ``e_ij`` (``None``: when the backbone
            returns them; ``True``: required; ``False``: never). With ``None`` the input map
            of ``e_ij`` exists but gets no gradient for backbones without bond features.
        gate: mix the channels with invariant gates (else sum them).
        reduce: ``"mean"`` (intensive tensors) or ``"sum"`` over the atoms of a crystal.
        avg_num_neighbors: the edge sums are divided by this constant.
        act: activation of the MLPs.
    """

    per_atom = False

    def __init__(
        self,
        in_spec,
        formula: str = "ij=ji",
        hidden: list[int] | tuple[int, ...] = (64, 64),
        channels: int = 8,
        num_rbf: int = 16,
        cutoff: float = 8.0,
        edge_features: bool | None = None,
        gate: bool = True,
        reduce: str = "mean",
        avg_num_neighbors: float = 12.0,
        act: str = "silu",
    ):
        super().__init__()
        _check_formula(formula, _TERM_ORDERS)
        self.reduce = check_reduce(reduce)
        self._build(in_spec, formula, hidden, channels, num_rbf, cutoff, edge_features, gate,
                    avg_num_neighbors, act)
        self.config = {
            "formula": formula,
            "hidden": [int(x) for x in hidden],
            "channels": int(channels),
            "num_rbf": int(num_rbf),
            "cutoff": float(cutoff),
            "edge_features": edge_features,
            "gate": bool(gate),
            "reduce": reduce,
            "avg_num_neighbors": float(avg_num_neighbors),
            "act": act,
        }

    def cartesian(self, backbone_out: dict, data) -> Tensor:
        """Pooled Cartesian tensor of every crystal.

        Returns:
            ``[B, 3, ..., 3]`` (rank of the formula), in normalised units.
        """
        t = self.atom_tensors(backbone_out, data)
        batch, num_graphs = graph_index(data, t.shape[0], t.device)
        return pool(t, batch, num_graphs, self.reduce)

    def forward(self, backbone_out: dict, data) -> Tensor:
        """Normalised irreps of the crystal tensors.

        Args:
            backbone_out: backbone output (``node_feats [n, width]``, optional
                ``edge_feats [E, width]``).
            data: the (batched) crystal graph.

        Returns:
            ``[B, irreps.dim]`` in the basis of ``matxfer.tensors.to_irreps(t, formula)``.
        """
        return to_irreps(self.cartesian(backbone_out, data), self.formula)


class EdgeAtomTensorHeadConfig(_EdgeHeadOptions):
    """Options of the ``edge-atom-tensor`` head (see :class:`EdgeAtomTensorHead`)."""

    formula: AtomFormula = "ij"


@register_head("edge-atom-tensor", config=EdgeAtomTensorHeadConfig)
class EdgeAtomTensorHead(_EdgeTensorBase):
    """Per-atom rank-2 tensor head for invariant backbones (e.g. Born effective charges).

    Args:
        in_spec: node-feature width of the backbone (``int``).
        formula: ``"ij"`` (general, e.g. Born charges) or ``"ij=ji"``.
        hidden: widths of the edge-weight MLP.
        channels: tensors per term and atom (mixed by the invariant gates).
        num_rbf: Gaussians of the bond length on ``[0, cutoff]``.
        cutoff: upper end of the bond-length basis (Angstrom).
        edge_features: use the backbone's bond features (``None``: when present).
        gate: mix the channels with invariant gates (else sum them).
        avg_num_neighbors: the edge sums are divided by this constant.
        act: activation of the MLPs.
    """

    per_atom = True

    def __init__(
        self,
        in_spec,
        formula: str = "ij",
        hidden: list[int] | tuple[int, ...] = (64, 64),
        channels: int = 8,
        num_rbf: int = 16,
        cutoff: float = 8.0,
        edge_features: bool | None = None,
        gate: bool = True,
        avg_num_neighbors: float = 12.0,
        act: str = "silu",
    ):
        super().__init__()
        _check_formula(formula, ATOM_FORMULAS)
        self._build(in_spec, formula, hidden, channels, num_rbf, cutoff, edge_features, gate,
                    avg_num_neighbors, act)
        self.config = {
            "formula": formula,
            "hidden": [int(x) for x in hidden],
            "channels": int(channels),
            "num_rbf": int(num_rbf),
            "cutoff": float(cutoff),
            "edge_features": edge_features,
            "gate": bool(gate),
            "avg_num_neighbors": float(avg_num_neighbors),
            "act": act,
        }

    def cartesian(self, backbone_out: dict, data) -> Tensor:
        """Per-atom Cartesian tensors ``[n_atoms, 3, 3]`` in normalised units."""
        return self.atom_tensors(backbone_out, data)

    def forward(self, backbone_out: dict, data) -> Tensor:
        """Normalised irreps of the per-atom tensors.

        Returns:
            ``[n_atoms, irreps.dim]`` (9 for ``ij``, 6 for ``ij=ji``).
        """
        return to_irreps(self.cartesian(backbone_out, data), self.formula)
