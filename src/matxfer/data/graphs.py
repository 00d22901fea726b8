"""Periodic crystal graphs.

Neighbour lists come from pymatgen's Cython neighbour kernel (``find_points_in_spheres``, the
routine behind ``Structure.get_neighbor_list``). Every edge keeps the integer image shift of
its neighbour so the edge vector is exact; several edges between the same pair of atoms
(different images) are normal. Nothing is padded or silently cut: ``max_neighbors`` keeps
the nearest (distances compared to 1e-8 A, ties broken by neighbour index, then image), and
an atom with no neighbour inside the cutoff gets its ``fallback_k`` nearest neighbours
(at most ``max_neighbors``) found at a wider radius; such atoms are counted on the graph
(``n_fallback``) and logged. With ``max_neighbors`` set, a smaller sphere sized from the
number density is searched first and only atoms short of neighbours are searched at the
full cutoff; the result is the same as cutting the full list.

Line graph (ALIGNN): the nodes of the line graph are the edges of the crystal graph. For
every atom ``i``, every ordered pair of distinct edges that both end at ``i``
(``e1 = a -> i``, ``e2 = b -> i``, ``e1 != e2``) is a line-graph edge ``e1 -> e2``, stored as
``line_index[:, t] = (e1, e2)`` (:func:`line_graph_index`). Both edge vectors ``r_ia`` and
``r_ib`` start at the shared centre ``i``, so :func:`bond_cosines` is the cosine of the bond
angle ``a-i-b``. ``a`` and ``b`` may be the same atom seen through different periodic images
(different edges); the same edge is never paired with itself. Each atom with ``d`` incoming
edges contributes ``d (d - 1)`` pairs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from pymatgen.core import Structure
from torch_geometric.data import Data

from matxfer import keys as K

log = logging.getLogger(__name__)

#: largest radius the fallback search widens to before giving up (Angstrom)
MAX_FALLBACK_RADIUS = 30.0


@dataclass(frozen=True)
class GraphSettings:
    """How a structure becomes a graph. Part of every checkpoint and of every cache key.

    Attributes:
        cutoff: neighbour radius in Angstrom.
        max_neighbors: keep at most this many nearest neighbours per atom (None: all).
        fallback_k: neighbours given to an atom that has none inside ``cutoff``.
        line_graph: also build the bond-pair (line) graph (ALIGNN).
        keep_shell: with ``max_neighbors``, keep every neighbour as close as the last one kept
            (within :data:`SHELL_TOL`), so a cut never splits a shell of equidistant
            neighbours: splitting one by atom index breaks the crystal's point group, and
            an equivariant model's output with it. Settings stored before this option
            existed read as ``False`` (the cut as it was).
        cgcnn_compat: build the neighbour list exactly as the original CGCNN code does
            (:func:`cgcnn_neighbor_list`: ``get_all_neighbors``, stable sort by distance,
            the first ``max_neighbors``, padding with atom 0), so that checkpoints imported
            from the released CGCNN models reproduce the original predictions through every
            command (``predict``, ``evaluate``, ``finetune``, studies).
        atom_features: ``"none"`` (atomic numbers only), ``"cgcnn"`` (92-dim one-hot
            element properties) or ``"table:<sha256>"`` for a user ``atom_init.json`` table.
    """

    cutoff: float = 5.0
    max_neighbors: int | None = None
    fallback_k: int = 12
    line_graph: bool = False
    atom_features: str = "none"
    keep_shell: bool = True
    cgcnn_compat: bool = False

    def __post_init__(self) -> None:
        if not (self.cutoff > 0):
            raise ValueError(f"graph cutoff must be > 0 Angstrom, got {self.cutoff}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1 or None, got {self.max_neighbors}")
        if self.fallback_k < 1:
            raise ValueError(f"fallback_k must be >= 1, got {self.fallback_k}")
        if self.cgcnn_compat and (self.max_neighbors is None or self.line_graph):
            raise ValueError(
                "cgcnn_compat graphs need max_neighbors (12 in the original CGCNN) and no line "
                f"graph, got max_neighbors={self.max_neighbors}, line_graph={self.line_graph}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GraphSettings:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown graph settings: {sorted(unknown)}")
        return cls(**{"keep_shell": False, **d})  # stored before keep_shell: the old cut

    def key(self) -> str:
        """Short stable hash of the settings (cache key component)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class NeighborList(NamedTuple):
    """Edges of one structure; edge e goes from ``src[e]`` (neighbour j) to ``dst[e]`` (centre i)."""

    src: np.ndarray  # [n_edges] int
    dst: np.ndarray  # [n_edges] int
    shift: np.ndarray  # [n_edges, 3] int, image of j
    dist: np.ndarray  # [n_edges] float
    n_fallback: int  # atoms that needed the k-nearest fallback


try:  # the Cython kernel behind Structure.get_neighbor_list
    from pymatgen.optimization.neighbors import find_points_in_spheres as _find_points_in_spheres
except ImportError:  # pragma: no cover - pymatgen without its compiled extension
    _find_points_in_spheres = None

#: distances below this are an atom paired with itself (pymatgen's default tolerance)
_SELF_TOL = 1e-8

#: neighbours this close (Angstrom) to the last one kept by ``max_neighbors`` count as the same
#: shell (``GraphSettings.keep_shell``); CIF coordinates rounded to 4-5 decimals leave
#: symmetry-equivalent distances differing by ~1e-4 A
SHELL_TOL = 1e-3


class _Searcher:
    """Periodic sphere searches on one structure, with pymatgen's Cython neighbour kernel.

    The kernel is the one ``Structure.get_neighbor_list`` wraps; calling it directly reuses
    the coordinate arrays between searches and lets a search cover a subset of centre atoms
    while keeping the structure's atom numbering (``get_neighbor_list(sites=...)`` numbers
    the centres 0..len(sites)-1 and then keeps each centre's zero-distance pair with itself).
    """

    def __init__(self, structure: Structure):
        self.structure = structure
        self.n = len(structure)
        self.cart = np.ascontiguousarray(structure.cart_coords, dtype=float)
        self.lattice = np.ascontiguousarray(structure.lattice.matrix, dtype=float)
        self.pbc = np.ascontiguousarray(structure.lattice.pbc, dtype=np.int64)

    @property
    def volume(self) -> float:
        (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = self.lattice.tolist()
        return abs(a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0))

    def search(self, radius: float, atoms: np.ndarray | None = None):
        """(centre, neighbour, image, distance) of every pair within ``radius``.

        Args:
            radius: sphere radius in Angstrom.
            atoms: centre atoms to search around (None: all); numbering is the structure's.
        """
        if _find_points_in_spheres is not None:
            centres = self.cart if atoms is None else np.ascontiguousarray(self.cart[atoms])
            c, p, im, d = _find_points_in_spheres(
                self.cart,
                centres,
                r=float(radius),
                pbc=self.pbc,
                lattice=self.lattice,
                tol=_SELF_TOL,
            )
        else:  # pragma: no cover
            sites = None if atoms is None else [self.structure[int(i)] for i in atoms]
            c, p, im, d = self.structure.get_neighbor_list(radius, sites=sites, exclude_self=False)
        c = np.asarray(c, dtype=np.int64)
        if atoms is not None:
            c = np.asarray(atoms, dtype=np.int64)[c]
        p = np.asarray(p, dtype=np.int64)
        im = np.rint(np.asarray(im, dtype=np.float64)).astype(np.int64).reshape(-1, 3)
        d = np.asarray(d, dtype=np.float64)
        not_self = (c != p) | (d > _SELF_TOL)
        if not not_self.all():
            c, p, im, d = c[not_self], p[not_self], im[not_self], d[not_self]
        return c, p, im, d


def _edge_order(dst, src, shift, dist, n_atoms: int | None = None) -> np.ndarray:
    """Permutation sorting edges by (centre, distance, neighbour, image).

    Distances are compared after rounding to 1e-8 A so floating-point noise does not decide
    ties; equidistant neighbours are ordered by neighbour index, then image (lexicographic).
    The four keys are packed into one int64 when they fit (one argsort instead of a
    multi-key lexsort; every edge has a distinct (centre, neighbour, image), so the key
    is unique and the order fully determined).
    """
    q = np.rint(dist * 1e8).astype(np.int64)
    m = int(np.abs(shift).max())
    w = 2 * m + 1
    k2 = (shift + m) @ np.array([w * w, w, 1], dtype=np.int64)
    n_src = int(src.max()) + 1 if n_atoms is None else n_atoms
    n_dst = int(dst.max()) + 1 if n_atoms is None else n_atoms
    k2 += src * (w**3)
    b2 = (n_src * w**3 - 1).bit_length()
    bq = int(q.max()).bit_length()
    bd = (n_dst - 1).bit_length()
    if bd + bq + b2 <= 62:
        return np.argsort((dst << (bq + b2)) | (q << b2) | k2)
    return np.lexsort((k2, q, dst))


def _sort_and_cap(
    dst, src, shift, dist, cap: int | None, n_atoms: int | None = None, keep_shell: bool = False
):
    """Sort edges by (centre, distance, neighbour, image) and keep ``cap`` per centre (and,
    with ``keep_shell``, every further neighbour within :data:`SHELL_TOL` of the last kept)."""
    if len(dst) == 0:
        return dst, src, shift, dist
    order = _edge_order(dst, src, shift, dist, n_atoms)
    if cap is not None:
        sdst = dst[order]
        first = np.searchsorted(sdst, sdst, side="left")
        rank = np.arange(len(sdst)) - first
        keep = rank < cap
        if keep_shell:
            sdist = dist[order]
            # distance of each centre's cap-th neighbour (its last kept one)
            last = np.minimum(first + cap - 1, np.searchsorted(sdst, sdst, side="right") - 1)
            keep |= sdist <= sdist[last] + SHELL_TOL
        order = order[keep]
    return dst[order], src[order], shift[order], dist[order]


#: a capped search first looks within the radius expected to hold this many times
#: ``max_neighbors`` neighbours (from the number density), then widens to the cutoff only
#: for the atoms that came up short
_PRESEARCH_FACTOR = 2.0


def _capped_search(searcher: _Searcher, cutoff: float, cap: int, keep_shell: bool = False):
    """All edges needed for the nearest ``cap`` neighbours within ``cutoff`` of every atom.

    Same result as searching the whole cutoff and keeping the ``cap`` nearest, but most atoms
    are served by a smaller sphere: an atom with at least ``cap`` neighbours strictly inside
    the smaller radius has its ``cap`` nearest (ties included) inside it. The other atoms
    are searched again at the full cutoff.
    """
    n = searcher.n
    r0 = (_PRESEARCH_FACTOR * cap * 3.0 * searcher.volume / (4.0 * np.pi * n)) ** (1.0 / 3.0)
    if r0 >= 0.8 * cutoff:
        return searcher.search(cutoff)
    dst, src, shift, dist = searcher.search(r0)
    # with keep_shell the shell at the cap may reach SHELL_TOL beyond the cap-th neighbour
    margin = SHELL_TOL + 1e-6 if keep_shell else 1e-6
    inside = np.bincount(dst[dist < r0 - margin], minlength=n)
    short = np.flatnonzero(inside < cap)
    if len(short) == 0:
        return dst, src, shift, dist
    keep = ~np.isin(dst, short)
    c, p, im, d = searcher.search(cutoff, short)
    return (
        np.concatenate([dst[keep], c]),
        np.concatenate([src[keep], p]),
        np.concatenate([shift[keep], im]),
        np.concatenate([dist[keep], d]),
    )


def neighbor_list(
    structure: Structure,
    cutoff: float,
    max_neighbors: int | None = None,
    fallback_k: int = 12,
    keep_shell: bool = False,
) -> NeighborList:
    """Periodic neighbour list of ``structure``.

    Args:
        structure: an ordered pymatgen structure.
        cutoff: radius in Angstrom.
        max_neighbors: keep the nearest ``max_neighbors`` per atom (None: keep all).
        fallback_k: an atom with no neighbour inside ``cutoff`` gets its ``fallback_k``
            nearest neighbours (the radius is widened until enough are found; never more
            than ``max_neighbors``).
        keep_shell: keep the whole shell at the ``max_neighbors`` cut (see
            :class:`GraphSettings`).

    Returns:
        A :class:`NeighborList` sorted by centre atom, then distance.
    """
    return _neighbor_list(_Searcher(structure), cutoff, max_neighbors, fallback_k, keep_shell)


def _neighbor_list(
    searcher: _Searcher, cutoff, max_neighbors, fallback_k, keep_shell: bool = False
) -> NeighborList:
    n = searcher.n
    if max_neighbors is None:
        dst, src, shift, dist = searcher.search(cutoff)
    else:
        dst, src, shift, dist = _capped_search(searcher, cutoff, max_neighbors, keep_shell)
    dst, src, shift, dist = _sort_and_cap(dst, src, shift, dist, max_neighbors, n, keep_shell)
    counts = np.bincount(dst, minlength=n)
    lonely = np.flatnonzero(counts == 0)
    n_fallback = len(lonely)
    if max_neighbors is not None:
        # the fallback never gives an atom more neighbours than max_neighbors allows
        fallback_k = min(fallback_k, max_neighbors)
    if n_fallback:
        radius = cutoff
        while True:
            radius = min(radius * 1.5, MAX_FALLBACK_RADIUS)
            c, p, im, d = searcher.search(radius, lonely)
            found = np.bincount(c, minlength=n)[lonely]
            if np.all(found >= fallback_k) or radius >= MAX_FALLBACK_RADIUS:
                break
        if np.any(found == 0):
            raise ValueError(
                f"atoms {lonely[found == 0].tolist()} have no neighbour within "
                f"{MAX_FALLBACK_RADIUS} A"
            )
        c, p, im, d = _sort_and_cap(c, p, im, d, fallback_k, keep_shell=keep_shell)
        dst = np.concatenate([dst, c])
        src = np.concatenate([src, p])
        shift = np.concatenate([shift, im])
        dist = np.concatenate([dist, d])
        dst, src, shift, dist = _sort_and_cap(dst, src, shift, dist, None)
        log.info(
            "%d atom(s) had no neighbour within %.2f A; gave them their %d nearest (k-NN fallback)",
            n_fallback,
            cutoff,
            fallback_k,
        )
    return NeighborList(src, dst, shift, dist, n_fallback)


def _padding_image(structure: Structure, centre: int, radius: float) -> tuple[np.ndarray, float]:
    """An image of atom 0 at least ``radius`` from ``centre`` (along the first lattice vector)."""
    lat = structure.lattice.matrix
    d0 = structure.cart_coords[0] - structure.cart_coords[centre]
    a = float(np.linalg.norm(lat[0]))
    k = max(1, math.ceil((radius + float(np.linalg.norm(d0))) / a))
    shift = np.array([k, 0, 0], dtype=np.int64)
    dist = float(np.linalg.norm(d0 + shift @ lat))
    return shift, dist


def cgcnn_neighbor_list(
    structure: Structure, radius: float = 8.0, max_num_nbr: int = 12
) -> tuple[NeighborList, int]:
    """Neighbour list exactly as the original CGCNN ``predict.py`` builds it.

    For every atom: ``structure.get_all_neighbors(radius)``, stable-sorted by distance, the
    first ``max_num_nbr`` kept. An atom with fewer neighbours is padded up to
    ``max_num_nbr`` with atom 0, which the original places at distance ``radius + 1``; here
    each padded edge goes to an image of atom 0 at least ``radius + 1`` away, whose
    Gaussian features (centres up to ``radius``, width 0.2 A) are numerically the
    original's (both below 1.4e-11).

    Args:
        structure: pymatgen structure, used as read (no re-ordering or wrapping).
        radius: neighbour radius (Angstrom).
        max_num_nbr: neighbours per atom.

    Returns:
        ``(NeighborList, n_padded)``: edges sorted by centre atom in the original order
        (``n_fallback`` is 0), and the number of padding edges.
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0 Angstrom, got {radius}")
    if max_num_nbr < 1:
        raise ValueError(f"max_num_nbr must be >= 1, got {max_num_nbr}")
    all_nbrs = structure.get_all_neighbors(radius, include_index=True)
    src, dst, shift, dist = [], [], [], []
    n_padded = 0
    for i, nbrs in enumerate(all_nbrs):
        nbrs = sorted(nbrs, key=lambda x: x[1])[:max_num_nbr]
        for nb in nbrs:
            src.append(int(nb[2]))
            dst.append(i)
            shift.append(np.rint(np.asarray(nb.image, dtype=np.float64)).astype(np.int64))
            dist.append(float(nb[1]))
        for _ in range(max_num_nbr - len(nbrs)):
            img, d = _padding_image(structure, i, radius + 1.0)
            src.append(0)
            dst.append(i)
            shift.append(img)
            dist.append(d)
            n_padded += 1
    nl = NeighborList(
        np.asarray(src, dtype=np.int64),
        np.asarray(dst, dtype=np.int64),
        np.asarray(shift, dtype=np.int64).reshape(-1, 3),
        np.asarray(dist, dtype=np.float64),
        0,
    )
    return nl, n_padded


def isolated_atoms(structure: Structure, cutoff: float) -> list[int]:
    """Indices of the atoms with no neighbour (periodic images included) within ``cutoff``.

    Graphs give such atoms their nearest neighbours beyond the cutoff (k-NN fallback, or
    the padding of CGCNN compatibility graphs), which a model trained on ordinary crystals
    has never seen: their predictions deserve a warning.
    """
    dst = _Searcher(structure).search(cutoff)[0]
    return np.flatnonzero(np.bincount(dst, minlength=len(structure)) == 0).tolist()


class CrystalGraph(Data):
    """PyG ``Data`` for crystals; offsets line-graph indices by the number of edges when batched."""

    def __inc__(self, key, value, *args, **kwargs):
        if key == K.LINE_INDEX:
            return self.edge_index.size(1)
        return super().__inc__(key, value, *args, **kwargs)


def line_graph_index(edge_index, n_edges: int | None = None) -> torch.Tensor:
    """ALIGNN line-graph pairs of a crystal graph (vectorised, no loop over edges).

    Args:
        edge_index: ``[2, E]`` (source j, target i) tensor or array.
        n_edges: number of edges ``E`` (checked against ``edge_index`` when given).

    Returns:
        ``[2, T]`` long tensor of edge pairs ``(e1, e2)``: every ordered pair of distinct
        edges with the same target atom, ``T = sum_i d_i (d_i - 1)`` over the in-degrees
        ``d_i``. Pairs are grouped by ``e1`` in order of (target atom, edge index).
    """
    ei = (
        edge_index.detach().cpu().numpy() if torch.is_tensor(edge_index) else np.asarray(edge_index)
    )
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {tuple(ei.shape)}")
    E = ei.shape[1]
    if n_edges is not None and int(n_edges) != E:
        raise ValueError(f"n_edges={n_edges} but edge_index has {E} edges")
    if E == 0:
        return torch.zeros((2, 0), dtype=torch.long)
    dst = ei[1].astype(np.int64)
    order = np.argsort(dst, kind="stable")  # edges grouped by target atom
    sdst = dst[order]
    deg = np.bincount(sdst)
    start = np.cumsum(deg) - deg  # first sorted position of each atom's group
    d_p = deg[sdst]  # group size seen from each sorted position
    # sorted position p is paired with every position of its group (itself removed below)
    first = np.repeat(np.arange(E), d_p)
    block = np.cumsum(d_p) - d_p
    k = np.arange(first.size) - np.repeat(block, d_p)
    second = np.repeat(start[sdst], d_p) + k
    keep = second != first
    pairs = np.stack([order[first[keep]], order[second[keep]]])
    return torch.from_numpy(pairs).long()


def bond_cosines(
    edge_vec: torch.Tensor, line_index: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Cosine of the bond angle of each line-graph pair.

    Args:
        edge_vec: ``[E, 3]`` edge vectors ``r_ij`` (from the centre i to the neighbour j),
            e.g. from :func:`matxfer.nn.geometry.edge_vectors`.
        line_index: ``[2, T]`` pairs from :func:`line_graph_index`.

    Returns:
        ``[T]`` cosines in ``[-1, 1]`` (differentiable w.r.t. ``edge_vec``).
    """
    v1 = edge_vec[line_index[0]]
    v2 = edge_vec[line_index[1]]
    denom = (v1.norm(dim=-1) * v2.norm(dim=-1)).clamp_min(eps)
    return ((v1 * v2).sum(-1) / denom).clamp(-1.0, 1.0)


def resolve_featurizer(settings: GraphSettings, featurizer=None):
    """The featurizer ``settings.atom_features`` calls for (None for ``"none"``).

    Checks that a given ``featurizer`` matches the settings, builds the CGCNN one for
    ``"cgcnn"`` and raises ValueError when a table spec comes without its featurizer.
    """
    spec = settings.atom_features
    if featurizer is not None:
        fspec = getattr(featurizer, "spec", None)
        ok = fspec == spec or (spec == "table" and str(fspec).startswith("table:"))
        if not ok:
            raise ValueError(
                f"atom featurizer {fspec!r} does not match graph settings atom_features={spec!r}"
            )
        return featurizer
    if spec == "none":
        return None
    if spec == "cgcnn":
        return _default_cgcnn()
    raise ValueError(
        f"graph settings ask for atom_features={spec!r}: pass the featurizer built from that "
        "table (AtomFeaturizer.from_spec(spec, table_path=...))"
    )


@lru_cache(maxsize=1)
def _default_cgcnn():
    from matxfer.data.atom_features import AtomFeaturizer

    return AtomFeaturizer.cgcnn()


_NP_FLOAT = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _atomic_numbers(structure: Structure) -> np.ndarray:
    """Atomic numbers of an ordered structure (``site.specie``: cheaper than
    ``Structure.atomic_numbers``, which goes through each site's composition)."""
    try:
        return np.fromiter((site.specie.Z for site in structure), dtype=np.int64, count=len(structure))
    except AttributeError:  # a disordered site has no single specie
        return np.asarray(structure.atomic_numbers, dtype=np.int64)


def check_min_distance(structure: Structure, nl: NeighborList, material_id: str = "") -> None:
    """Raise :class:`~matxfer.data.records.RecordError` when an edge of ``nl`` is shorter than
    :data:`~matxfer.data.records.MIN_INTERATOMIC_DISTANCE` (overlapping atoms would give NaN)."""
    from matxfer.data.records import MIN_INTERATOMIC_DISTANCE, RecordError, overlap_reason

    if len(nl.dist) == 0:
        return
    k = int(np.argmin(nl.dist))
    if nl.dist[k] < MIN_INTERATOMIC_DISTANCE:
        i, j = sorted((int(nl.src[k]), int(nl.dst[k])))
        entry = material_id or structure.composition.reduced_formula
        raise RecordError(entry, overlap_reason(structure, (i, j, float(nl.dist[k]))))


def structure_to_graph(
    structure: Structure,
    settings: GraphSettings,
    material_id: str = "",
    atom_features: np.ndarray | None = None,
    featurizer=None,
) -> CrystalGraph:
    """Build the graph of one structure.

    Args:
        structure: ordered pymatgen structure.
        settings: graph settings.
        material_id: stored on the graph for bookkeeping.
        atom_features: optional ``[n_atoms, n_feat]`` precomputed atom features (``x``).
        featurizer: an :class:`~matxfer.data.atom_features.AtomFeaturizer` whose spec matches
            ``settings.atom_features``; needed for ``"table:<sha256>"``, built automatically
            for ``"cgcnn"``.

    Returns:
        A :class:`CrystalGraph` with ``z [n]``, ``pos [n,3]``, ``cell [1,3,3]``,
        ``edge_index [2,E]``, ``cell_shift [E,3]``, ``n_fallback [1]`` (+ ``x [n,F]`` when
        atom features are configured, ``line_index [2,T]`` when ``settings.line_graph``).

    Raises:
        ValueError: featurizer missing or mismatched, or an element missing from its table.
        RecordError: overlapping atoms (closer than
            :data:`~matxfer.data.records.MIN_INTERATOMIC_DISTANCE`, periodic images included).
    """
    z = _atomic_numbers(structure)
    x = None
    if atom_features is not None:
        x = np.asarray(atom_features)
        if x.ndim != 2 or x.shape[0] != len(z):
            raise ValueError(f"atom_features has shape {x.shape}, expected [{len(z)}, F]")
    else:
        feat = resolve_featurizer(settings, featurizer)
        if feat is not None:
            x = feat(z)
    searcher = _Searcher(structure)
    n_padded = None
    if settings.cgcnn_compat:
        nl, n_padded = cgcnn_neighbor_list(structure, settings.cutoff, settings.max_neighbors)
        if n_padded:
            log.info(
                "%s: %d padding neighbour(s) (atoms with fewer than %d neighbours within %.1f A, "
                "padded with atom 0 as the original CGCNN does)",
                material_id or structure.composition.reduced_formula,
                n_padded, settings.max_neighbors, settings.cutoff,
            )
    else:
        nl = _neighbor_list(
            searcher, settings.cutoff, settings.max_neighbors, settings.fallback_k,
            settings.keep_shell,
        )
    check_min_distance(structure, nl, material_id)
    dtype = torch.get_default_dtype()
    # convert in numpy, then wrap: much cheaper than torch-side casts for tiny arrays
    np_dtype = _NP_FLOAT.get(dtype)
    if np_dtype is None:  # pragma: no cover - unusual default dtype
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    edge_index = torch.from_numpy(np.array([nl.src, nl.dst], dtype=np.int64))
    fields = {
        K.ATOMIC_NUMBERS: torch.from_numpy(z),
        K.POSITIONS: torch.from_numpy(searcher.cart.astype(np_dtype)),
        K.CELL: torch.from_numpy(searcher.lattice.astype(np_dtype)[None]),
        K.EDGE_INDEX: edge_index,
        K.CELL_SHIFT: torch.from_numpy(nl.shift.astype(np_dtype)),
        "n_fallback": torch.from_numpy(np.array([nl.n_fallback], dtype=np.int64)),
        "n_padded": None if n_padded is None else torch.tensor([n_padded], dtype=torch.int64),
        K.NUM_NODES: len(structure),
        K.MATERIAL_ID: material_id,
    }
    if x is not None:
        x = np.asarray(x)
        own = atom_features is None and x.dtype == np_dtype  # a fresh array from the featurizer
        fields[K.ATOM_FEATURES] = torch.from_numpy(x) if own else torch.tensor(x, dtype=dtype)
    if settings.line_graph:
        fields[K.LINE_INDEX] = line_graph_index(edge_index)
    return new_graph(fields)


def new_graph(fields: dict) -> CrystalGraph:
    """A :class:`CrystalGraph` holding ``fields`` (same as ``CrystalGraph(**fields)``).

    Filling the fresh graph's attribute store in one step avoids PyG's per-attribute
    bookkeeping, a sizeable part of building a small graph; if the store is not laid out
    as expected, the attributes are set one by one.
    """
    data = CrystalGraph()
    mapping = getattr(getattr(data, "_store", None), "_mapping", None)
    if isinstance(mapping, dict) and not mapping:
        mapping.update({k: v for k, v in fields.items() if v is not None})
    else:  # pragma: no cover - other torch_geometric layouts
        for key, value in fields.items():
            setattr(data, key, value)
    return data
