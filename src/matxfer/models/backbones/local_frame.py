"""Local-frame invariant backbone (after Nishio, Shibata and Mizoguchi).

For every atom ``i`` the neighbours are ranked by distance and orthonormal frames are built
from pairs ``(u1, u2)`` of its nearest neighbours:

    e1 = r_iu1 / |r_iu1|
    e2 = (r_iu2 - (r_iu2 . e1) e1) / |...|         (Gram-Schmidt)
    e3 = e1 x e2

Every neighbour vector ``r_ij`` is then expressed in each frame, ``q_ij = (e1.r, e2.r, e3.r)``.
These coordinates do not change when the crystal is rotated or translated, yet they keep the
dihedral (4-body: ``i, u1, u2, j``) geometry that distances and angles alone lose.

Frames and their order
    Neighbour ranks ``1, 2, 3, ...`` follow the distance; distances closer than ``tie_tol``
    (chained over sorted neighbours) count as equal and are ordered by the neighbour's atomic
    number, then by the order of the edges in the graph (the graph builder's neighbour
    index and image). Candidate pairs are taken in the order ``(1,2), (1,3), (2,3), (1,4),
    (2,4), (3,4), (1,5), ...`` (pairs ``(a, b)``, ``a < b``, sorted by ``b`` then ``a``) among
    the first ``frame_neighbors`` neighbours. A pair is skipped when the two neighbours are
    (nearly) collinear with ``i``, i.e. ``|r̂_iu1 x r̂_iu2| < collinear_tol``; the first
    ``n_frames`` valid pairs give the frames.

Degenerate atoms
    An atom with fewer than ``n_frames`` valid pairs (fewer than two neighbours, all
    neighbours on a line, or too few neighbours) fills each missing frame slot with the
    *invariant fallback*: the embedding of the distance alone with a zero angular part
    (only the ``l = 0`` harmonic). Every atom therefore always has ``n_frames`` slots, and
    the choice is deterministic and rotation invariant. The counts of the last forward pass
    are in :attr:`LocalFrameBackbone.frame_stats`.

Spherical basis and embedding
    Each transformed vector ``q`` is expanded in ``rbf_n(|q|) * Y_lm(q̂)`` (zeroth-order
    spherical Bessel (sine) radial functions ``n = 1..num_radial`` times real spherical
    harmonics ``l <= l_max``, e3nn's component normalisation), embedded by a one-hidden-layer
    MLP and averaged over the ``n_frames`` slots (a sum divided by the constant
    ``n_frames``), so the result does not depend on the order of the frames. The edge
    embedding is multiplied by a smooth polynomial envelope so that it vanishes at the
    cutoff.

Parity
    ``e3 = e1 x e2`` makes each frame right-handed. Under an improper rotation (a mirror or
    the inversion) ``e1`` and ``e2`` rotate with the crystal but ``e3`` flips relative to it,
    so the mirror image of a structure has ``q -> (q1, q2, -q3)``. With
    ``parity_invariant=True`` (default) the frame MLP is applied to both handednesses and
    the two results are averaged, ``phi(q1, q2, q3) + phi(q1, q2, -q3)``, which makes every
    output invariant under the full orthogonal group O(3). With ``parity_invariant=False``
    outputs are invariant under proper rotations only and can tell a structure from its
    mirror image (chirality).

Message passing (DimeNet/GemNet-like, compact)
    ``h_i = Emb(Z_i)``; edge messages ``m_ij = MLP([h_i, h_j, s_ij])`` with the frame
    embedding ``s_ij``; each of ``n_layers`` layers updates the edges,
    ``m_ij += MLP_e([m_ij, h_i, h_j]) * (s_ij W)``, then the atoms,
    ``h_i += MLP_a([h_i, sum_j c(d_ij) m_ij / avg_neighbors])``. All nonlinearities are
    unrestricted (the inputs are invariant).

Limits
    The neighbour ranking is discrete: where the ranks of frame-defining neighbours swap, or
    a pair crosses ``collinear_tol``, the frames change and the output jumps (a set of
    measure zero in configuration space); conservative forces are exact gradients away from
    it. In a perfect high-symmetry crystal, equidistant neighbours of one species are ranked
    by the graph's edge order, so the chosen frames (not their invariance under rotations and
    translations) can depend on how atoms are numbered when the site symmetry does not make
    all candidate pairs equivalent (e.g. fcc, where pairs of nearest neighbours make 60, 90,
    120 and 180 degree angles).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch
from e3nn import o3
from torch import Tensor, nn

from matxfer import keys as K
from matxfer.config import Bool, PosFloat, PosInt
from matxfer.models.base import Backbone, EmbeddingOptions, feature_dim_of, make_embedding
from matxfer.models.registry import register_backbone
from matxfer.nn.geometry import edge_vectors
from matxfer.nn.mlp import MLP, Activation, activation
from matxfer.nn.radial import BesselBasis, PolynomialCutoff


def frame_pairs(frame_neighbors: int) -> list[tuple[int, int]]:
    """Candidate neighbour pairs (0-based ranks) in the order frames are taken.

    Args:
        frame_neighbors: number ``k`` of nearest neighbours the pairs are drawn from.

    Returns:
        ``k (k - 1) / 2`` pairs ``(a, b)``, ``a < b``, sorted by ``b`` then ``a``:
        ``(0,1), (0,2), (1,2), (0,3), (1,3), (2,3), (0,4), ...`` (ranks 1,2 / 1,3 / 2,3 / ...).
    """
    if frame_neighbors < 2:
        raise ValueError(f"frame_neighbors must be >= 2, got {frame_neighbors}")
    return [(a, b) for b in range(1, frame_neighbors) for a in range(b)]


def rank_neighbors(
    dist: Tensor, dst: Tensor, z_src: Tensor | None, n_atoms: int, tie_tol: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """Rank every edge among the edges of its centre atom.

    Edges are ordered by (centre, distance, neighbour's atomic number, position in the edge
    list); distances that differ by at most ``tie_tol`` from the previous one of the same
    centre (after sorting) are treated as equal, so floating-point noise (e.g. after a
    rotation) never decides the order of equidistant neighbours.

    Args:
        dist: ``[E]`` edge lengths.
        dst: ``[E]`` centre atom of every edge.
        z_src: ``[E]`` atomic number of every edge's neighbour (None: not used).
        n_atoms: number of atoms ``n``.
        tie_tol: distance tolerance for ties (Angstrom).

    Returns:
        ``(order [E], rank [E])``: edge ids sorted by centre then rank, and the 0-based rank
        of ``order[k]`` among its centre's edges.
    """
    E = dist.numel()
    dev = dist.device
    if E == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty
    d = dist.detach()
    o1 = torch.argsort(d, stable=True)
    o1 = o1[torch.argsort(dst[o1], stable=True)]  # by (centre, distance)
    ds, cs = d[o1], dst[o1]
    new = torch.ones(E, dtype=torch.bool, device=dev)
    new[1:] = (cs[1:] != cs[:-1]) | ((ds[1:] - ds[:-1]) > tie_tol)
    group = torch.empty(E, dtype=torch.long, device=dev)
    group[o1] = torch.cumsum(new.long(), 0)  # distance shell id, increasing with the centre
    order = torch.arange(E, device=dev)
    if z_src is not None:
        order = order[torch.argsort(z_src[order], stable=True)]
    order = order[torch.argsort(group[order], stable=True)]
    counts = torch.bincount(dst, minlength=n_atoms)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(E, device=dev) - start[dst[order]]
    return order, rank


class Frames(NamedTuple):
    """Local frames of every atom.

    Attributes:
        rot: ``[n, t, 3, 3]`` rows ``e1, e2, e3`` of each frame (identity where not valid).
        valid: ``[n, t]`` bool, False for fallback slots.
        skipped: number of collinear candidate pairs passed over before the frames were filled.
        fallback: number of fallback slots (no valid pair left).
        atoms_without_frame: atoms whose every slot is a fallback.
    """

    rot: Tensor
    valid: Tensor
    skipped: Tensor
    fallback: Tensor
    atoms_without_frame: Tensor


def build_frames(
    edge_vec: Tensor,
    dst: Tensor,
    n_atoms: int,
    n_frames: int,
    frame_neighbors: int = 8,
    collinear_tol: float = 0.1,
    z_src: Tensor | None = None,
    tie_tol: float = 1e-4,
) -> Frames:
    """Orthonormal frames from pairs of nearest neighbours (see the module docstring).

    Args:
        edge_vec: ``[E, 3]`` vectors ``r_ij`` from the centre ``i = dst`` to the neighbour.
        dst: ``[E]`` centre atom of every edge.
        n_atoms: number of atoms ``n``.
        n_frames: frames per atom ``t``.
        frame_neighbors: pairs are drawn from this many nearest neighbours.
        collinear_tol: a pair with ``|r̂_1 x r̂_2|`` below this is skipped.
        z_src: ``[E]`` atomic numbers of the neighbours (tie-break between equal distances).
        tie_tol: distance tolerance for ties (Angstrom).

    Returns:
        :class:`Frames`; ``rot`` is differentiable w.r.t. ``edge_vec``.
    """
    dev, dtype = edge_vec.device, edge_vec.dtype
    k = frame_neighbors
    pairs = torch.tensor(frame_pairs(k), dtype=torch.long, device=dev)  # [P, 2]
    P = pairs.shape[0]
    if n_frames > P:
        raise ValueError(f"n_frames={n_frames} exceeds the {P} pairs of {k} frame_neighbors")
    dist = edge_vec.norm(dim=-1)
    order, rank = rank_neighbors(dist, dst, z_src, n_atoms, tie_tol)
    nb = torch.full((n_atoms, k), -1, dtype=torch.long, device=dev)
    near = rank < k
    nb[dst[order[near]], rank[near]] = order[near]
    ia, ib = nb[:, pairs[:, 0]], nb[:, pairs[:, 1]]  # [n, P] edge ids (-1: missing)
    exists = (ia >= 0) & (ib >= 0)
    with torch.no_grad():
        u1 = edge_vec.detach()[ia.clamp_min(0)]
        u2 = edge_vec.detach()[ib.clamp_min(0)]
        cross = torch.linalg.cross(u1, u2, dim=-1).norm(dim=-1)
        sin = cross / (u1.norm(dim=-1) * u2.norm(dim=-1)).clamp_min(1e-30)
        ok = exists & (sin > collinear_tol)
        idx = torch.arange(P, device=dev).expand(n_atoms, P)
        key = torch.where(ok, idx, idx + P)
        chosen = torch.sort(key, dim=1).values[:, :n_frames]  # first t valid pairs
        valid = chosen < P
        chosen = chosen % P
        # collinear pairs met before the t-th valid one (or before the end of the list)
        valid_before = torch.cumsum(ok.long(), dim=1) - ok.long()
        skipped = (exists & ~ok & (valid_before < n_frames)).sum()
    # edge ids of the two neighbours of every chosen pair: [n, t]
    e_a = torch.gather(ia, 1, chosen)
    e_b = torch.gather(ib, 1, chosen)
    mask = valid.unsqueeze(-1)
    ex = torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=dev)
    ey = torch.tensor([0.0, 1.0, 0.0], dtype=dtype, device=dev)
    v1 = torch.where(mask, edge_vec[e_a.clamp_min(0)], ex)
    v2 = torch.where(mask, edge_vec[e_b.clamp_min(0)], ey)
    e1 = v1 / v1.norm(dim=-1, keepdim=True)
    w = v2 - (v2 * e1).sum(-1, keepdim=True) * e1
    e2 = w / w.norm(dim=-1, keepdim=True)
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    rot = torch.stack([e1, e2, e3], dim=-2)  # [n, t, 3, 3], rows = axes
    n_fallback = (~valid).sum()
    without = (~valid).all(dim=1).sum() if n_frames > 0 else valid.new_zeros(()).long()
    return Frames(rot, valid, skipped, n_fallback, without)


def _flip_signs(l_max: int) -> Tensor:
    """``D`` with ``Y(x, y, -z) = D * Y(x, y, z)`` for e3nn's real harmonics ``l <= l_max``."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(64, 3, generator=g, dtype=torch.float64)
    vf = v * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    ls = list(range(l_max + 1))
    y = o3.spherical_harmonics(ls, v, normalize=True, normalization="component")
    yf = o3.spherical_harmonics(ls, vf, normalize=True, normalization="component")
    d = (y * yf).sum(0) / (y * y).sum(0)
    if not torch.allclose(d.abs(), torch.ones_like(d), atol=1e-8):  # pragma: no cover
        raise RuntimeError("spherical harmonics do not map to +-themselves under z -> -z")
    return torch.sign(d)


class FrameEmbedding(nn.Module):
    """Spherical-basis embedding of the transformed edge vectors, averaged over frames.

    ``s_ij = c(d_ij) / t * sum_f phi(rbf(|q|) (x) Y(q̂_f))``, with ``phi`` a one-hidden-layer
    MLP whose first layer is applied in factorised form (radial part once per edge, angular
    part per frame).

    Args:
        width: output width ``F``.
        num_radial: radial functions.
        l_max: largest harmonic degree.
        cutoff: radius of the radial basis and envelope (Angstrom).
        act: activation name.
        parity_invariant: average over both handednesses of every frame.
        envelope_p: order of the polynomial envelope.
    """

    def __init__(
        self,
        width: int,
        num_radial: int,
        l_max: int,
        cutoff: float,
        act: str,
        parity_invariant: bool,
        envelope_p: int = 6,
    ):
        super().__init__()
        self.l_max = int(l_max)
        self.n_sh = (self.l_max + 1) ** 2
        self.rbf = BesselBasis(cutoff, num_radial)
        self.envelope = PolynomialCutoff(cutoff, envelope_p)
        self.radial = nn.Linear(num_radial, width * self.n_sh, bias=False)
        self.bias = nn.Parameter(torch.zeros(width))
        self.act = activation(act)
        self.out = nn.Linear(width, width)
        self.width = int(width)
        self.parity_invariant = bool(parity_invariant)
        self.register_buffer("flip", _flip_signs(self.l_max), persistent=False)
        nn.init.normal_(self.radial.weight, std=1.0 / math.sqrt(num_radial * self.n_sh))

    def forward(self, edge_vec: Tensor, dist: Tensor, dst: Tensor, frames: Frames) -> Tensor:
        """Embed every edge.

        Args:
            edge_vec: ``[E, 3]`` vectors ``r_ij``.
            dist: ``[E]`` their lengths.
            dst: ``[E]`` centre atoms.
            frames: frames of the centre atoms.

        Returns:
            ``[E, F]`` rotation-invariant edge features (zero at the cutoff).
        """
        E = edge_vec.shape[0]
        t = frames.valid.shape[1]
        if E == 0:
            return edge_vec.new_zeros((0, self.width))
        q = torch.einsum("etab,eb->eta", frames.rot[dst], edge_vec)  # [E, t, 3]
        y = o3.spherical_harmonics(
            list(range(self.l_max + 1)), q, normalize=True, normalization="component"
        )  # [E, t, n_sh]
        y0 = torch.zeros(self.n_sh, dtype=y.dtype, device=y.device)
        y0[0] = 1.0
        y = torch.where(frames.valid[dst].unsqueeze(-1), y, y0)  # fallback: l = 0 only
        radial = self.radial(self.rbf(dist)).view(E, self.width, self.n_sh)
        pre = torch.einsum("etc,efc->etf", y, radial) + self.bias
        hidden = self.act(pre).sum(dim=1)
        if self.parity_invariant:
            pre_m = torch.einsum("etc,efc->etf", y * self.flip.to(y.dtype), radial) + self.bias
            hidden = 0.5 * (hidden + self.act(pre_m).sum(dim=1))
        # the output layer is linear, so it is applied once to the frame average
        s = self.out(hidden / t)
        return s * self.envelope(dist).unsqueeze(-1)


class EdgeMLP(nn.Module):
    """``MLP([x_ij, h_i, h_j])`` with one hidden layer, computed without the concatenation.

    The first layer ``W [x, h_i, h_j] + b`` is split into ``W_x x_ij + (W_i h)_i + (W_j h)_j
    + b``: the atom projections are computed once per atom instead of once per edge.

    Args:
        in_dim: width of the edge input ``x_ij``.
        width: width of the atom features, the hidden layer and the output.
        act: activation name.
    """

    def __init__(self, in_dim: int, width: int, act: str):
        super().__init__()
        self.edge = nn.Linear(in_dim, width)
        self.centre = nn.Linear(width, width, bias=False)
        self.neighbor = nn.Linear(width, width, bias=False)
        self.act = activation(act)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, h: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """Apply the MLP to every edge.

        Args:
            x: ``[E, in_dim]`` edge inputs.
            h: ``[n, F]`` atom features.
            src: ``[E]`` neighbour ``j``.
            dst: ``[E]`` centre ``i``.

        Returns:
            ``[E, F]``.
        """
        pre = self.edge(x) + self.centre(h).index_select(0, dst)
        pre = pre + self.neighbor(h).index_select(0, src)
        return self.out(self.act(pre))


class LocalFrameLayer(nn.Module):
    """One edge update and one atom update.

    Args:
        width: feature width ``F``.
        act: activation name.
        avg_neighbors: the neighbour sum is divided by this constant.
    """

    def __init__(self, width: int, act: str, avg_neighbors: float):
        super().__init__()
        self.edge_mlp = EdgeMLP(width, width, act)
        self.geometry = nn.Linear(width, width, bias=False)
        self.atom_mlp = MLP(2 * width, [width], width, act)
        self.avg_neighbors = float(avg_neighbors)

    def forward(
        self, h: Tensor, m: Tensor, s: Tensor, env: Tensor, src: Tensor, dst: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Update edge messages, then atom features.

        Args:
            h: ``[n, F]`` atom features.
            m: ``[E, F]`` edge messages ``j -> i``.
            s: ``[E, F]`` frame embedding of every edge.
            env: ``[E]`` cutoff envelope.
            src: ``[E]`` neighbour ``j``.
            dst: ``[E]`` centre ``i``.

        Returns:
            ``(h [n, F], m [E, F])``.
        """
        m = m + self.edge_mlp(m, h, src, dst) * self.geometry(s)
        agg = h.new_zeros(h.shape).index_add_(0, dst, m * env.unsqueeze(-1))
        h = h + self.atom_mlp(torch.cat([h, agg / self.avg_neighbors], dim=-1))
        return h, m


class LocalFrameConfig(EmbeddingOptions):
    """Options of the ``local-frame`` backbone (see :class:`LocalFrameBackbone`)."""

    width: PosInt = 64
    n_layers: PosInt = 3
    n_frames: PosInt = 5
    frame_neighbors: PosInt = 8
    collinear_tol: PosFloat = 0.1
    tie_tol: PosFloat = 1e-4
    l_max: PosInt = 3
    num_radial: PosInt = 8
    cutoff: PosFloat = 6.0
    envelope_p: PosInt = 6
    avg_neighbors: PosFloat = 64.0
    parity_invariant: Bool = True
    act: Activation = "silu"


@register_backbone("local-frame", config=LocalFrameConfig)
class LocalFrameBackbone(Backbone):
    """Local-frame invariant network (see the module docstring for frames and parity).

    Args:
        width: feature width ``F`` of atoms and edges.
        n_layers: message-passing layers.
        n_frames: frames per atom ``t``.
        frame_neighbors: frames are built from pairs of this many nearest neighbours
            (``frame_neighbors (frame_neighbors - 1) / 2 >= n_frames``).
        collinear_tol: pairs with ``|r̂_1 x r̂_2|`` below this are skipped.
        tie_tol: distances within this (Angstrom) count as equal when ranking neighbours.
        l_max: largest spherical-harmonic degree of the frame basis.
        num_radial: radial basis functions.
        cutoff: radius of the radial basis and envelope (Angstrom); edges beyond it add
            nothing, so it should not exceed the graph cutoff.
        envelope_p: order of the polynomial cutoff envelope.
        avg_neighbors: normalisation constant of the neighbour sums.
        parity_invariant: symmetrise over both handednesses (O(3) invariance).
        act: activation name.
        num_species: size of the embedding table by atomic number.
        atom_feature_dim: embed tabulated atom features ``x [n, F_in]`` instead.
        atom_features: ``"none"`` or a tabulated feature name (see CGCNN).
    """

    graph_defaults: ClassVar[dict[str, Any]] = {"cutoff": 6.0, "max_neighbors": None}
    equivariant = False

    def __init__(
        self,
        width: int = 64,
        n_layers: int = 3,
        n_frames: int = 5,
        frame_neighbors: int = 8,
        collinear_tol: float = 0.1,
        tie_tol: float = 1e-4,
        l_max: int = 3,
        num_radial: int = 8,
        cutoff: float = 6.0,
        envelope_p: int = 6,
        avg_neighbors: float = 64.0,
        parity_invariant: bool = True,
        act: str = "silu",
        num_species: int = 119,
        atom_feature_dim: int | None = None,
        atom_features: str = "none",
    ):
        super().__init__()
        checks = {
            "width": (width, 1),
            "n_layers": (n_layers, 1),
            "n_frames": (n_frames, 1),
            "frame_neighbors": (frame_neighbors, 2),
            "num_radial": (num_radial, 1),
            "envelope_p": (envelope_p, 1),
        }
        for name, (value, lo) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
        if not isinstance(l_max, int) or not 0 <= l_max <= 6:
            raise ValueError(f"l_max must be an integer in 0..6, got {l_max!r}")
        n_pairs = frame_neighbors * (frame_neighbors - 1) // 2
        if n_frames > n_pairs:
            raise ValueError(
                f"n_frames={n_frames} needs more pairs than frame_neighbors={frame_neighbors} "
                f"gives ({n_pairs}); raise frame_neighbors"
            )
        if not 0.0 <= collinear_tol < 1.0:
            raise ValueError(f"collinear_tol must be in [0, 1), got {collinear_tol}")
        if not tie_tol >= 0.0:
            raise ValueError(f"tie_tol must be >= 0, got {tie_tol}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        if not avg_neighbors > 0:
            raise ValueError(f"avg_neighbors must be > 0, got {avg_neighbors}")
        atom_feature_dim = feature_dim_of(atom_features, atom_feature_dim)
        self.config = {
            "width": int(width),
            "n_layers": int(n_layers),
            "n_frames": int(n_frames),
            "frame_neighbors": int(frame_neighbors),
            "collinear_tol": float(collinear_tol),
            "tie_tol": float(tie_tol),
            "l_max": int(l_max),
            "num_radial": int(num_radial),
            "cutoff": float(cutoff),
            "envelope_p": int(envelope_p),
            "avg_neighbors": float(avg_neighbors),
            "parity_invariant": bool(parity_invariant),
            "act": str(act),
            "num_species": int(num_species),
            "atom_feature_dim": atom_feature_dim,
            "atom_features": str(atom_features),
        }
        self.num_species = int(num_species)
        #: a chiral model (parity_invariant=False) is invariant under proper rotations only
        self.respects_inversion = bool(parity_invariant)
        self.embedding = make_embedding(num_species, atom_feature_dim, width)
        self.edge_embedding = nn.ModuleDict(
            {
                "frames": FrameEmbedding(
                    width, num_radial, l_max, cutoff, act, parity_invariant, envelope_p
                ),
                "message": EdgeMLP(width, width, act),
            }
        )
        self.layers = nn.ModuleList(
            LocalFrameLayer(width, act, avg_neighbors) for _ in range(n_layers)
        )
        self.out_spec = int(width)
        #: frame counts of the last forward pass (plain ints)
        self.frame_stats: dict[str, int] = {}

    def layer_groups(self) -> list[str]:
        """``["embedding", "edge_embedding", "layers.0", ..., "layers.{n-1}"]``."""
        return ["embedding", "edge_embedding"] + [f"layers.{k}" for k in range(len(self.layers))]

    def frames(self, data, edge_vec: Tensor | None = None) -> Frames:
        """Frames of every atom of a (batched) graph (see :func:`build_frames`).

        Args:
            data: the graph.
            edge_vec: ``[E, 3]`` edge vectors if already computed.

        Returns:
            :class:`Frames` with ``rot [n, t, 3, 3]`` and ``valid [n, t]``.
        """
        src, dst = data[K.EDGE_INDEX]
        vec = edge_vectors(data) if edge_vec is None else edge_vec
        z_src = data[K.ATOMIC_NUMBERS][src] if K.ATOMIC_NUMBERS in data else None
        cfg = self.config
        return build_frames(
            vec,
            dst,
            int(data[K.POSITIONS].shape[0]),
            cfg["n_frames"],
            cfg["frame_neighbors"],
            cfg["collinear_tol"],
            z_src,
            cfg["tie_tol"],
        )

    def forward(self, data) -> dict[str, Tensor]:
        """Atom features of a (batched) crystal graph.

        Args:
            data: graph with ``z [n]`` (or ``x [n, F_in]``), ``pos [n, 3]``, ``cell [B, 3, 3]``,
                ``edge_index [2, E]`` and ``cell_shift [E, 3]``.

        Returns:
            ``{node_feats: [n, width]}`` (invariant under rotations and translations, and
            under improper rotations when ``parity_invariant``).
        """
        h = self.embed(data)
        src, dst = data[K.EDGE_INDEX]
        vec = edge_vectors(data)
        dist = vec.norm(dim=-1)
        frames = self.frames(data, vec)
        self.frame_stats = {
            "atoms": int(h.shape[0]),
            "frames": int(frames.valid.sum()),
            "fallback_frames": int(frames.fallback),
            "skipped_collinear_pairs": int(frames.skipped),
            "atoms_without_frame": int(frames.atoms_without_frame),
        }
        fe = self.edge_embedding["frames"]
        s = fe(vec, dist, dst, frames)
        env = fe.envelope(dist)
        m = self.edge_embedding["message"](s, h, src, dst)
        for layer in self.layers:
            h, m = layer(h, m, s, env, src, dst)
        return {K.NODE_FEATURES: h}
