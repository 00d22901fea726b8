"""Crystal records: one structure plus the labels it has.

A :class:`CrystalRecord` pairs a pymatgen ``Structure`` with a dict of labels. Tensor labels
are full Cartesian numpy arrays in the *same Cartesian frame as the structure*. Missing labels
are absent from the dict, never zero or NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

from matxfer import keys as K
from matxfer.targets import TARGET_FORMULAS, TARGET_SHAPES, TARGET_UNITS

#: tolerance (relative to the largest component) for "symmetric where it must be". DFPT
#: output carries small numerical asymmetries (up to ~1 % in the Petousis set); those are
#: removed by symmetrising, anything larger is an error.
SYMMETRY_RTOL = 2e-2


#: index permutations that leave a tensor of each formula unchanged (generators)
_INDEX_PERMUTATIONS: dict[str, tuple[tuple[int, ...], ...]] = {
    "ij=ji": ((1, 0),),
    "ijk=ikj": ((0, 2, 1),),
    "ijkl=jikl=klij": ((1, 0, 2, 3), (2, 3, 0, 1)),
}


def symmetrize_indices(arr: np.ndarray, formula: str) -> np.ndarray:
    """Average ``arr`` over the index permutations of ``formula`` (e.g. ``ij=ji``)."""
    if formula == "ij=ji":
        return 0.5 * (arr + arr.T)
    if formula == "ijk=ikj":
        return 0.5 * (arr + arr.transpose(0, 2, 1))
    if formula == "ijkl=jikl=klij":
        a = 0.5 * (arr + arr.transpose(2, 3, 0, 1))
        a = 0.5 * (a + a.transpose(1, 0, 2, 3))
        return 0.5 * (a + a.transpose(0, 1, 3, 2))
    return arr


#: atoms closer than this (Angstrom, periodic images included) are overlapping: no real
#: crystal has them (the shortest bond, H2, is 0.74 A) and models turn them into NaN
MIN_INTERATOMIC_DISTANCE = 0.5


class RecordError(ValueError):
    """A bad entry: the message names the dataset (when known), the entry and the problem."""

    def __init__(self, entry: str, reason: str, dataset: str | None = None):
        super().__init__(f"{dataset + ': ' if dataset else ''}{entry}: {reason}")
        self.entry = entry
        self.reason = reason
        self.dataset = dataset


@dataclass(frozen=True)
class LabelRule:
    """Physical checks of one tensor label, beyond shape, finiteness and index symmetry.

    Eigenvalues are those of the symmetric 3x3 matrix (rank-2 tensors) or of the 6x6 Voigt
    matrix (elastic tensors); the bounds catch unit slips and corrupt entries, not physics.

    Attributes:
        definite: ``"positive"`` (every eigenvalue > 0: elastic stability, a passive
            dielectric), ``"semi"`` (no eigenvalue below -1 % of the largest |eigenvalue|,
            floor 1: the ionic dielectric contribution) or None.
        eig_min: smallest plausible eigenvalue (None: no bound).
        eig_max: largest plausible eigenvalue (None: no bound).
        abs_max: largest plausible |component| (None: no bound).
        reason: one line saying where the bounds come from.
    """

    definite: str | None = None
    eig_min: float | None = None
    eig_max: float | None = None
    abs_max: float | None = None
    reason: str = ""


#: checks that apply to a label whatever its dataset (a dataset's spec adds plausible ranges)
DEFAULT_LABEL_RULES: dict[str, LabelRule] = {
    K.ELASTIC_TENSOR: LabelRule(definite="positive"),
    K.DIELECTRIC_TOTAL: LabelRule(definite="positive"),
    K.DIELECTRIC_ELECTRONIC: LabelRule(definite="positive"),
    K.DIELECTRIC_IONIC: LabelRule(definite="semi"),
}


def rule_for(name: str, rules: dict[str, LabelRule] | None = None) -> LabelRule | None:
    """The rule of label ``name``: the dataset's own, else the default one."""
    if rules and name in rules:
        return rules[name]
    return DEFAULT_LABEL_RULES.get(name)


def _eigenvalues(name: str, arr: np.ndarray) -> np.ndarray | None:
    if arr.shape == (3, 3, 3, 3):
        from matxfer.tensors import cartesian_to_voigt

        v = np.asarray(cartesian_to_voigt(arr), dtype=float)
        return np.linalg.eigvalsh(0.5 * (v + v.T))
    if arr.shape == (3, 3) and TARGET_FORMULAS.get(name) == "ij=ji":
        return np.linalg.eigvalsh(0.5 * (arr + arr.T))
    return None


def label_problems(name: str, arr: np.ndarray, rule: LabelRule | None, pd_tol: float = 0.0) -> list[str]:
    """What is physically wrong with a finite, index-symmetric tensor label (empty: nothing).

    Args:
        name: label name (units are looked up in :data:`TARGET_UNITS`).
        arr: the label (full Cartesian tensor).
        rule: the checks to run (None: none).
        pd_tol: ``"positive"`` requires every eigenvalue > ``pd_tol`` x the largest |eigenvalue|.
    """
    if rule is None:
        return []
    units = TARGET_UNITS.get(name, "")
    units = "" if units in ("", "dimensionless") else f" {units}"
    why = f" ({rule.reason})" if rule.reason else ""
    problems: list[str] = []
    ev = _eigenvalues(name, arr)
    definite_failed = False
    if ev is not None and rule.definite == "positive" and ev.min() <= pd_tol * np.abs(ev).max():
        problems.append(f"{name} not positive definite (min eigenvalue {ev.min():.4g}{units})")
        definite_failed = True
    if ev is not None and rule.definite == "semi" and ev.min() < -1e-2 * max(np.abs(ev).max(), 1.0):
        problems.append(f"{name} has a negative eigenvalue ({ev.min():.4g}{units})")
        definite_failed = True
    if ev is not None and rule.eig_min is not None and not definite_failed and ev.min() < rule.eig_min:
        problems.append(
            f"{name} eigenvalue {ev.min():.4g}{units} below the plausible minimum {rule.eig_min:g}{why}"
        )
    if ev is not None and rule.eig_max is not None and ev.max() > rule.eig_max:
        problems.append(
            f"{name} eigenvalue {ev.max():.4g}{units} above the plausible maximum {rule.eig_max:g}{why}"
        )
    if rule.abs_max is not None:
        big = float(np.abs(arr).max())
        if big > rule.abs_max:
            problems.append(
                f"{name} component {big:.4g}{units} above the plausible maximum |{rule.abs_max:g}|{why}"
            )
    return problems


@dataclass
class CrystalRecord:
    """One crystal and its labels.

    Attributes:
        material_id: unique id within its dataset (an MP id, or ``<dataset>-<index>``).
        structure: ordered pymatgen structure; tensor labels are in its Cartesian frame.
        labels: target name -> float or numpy array (full Cartesian tensors).
        meta: anything else worth keeping (formula, space group, source frame...).
    """

    material_id: str
    structure: Structure
    labels: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def has(self, target: str) -> bool:
        return target in self.labels

    @property
    def formula(self) -> str:
        return self.structure.composition.reduced_formula


def closest_pair(structure: Structure, below: float = MIN_INTERATOMIC_DISTANCE):
    """The closest pair of atoms nearer than ``below`` Angstrom, or None.

    Periodic images count: an atom may be close to an image of another atom or to its own
    image (a lattice vector shorter than ``below``).

    Returns:
        ``(i, j, distance)`` with ``i <= j`` (``i == j``: an atom and its own image).
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    cart = np.ascontiguousarray(structure.cart_coords, dtype=float)
    c, p, im, d = find_points_in_spheres(
        cart,
        cart,
        r=float(below),
        pbc=np.ascontiguousarray(structure.lattice.pbc, dtype=np.int64),
        lattice=np.ascontiguousarray(structure.lattice.matrix, dtype=float),
        tol=1e-8,
    )
    c, p, im, d = np.asarray(c), np.asarray(p), np.asarray(im), np.asarray(d, dtype=float)
    self_pair = (c == p) & np.all(np.rint(im) == 0, axis=-1) if len(c) else c == p
    keep = ~self_pair & (d < below)
    if not keep.any():
        return None
    k = int(np.argmin(np.where(keep, d, np.inf)))
    i, j = sorted((int(c[k]), int(p[k])))
    return i, j, float(d[k])


def overlap_reason(structure: Structure, pair: tuple[int, int, float]) -> str:
    """The message for overlapping atoms ``pair`` (from :func:`closest_pair`)."""
    i, j, d = pair

    def site(k: int) -> str:
        return f"{k} ({structure[k].species_string})"

    if i == j:
        what = f"atom {site(i)} is {d:.3f} A from its own periodic image"
    else:
        what = f"atoms {site(i)} and {site(j)} are {d:.3f} A apart"
    return (
        f"overlapping atoms: {what} (periodic images included), closer than the "
        f"{MIN_INTERATOMIC_DISTANCE} A minimum; check the coordinates and lattice"
    )


def check_structure(entry: str, structure: Structure) -> Structure:
    """Raise :class:`RecordError` for an empty, disordered, degenerate or overlapping
    structure (two atoms closer than :data:`MIN_INTERATOMIC_DISTANCE`), or one with a
    species that is not a chemical element."""
    if structure is None or len(structure) == 0:
        raise RecordError(entry, "empty structure (no sites)")
    if not structure.is_ordered:
        raise RecordError(entry, "partial occupancy / disordered sites are not supported")
    from pymatgen.core.periodic_table import DummySpecies

    for i, site in enumerate(structure):
        unknown = [sp for sp in site.species if isinstance(sp, DummySpecies)]
        if unknown:  # pymatgen reads an unknown symbol (e.g. "Xx") as a DummySpecies
            symbol = unknown[0].symbol
            raise RecordError(
                entry, f"unknown element {symbol!r} at site {i}; give a chemical element symbol"
            )
    vol = structure.lattice.volume
    if not math.isfinite(vol) or vol <= 1e-6:
        raise RecordError(entry, f"degenerate lattice (volume {vol:g} A^3)")
    if not np.all(np.isfinite(structure.cart_coords)):
        raise RecordError(entry, "non-finite atomic coordinates")
    pair = closest_pair(structure)
    if pair is not None:
        raise RecordError(entry, overlap_reason(structure, pair))
    return structure


def check_label(
    entry: str,
    name: str,
    value: Any,
    n_atoms: int | None = None,
    rules: dict[str, LabelRule] | None = None,
    dataset: str | None = None,
) -> Any:
    """Validate one label and return it as float / symmetrised ndarray.

    The one check path of every label: shape, finiteness, index symmetry (where the tensor
    must be symmetric), then the physical checks of its :class:`LabelRule` (positive
    definiteness, plausible ranges: the dataset's rule from ``rules``, else the default).

    Raises:
        RecordError: naming the dataset, the entry and every problem found.
    """

    def bad(reason: str) -> RecordError:
        return RecordError(entry, reason, dataset)

    shape = TARGET_SHAPES.get(name)
    if shape is None:
        try:
            v = float(value)
        except (TypeError, ValueError) as exc:
            raise bad(f"label {name!r} is not a number: {value!r}") from exc
        if not math.isfinite(v):
            raise bad(f"label {name!r} is not finite ({v})")
        return v
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise bad(f"label {name!r} is not an array of numbers: {exc}") from exc
    want = tuple(n_atoms if s == -1 else s for s in shape) if n_atoms is not None else shape
    if arr.ndim != len(want) or any(w not in (-1, a) for w, a in zip(want, arr.shape)):
        raise bad(f"label {name!r} has shape {arr.shape}, expected {want}")
    if not np.all(np.isfinite(arr)):
        n_bad = int((~np.isfinite(arr)).sum())
        raise bad(f"label {name!r} contains NaN or inf ({n_bad} of {arr.size} components)")
    formula = TARGET_FORMULAS.get(name, "")
    perms = _INDEX_PERMUTATIONS.get(formula, ())
    if perms:
        scale = max(float(np.abs(arr).max()), 1e-12)
        asym = max(float(np.abs(arr - arr.transpose(p)).max()) for p in perms)
        if asym > SYMMETRY_RTOL * scale:
            raise bad(
                f"label {name!r} violates the index symmetry {formula} "
                f"(max deviation {asym:.3g}, largest component {scale:.3g})"
            )
        arr = symmetrize_indices(arr, formula)
    problems = label_problems(name, arr, rule_for(name, rules))
    if problems:
        raise bad("; ".join(problems))
    return arr


def make_record(
    entry: str,
    structure: Structure,
    labels: dict[str, Any],
    meta: dict[str, Any] | None = None,
    rules: dict[str, LabelRule] | None = None,
    dataset: str | None = None,
) -> CrystalRecord:
    """Build a checked record; labels that are ``None`` are treated as absent.

    ``rules`` are the dataset's :class:`LabelRule` s (defaults: :data:`DEFAULT_LABEL_RULES`);
    ``dataset`` names the dataset in error messages.
    """
    try:
        check_structure(entry, structure)
    except RecordError as exc:
        raise RecordError(entry, exc.reason, dataset) from None
    clean = {}
    for name, value in labels.items():
        if value is None:
            continue
        clean[name] = check_label(entry, name, value, len(structure), rules, dataset)
    return CrystalRecord(entry, structure, clean, dict(meta or {}))
