"""Periodic crystal graphs.

Neighbour lists come from pymatgen's Cython ``Structure.get_neighbor_list``. Every edge keeps
the integer image shift of its neighbour so the edge vector is exact; several edges between
the same pair of atoms (different images) are normal. Nothing is padded or silently cut:
``max_neighbors`` keeps the nearest (ties broken by neighbour index, then image), and an atom
with no neighbour inside the cutoff gets its ``fallback_k`` nearest neighbours found at a
wider radius; such atoms are counted on the graph (``n_fallback``) and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
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
        atom_features: ``"none"`` (atomic numbers only), ``"cgcnn"`` (92-dim one-hot
            element properties) or ``"table:<sha256>"`` for a user ``atom_init.json`` table.
    """

    cutoff: float = 5.0
    max_neighbors: int | None = None
    fallback_k: int = 12
    line_graph: bool = False
    atom_features: str = "none"

    def __post_init__(self) -> None:
        if not (self.cutoff > 0):
            raise ValueError(f"graph cutoff must be > 0 Angstrom, got {self.cutoff}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1 or None, got {self.max_neighbors}")
        if self.fallback_k < 1:
            raise ValueError(f"fallback_k must be >= 1, got {self.fallback_k}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GraphSettings:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown graph settings: {sorted(unknown)}")
        return cls(**d)

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


def _raw_neighbors(structure: Structure, radius: float, sites=None):
    kwargs = {"sites": sites} if sites is not None else {}
    centres, points, images, dists = structure.get_neighbor_list(radius, **kwargs)
    return (
        np.asarray(centres, dtype=np.int64),
        np.asarray(points, dtype=np.int64),
        np.asarray(images, dtype=np.float64).round().astype(np.int64).reshape(-1, 3),
        np.asarray(dists, dtype=np.float64),
    )


def _sort_and_cap(dst, src, shift, dist, cap: int | None):
    """Sort edges by (centre, distance, neighbour, image) and keep ``cap`` per centre."""
    if len(dst) == 0:
        return dst, src, shift, dist
    # round distances so floating-point noise does not decide ties
    dkey = np.round(dist, 8)
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], src, dkey, dst))
    dst, src, shift, dist = dst[order], src[order], shift[order], dist[order]
    if cap is not None:
        starts = np.searchsorted(dst, dst, side="left")
        rank = np.arange(len(dst)) - starts
        keep = rank < cap
        dst, src, shift, dist = dst[keep], src[keep], shift[keep], dist[keep]
    return dst, src, shift, dist


def neighbor_list(
    structure: Structure,
    cutoff: float,
    max_neighbors: int | None = None,
    fallback_k: int = 12,
) -> NeighborList:
    """Periodic neighbour list of ``structure``.

    Args:
        structure: an ordered pymatgen structure.
        cutoff: radius in Angstrom.
        max_neighbors: keep the nearest ``max_neighbors`` per atom (None: keep all).
        fallback_k: an atom with no neighbour inside ``cutoff`` gets its ``fallback_k``
            nearest neighbours (the radius is widened until enough are found).

    Returns:
        A :class:`NeighborList` sorted by centre atom, then distance.
    """
    n = len(structure)
    dst, src, shift, dist = _raw_neighbors(structure, cutoff)
    dst, src, shift, dist = _sort_and_cap(dst, src, shift, dist, max_neighbors)
    counts = np.bincount(dst, minlength=n)
    lonely = np.flatnonzero(counts == 0)
    n_fallback = len(lonely)
    if n_fallback:
        sites = [structure[int(i)] for i in lonely]
        radius = cutoff
        while True:
            radius = min(radius * 1.5, MAX_FALLBACK_RADIUS)
            c, p, im, d = _raw_neighbors(structure, radius, sites=sites)
            # with ``sites`` given, pymatgen numbers the centres 0..len(sites)-1
            found = np.bincount(c, minlength=len(lonely))
            if np.all(found >= fallback_k) or radius >= MAX_FALLBACK_RADIUS:
                break
        if np.any(found == 0):
            raise ValueError(
                f"atoms {lonely[found == 0].tolist()} have no neighbour within "
                f"{MAX_FALLBACK_RADIUS} A"
            )
        extra = (lonely[c], p, im, d)
        c, p, im, d = _sort_and_cap(*extra, fallback_k)
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


class CrystalGraph(Data):
    """PyG ``Data`` for crystals; offsets line-graph indices by the number of edges when batched."""

    def __inc__(self, key, value, *args, **kwargs):
        if key == K.LINE_INDEX:
            return self.edge_index.size(1)
        return super().__inc__(key, value, *args, **kwargs)


def structure_to_graph(
    structure: Structure,
    settings: GraphSettings,
    material_id: str = "",
    atom_features: np.ndarray | None = None,
) -> CrystalGraph:
    """Build the graph of one structure.

    Args:
        structure: ordered pymatgen structure.
        settings: graph settings.
        material_id: stored on the graph for bookkeeping.
        atom_features: optional ``[n_atoms, n_feat]`` tabulated atom features.

    Returns:
        A :class:`CrystalGraph` with ``z [n]``, ``pos [n,3]``, ``cell [1,3,3]``,
        ``edge_index [2,E]``, ``cell_shift [E,3]`` (+ ``x``, ``line_index`` when asked).
    """
    nl = neighbor_list(structure, settings.cutoff, settings.max_neighbors, settings.fallback_k)
    data = CrystalGraph(
        z=torch.tensor(structure.atomic_numbers, dtype=torch.long),
        pos=torch.tensor(structure.cart_coords, dtype=torch.get_default_dtype()),
        cell=torch.tensor(structure.lattice.matrix, dtype=torch.get_default_dtype()).unsqueeze(0),
        edge_index=torch.from_numpy(np.stack([nl.src, nl.dst])).long(),
        cell_shift=torch.from_numpy(nl.shift).to(torch.get_default_dtype()),
        n_fallback=torch.tensor([nl.n_fallback]),
    )
    data.num_nodes = len(structure)
    data.material_id = material_id
    if atom_features is not None:
        data.x = torch.as_tensor(atom_features, dtype=torch.get_default_dtype())
    return data
