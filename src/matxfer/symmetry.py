"""Exact crystal symmetry for tensor predictions.

A crystal tensor property is invariant under the crystal's point group ``G``:
``R·T = T`` for every ``R`` in ``G`` (acting with ``R`` on every index, proper and improper
rotations alike). An equivariant model obeys this only as far as its input graph keeps the
crystal's symmetry and up to floating-point noise; the Reynolds projection

    P(T) = (1/|G|) sum_{R in G} R·T

makes it exact: ``P`` is the orthogonal projection onto the invariant subspace, so
symmetry-forbidden components come out exactly zero (every piezoelectric component of a
centrosymmetric crystal, for instance), an already invariant tensor is unchanged and
``P(P(T)) = P(T)``.

The point group is found by spglib (tolerance ``symprec`` in Angstrom) on the structure as
stored, and expressed in the Cartesian frame of that structure, which is the frame the model
predicts in.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

#: default spglib tolerance (Angstrom) for the point group of a predicted crystal
DEFAULT_SYMPREC = 0.01

_ROT_TOL = 1e-6

#: spglib tolerance (Angstrom) used to name a crystal's system for splits and reports
SYSTEM_SYMPREC = 0.1


def crystal_system(structure, symprec: float = SYSTEM_SYMPREC) -> str:
    """The crystal system (``cubic``, ..., ``triclinic``) of a structure, or ``unknown``."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return SpacegroupAnalyzer(structure, symprec=symprec).get_crystal_system()
    except Exception:  # noqa: BLE001 - spglib failures are reported as a category
        return "unknown"


class PointGroup(NamedTuple):
    """A crystal's point group in the Cartesian frame of its structure."""

    rotations: np.ndarray  # [n_ops, 3, 3] float64, identity first
    symbol: str  # Hermann-Mauguin point-group symbol from spglib ("1" when none found)
    symprec: float

    @property
    def centrosymmetric(self) -> bool:
        return is_centrosymmetric(self.rotations)


def point_group_from_arrays(
    lattice: Any, cart_coords: Any, numbers: Any, symprec: float = DEFAULT_SYMPREC
) -> PointGroup:
    """The point group of a periodic structure, as Cartesian rotation matrices.

    Args:
        lattice: ``[3, 3]`` lattice vectors as rows (Angstrom).
        cart_coords: ``[n, 3]`` Cartesian positions (Angstrom).
        numbers: ``[n]`` atomic numbers (any integer species labels).
        symprec: spglib tolerance in Angstrom.

    Returns:
        A :class:`PointGroup`: the distinct rotational parts of the space-group operations
        (identity first) in the Cartesian frame of the input, and spglib's symbol. Only the
        identity when spglib finds no symmetry.
    """
    import spglib

    a = np.asarray(lattice, dtype=np.float64).reshape(3, 3)
    cart = np.asarray(cart_coords, dtype=np.float64).reshape(-1, 3)
    frac = np.linalg.solve(a.T, cart.T).T
    cell = (a, frac, np.asarray(numbers, dtype=np.int64).ravel())
    ds = spglib.get_symmetry_dataset(cell, symprec=symprec)  # type: ignore[arg-type]  # stubs: arrays work
    rots: list[np.ndarray] = [np.eye(3)]
    symbol = "1"
    if ds is not None:
        symbol = str(ds.pointgroup).strip() or "1"
        # x_frac' = W x_frac  <=>  r' = A^T W A^-T r  (A = lattice with vectors as rows)
        a_t = a.T
        a_t_inv = np.linalg.inv(a_t)
        w_all = np.asarray(ds.rotations, dtype=np.float64)
        # a supercell repeats each rotation once per lattice translation (48,000 operations
        # for 1,000 cells of a cubic crystal); its distinct integer matrices are few, and
        # comparing every operation with the ones kept took seconds
        _, first = np.unique(
            np.rint(w_all).astype(np.int64).reshape(len(w_all), -1), axis=0, return_index=True
        )
        for w in w_all[np.sort(first)]:
            r = a_t @ w @ a_t_inv
            if not any(np.abs(r - q).max() < _ROT_TOL for q in rots):
                rots.append(r)
    return PointGroup(np.stack(rots), symbol, float(symprec))


def structure_point_group(structure: Any, symprec: float = DEFAULT_SYMPREC) -> PointGroup:
    """:func:`point_group_from_arrays` of a pymatgen ``Structure``."""
    numbers = [site.specie.Z for site in structure]
    return point_group_from_arrays(
        structure.lattice.matrix, structure.cart_coords, numbers, symprec
    )


def graph_point_group(graph: Any, symprec: float = DEFAULT_SYMPREC) -> PointGroup:
    """:func:`point_group_from_arrays` of a crystal graph (its ``cell``, ``pos`` and ``z``)."""
    from matxfer import keys as K

    cell = graph[K.CELL].detach().double().cpu().numpy().reshape(3, 3)
    pos = graph[K.POSITIONS].detach().double().cpu().numpy()
    z = graph[K.ATOMIC_NUMBERS].detach().cpu().numpy()
    return point_group_from_arrays(cell, pos, z, symprec)


def is_centrosymmetric(rotations: np.ndarray) -> bool:
    """Whether the point group contains the inversion ``-I``."""
    return bool(any(np.abs(r + np.eye(3)).max() < _ROT_TOL for r in rotations))


def project(t: Any, rotations: np.ndarray) -> np.ndarray:
    """The Reynolds projection of a Cartesian tensor onto the point group's invariants.

    Args:
        t: ``(3, ..., 3)`` Cartesian tensor (crystal property, every index polar).
        rotations: ``[n_ops, 3, 3]`` Cartesian point-group matrices (a group).

    Returns:
        ``(1/|G|) sum_R R·t`` as float64 numpy; entries below ``1e-12`` of the largest
        magnitude are set to exactly 0, so forbidden components are exact zeros.
    """
    from matxfer.tensors import symmetrize

    a = np.asarray(t, dtype=np.float64)
    out = np.asarray(symmetrize(a, np.asarray(rotations, dtype=np.float64)), dtype=np.float64)
    scale = float(np.abs(a).max()) if a.size else 0.0
    out[np.abs(out) <= 1e-12 * scale] = 0.0
    return out


def forbidden_mask(rotations: np.ndarray, formula: str) -> np.ndarray:
    """Components (in the stored layout: 3x3, Voigt 3x6, Voigt 6x6) that the point group
    forces to zero, as a bool array.

    Found by projecting a fixed generic tensor of the formula's index symmetry: a component
    is forbidden exactly when the projection of a generic tensor is zero there.
    """
    from matxfer.data.records import symmetrize_indices
    from matxfer.metrics import stored_layout

    rank = len(formula.split("=")[0])
    generic = np.random.default_rng(12345).standard_normal((3,) * rank)
    generic = symmetrize_indices(generic, formula) if "=" in formula else generic
    return stored_layout(project(generic, rotations)[None], formula)[0] == 0


def project_predictions(
    preds: list[dict[str, np.ndarray]],
    graphs: list,
    formulas: dict[str, str],
    symprec: float = DEFAULT_SYMPREC,
) -> list[PointGroup]:
    """Project each crystal's tensor predictions onto its point group's invariants, in place.

    Args:
        preds: per-graph ``{task: Cartesian tensor}`` (physical units), as from
            ``predict_graphs``.
        graphs: the crystal graphs, same order.
        formulas: the crystal-tensor tasks to project and their index formulas.
        symprec: spglib tolerance in Angstrom.

    Returns:
        Each graph's :class:`PointGroup`.
    """
    groups = [graph_point_group(g, symprec) for g in graphs]
    for pr, pg in zip(preds, groups):
        for name in formulas:
            if name in pr:
                pr[name] = project(pr[name], pg.rotations)
    return groups
