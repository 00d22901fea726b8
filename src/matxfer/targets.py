"""The one table of prediction targets: kind, formula, units, shape and property family.

Every label key the package knows is a :class:`TargetSpec` in :data:`TARGETS`; the views
below (:data:`TARGET_SHAPES`, :data:`TARGET_FORMULAS`, :data:`TARGET_UNITS`,
:data:`PROPERTY_FAMILIES`) are derived from it, so a new target is one entry here. A label
that is not in the table (a plugin dataset's own scalar, say) is a scalar without units
(:func:`target_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass

from matxfer import keys as K

SCALAR = "scalar"
TENSOR = "tensor"  # one Cartesian tensor per crystal
ATOM_TENSOR = "atom_tensor"  # one Cartesian tensor per atom
FORCES = "forces"  # one Cartesian vector per atom
KINDS = (SCALAR, TENSOR, ATOM_TENSOR, FORCES)


@dataclass(frozen=True)
class TargetSpec:
    """One label key.

    Attributes:
        name: the label key (``elastic_tensor``, ``band_gap``...).
        kind: ``scalar``, ``tensor`` (per crystal), ``atom_tensor`` (per atom) or ``forces``.
        units: physical units of the label.
        formula: index symmetry of a tensor (e3nn ``CartesianTensor`` notation), else None.
        shape: shape of one label (``()`` for a scalar; a leading -1 is the number of atoms).
        family: the physical property it describes (labels of one family leak into each
            other: a study checks pretraining labels against test materials per family).
    """

    name: str
    kind: str
    units: str = ""
    formula: str | None = None
    shape: tuple[int, ...] = ()
    family: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"target {self.name!r}: unknown kind {self.kind!r}; valid: {KINDS}")
        if (self.formula is not None) != (self.kind in (TENSOR, ATOM_TENSOR)):
            raise ValueError(f"target {self.name!r}: a formula goes with tensor kinds only")
        if not self.family:
            object.__setattr__(self, "family", self.name)

    @property
    def rank(self) -> int:
        """Tensor rank (0 for scalars, 1 for forces)."""
        if self.kind == FORCES:
            return 1
        return 0 if self.formula is None else len(self.formula.split("=")[0])

    @property
    def per_atom(self) -> bool:
        return self.kind in (ATOM_TENSOR, FORCES)


def _scalar(name: str, units: str, family: str = "") -> TargetSpec:
    return TargetSpec(name, SCALAR, units, family=family)


#: every known label key
TARGETS: dict[str, TargetSpec] = {
    t.name: t
    for t in (
        TargetSpec(K.ELASTIC_TENSOR, TENSOR, "GPa", "ijkl=jikl=klij", (3, 3, 3, 3), "elastic"),
        TargetSpec(K.DIELECTRIC_TOTAL, TENSOR, "dimensionless", "ij=ji", (3, 3), "dielectric"),
        TargetSpec(K.DIELECTRIC_ELECTRONIC, TENSOR, "dimensionless", "ij=ji", (3, 3), "dielectric"),
        TargetSpec(K.DIELECTRIC_IONIC, TENSOR, "dimensionless", "ij=ji", (3, 3), "dielectric"),
        TargetSpec(K.PIEZO_TENSOR, TENSOR, "C/m^2", "ijk=ikj", (3, 3, 3), "piezo"),
        TargetSpec(K.BORN_CHARGES, ATOM_TENSOR, "e", "ij", (-1, 3, 3), "dielectric"),
        TargetSpec(K.FORCES, FORCES, "eV/Angstrom", None, (-1, 3)),
        _scalar(K.BULK_MODULUS_VRH, "GPa", "elastic"),
        _scalar(K.SHEAR_MODULUS_VRH, "GPa", "elastic"),
        _scalar("log10_bulk_modulus_vrh", "log10(GPa)", "elastic"),
        _scalar("log10_shear_modulus_vrh", "log10(GPa)", "elastic"),
        _scalar("poisson_ratio", "dimensionless", "elastic"),
        _scalar(K.FORMATION_ENERGY_PER_ATOM, "eV/atom", "formation_energy"),
        _scalar("formation_energy", "eV/cell", "formation_energy"),
        _scalar("e_above_hull", "eV/atom"),
        _scalar(K.BAND_GAP, "eV"),
        _scalar(K.EIJ_MAX, "C/m^2", "piezo"),
        _scalar(K.REFRACTIVE_INDEX, "dimensionless", "dielectric"),
        _scalar("last_phdos_peak", "cm^-1"),
        _scalar(K.ENERGY, "eV"),
        _scalar(K.ENERGY_PER_ATOM, "eV/atom"),
    )
}


def target_spec(name: str) -> TargetSpec:
    """The spec of a label key; an unknown key is a scalar without units."""
    return TARGETS.get(name) or TargetSpec(name, SCALAR)


#: expected shape of each non-scalar label (a leading -1: per atom)
TARGET_SHAPES: dict[str, tuple[int, ...]] = {n: t.shape for n, t in TARGETS.items() if t.shape}
#: index-symmetry formula of each tensor label
TARGET_FORMULAS: dict[str, str] = {n: t.formula for n, t in TARGETS.items() if t.formula}
#: units of each known label
TARGET_UNITS: dict[str, str] = {n: t.units for n, t in TARGETS.items() if t.units}
#: label key -> property family, for labels that share a family with others
PROPERTY_FAMILIES: dict[str, str] = {n: t.family for n, t in TARGETS.items() if t.family != n}
