"""Tabulated atom features: CGCNN-style one-hot element properties, or a user table.

Two kinds of table map an atomic number ``Z`` to a feature vector:

* ``"cgcnn"``: a 92-dimensional one-hot encoding of nine element properties, computed here
  from pymatgen's element data (:func:`cgcnn_feature_table`). The block layout is the one of
  the ``atom_init.json`` shipped with the original CGCNN checkpoints; the values are
  recomputed, so a few elements fall into a neighbouring bin compared with that file (the
  source data differ). Blocks, in order:

  ==================  =====  =========================================================
  property            dims   encoding
  ==================  =====  =========================================================
  group               19     slot 0: f-block elements (La-Yb, Ac-No, no group number);
                             slots 1-18: IUPAC groups 1-18
  period              7      periods 1-7
  electronegativity   10     Pauling X, linear bins over [0.5, 4.0]
  covalent radius     10     Cordero radius in Angstrom, linear bins over [0.0, 3.0]
  valence electrons   12     1-12 (see :func:`valence_electrons`)
  first ionisation    10     ln(IE / eV), linear bins over [1.3, 3.3] (log bins)
  electron affinity   10     eV, linear bins over [-3.0, 3.7]
  block               4      s, p, d, f (He counted as s)
  atomic volume       10     ln(molar volume / cm^3 mol^-1), bins over [1.5, 4.3] (log)
  ==================  =====  =========================================================

  The ranges are those of the CGCNN paper except for the covalent radius, whose
  [0.0, 3.0] A range reproduces the reference table's bins from Cordero radii best (every
  element within one bin of it). Values outside a binned range fall into the first or
  last bin. An element whose property is missing from pymatgen (e.g. no Pauling
  electronegativity for He, Ne, Ar; no covalent radius beyond Cm; no molar volume for At,
  Fr, Fm) gets an **all-zero block** for that property, never a guessed bin. Elements
  1-100 are covered.

  Agreement with the reference ``atom_init.json`` (same bin, among elements defined in
  both): group, period, block and first ionisation energy 100/100; valence electrons
  90/100 (the reference counts 2 for every f-block element, ours adds the 5d/6d electrons
  of the ground state; Pd 4d10 gets 10 here, 12 there);
  electronegativity 77/85; atomic volume 77/91; covalent radius 67/96; electron affinity
  62/74. The differences come from the element data, not the layout.

* ``"table:<sha256>"``: a user table in the ``atom_init.json`` format ``{"Z": [F floats]}``
  (:func:`load_atom_table`). The hash is :func:`table_sha256` of the parsed content (so
  whitespace or key order in the file do not matter) and ties a checkpoint to its table.

:class:`AtomFeaturizer` wraps either kind; its :meth:`AtomFeaturizer.to_state` is plain
lists and dicts (the table travels inside the checkpoint and reads back with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

#: largest atomic number the CGCNN table covers
MAX_Z = 100
#: rows of every dense table (row 0 unused, row Z = element Z)
N_ROWS = MAX_Z + 1


@dataclass(frozen=True)
class FeatureBlock:
    """One property block of the CGCNN encoding.

    Attributes:
        name: property name.
        size: number of one-hot slots.
        kind: ``"category"`` (value is the slot index), ``"linear"`` (equal bins of the
            value over ``[lo, hi]``) or ``"log"`` (equal bins of ``ln(value)`` over ``[lo, hi]``).
        lo, hi: binned range (for ``"log"``: of the natural logarithm).
        unit: unit of the raw value.
    """

    name: str
    size: int
    kind: str
    lo: float = 0.0
    hi: float = 0.0
    unit: str = ""

    def slot(self, value: float | None) -> int | None:
        """Slot of ``value`` in this block (None: missing data, all-zero block)."""
        if value is None:
            return None
        if self.kind == "category":
            v = int(value)
            return v if 0 <= v < self.size else None
        v = float(value)
        if not math.isfinite(v):
            return None
        if self.kind == "log":
            if v <= 0:
                return None
            v = math.log(v)
        frac = (v - self.lo) / (self.hi - self.lo)
        return int(min(max(math.floor(frac * self.size), 0), self.size - 1))


#: the nine CGCNN blocks in table order (92 dims)
CGCNN_BLOCKS: tuple[FeatureBlock, ...] = (
    FeatureBlock("group", 19, "category"),
    FeatureBlock("period", 7, "category"),
    FeatureBlock("electronegativity", 10, "linear", 0.5, 4.0, "Pauling"),
    FeatureBlock("covalent_radius", 10, "linear", 0.0, 3.0, "Angstrom"),
    FeatureBlock("valence_electrons", 12, "category"),
    FeatureBlock("first_ionization_energy", 10, "log", 1.3, 3.3, "eV"),
    FeatureBlock("electron_affinity", 10, "linear", -3.0, 3.7, "eV"),
    FeatureBlock("block", 4, "category"),
    FeatureBlock("atomic_volume", 10, "log", 1.5, 4.3, "cm^3/mol"),
)
CGCNN_DIM = sum(b.size for b in CGCNN_BLOCKS)


def cgcnn_block_slices() -> dict[str, slice]:
    """Column range of each CGCNN block."""
    out, start = {}, 0
    for b in CGCNN_BLOCKS:
        out[b.name] = slice(start, start + b.size)
        start += b.size
    return out


def _safe(fn):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = fn()
    except Exception:  # noqa: BLE001 - pymatgen raises for some missing data, returns None/NaN for others
        return None
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def valence_electrons(z: int) -> int | None:
    """Valence electron count used by the CGCNN encoding.

    s- and p-block: electrons of the outermost shell (group 1-2 -> 1-2, He -> 2,
    group 13-18 -> 3-8). d-block: the group number (= ns + (n-1)d electrons, 3-12).
    f-block: ns + (n-1)d electrons of the ground-state configuration (f electrons are not
    counted, so 2 or 3).
    """
    from pymatgen.core import Element

    el = Element.from_Z(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = "s" if el.symbol == "He" else el.block
        group = el.group
    if block == "s":
        return 2 if el.symbol == "He" else group
    if block == "p":
        return group - 10
    if block == "d":
        return group
    try:
        conf = el.full_electronic_structure
    except Exception:  # noqa: BLE001 - no configuration tabulated
        return None
    n_max = max(n for n, orb, _ in conf if orb == "s")
    return sum(
        e for n, orb, e in conf if (orb == "s" and n == n_max) or (orb == "d" and n == n_max - 1)
    )


def element_properties(z: int) -> dict[str, float | int | None]:
    """Raw values of the nine CGCNN properties of element ``z`` (None where pymatgen has none)."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core import Element

    el = Element.from_Z(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = "s" if el.symbol == "He" else el.block
        group = 0 if block == "f" else el.group
        period = el.row
    valence = valence_electrons(z)
    # pymatgen numbers the lanthanide/actinide rows 8/9 in some versions; use the true period
    if 57 <= z <= 71:
        period = 6
    elif 89 <= z <= 103:
        period = 7
    return {
        "group": group,
        "period": period - 1,
        "electronegativity": _safe(lambda: el.X),
        "covalent_radius": _safe(lambda: CovalentRadius.radius[el.symbol]),
        "valence_electrons": None if valence is None or valence < 1 else valence - 1,
        "first_ionization_energy": _safe(lambda: el.ionization_energy),
        "electron_affinity": _safe(lambda: el.electron_affinity),
        "block": "spdf".index(block) if block in "spdf" else None,
        "atomic_volume": _safe(lambda: el.molar_volume),
    }


@lru_cache(maxsize=1)
def _cgcnn_table_cached() -> np.ndarray:
    table = np.zeros((N_ROWS, CGCNN_DIM), dtype=np.float64)
    slices = cgcnn_block_slices()
    for z in range(1, MAX_Z + 1):
        props = element_properties(z)
        for b in CGCNN_BLOCKS:
            s = b.slot(props[b.name])
            if s is not None:
                table[z, slices[b.name].start + s] = 1.0
    table.setflags(write=False)
    return table


def cgcnn_feature_table() -> np.ndarray:
    """Dense ``[101, 92]`` CGCNN one-hot table computed from pymatgen (row 0 is zeros)."""
    return _cgcnn_table_cached().copy()


def cgcnn_features(atomic_numbers) -> np.ndarray:
    """CGCNN one-hot features ``[n, 92]`` of the given atomic numbers (1-100)."""
    return AtomFeaturizer.cgcnn()(atomic_numbers)


# --- user tables -----------------------------------------------------------------------------


def table_sha256(table: np.ndarray, present: np.ndarray) -> str:
    """sha256 of a dense table's content: its shape, which rows are defined and their values
    as little-endian float64 (independent of the JSON formatting it came from)."""
    table = np.asarray(table, dtype="<f8")
    present = np.asarray(present, dtype=bool)
    h = hashlib.sha256()
    h.update(f"atom-table:{table.shape[0]}x{table.shape[1]}:".encode())
    for z in np.flatnonzero(present):
        h.update(int(z).to_bytes(2, "little"))
        h.update(table[z].tobytes())
    return h.hexdigest()


def parse_atom_table(
    content: Mapping[Any, Any], source: str = "atom table"
) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``[101, F]`` array and the ``[101]`` mask of defined rows from ``{"Z": [F floats]}``."""
    if not isinstance(content, Mapping) or not content:
        raise ValueError(f'{source}: expected a non-empty JSON object {{"Z": [floats]}}')
    rows: dict[int, np.ndarray] = {}
    width = None
    for key, vec in content.items():
        try:
            z = int(key)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: key {key!r} is not an atomic number") from exc
        if not 1 <= z < N_ROWS:
            raise ValueError(f"{source}: atomic number {z} outside 1..{N_ROWS - 1}")
        arr = np.asarray(vec, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{source}: entry {key!r} is not a flat list of numbers")
        if width is None:
            width = arr.size
        elif arr.size != width:
            raise ValueError(f"{source}: entry {key!r} has {arr.size} values, others have {width}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{source}: entry {key!r} contains NaN or inf")
        if z in rows:
            raise ValueError(f"{source}: atomic number {z} appears twice")
        rows[z] = arr
    table = np.zeros((N_ROWS, width), dtype=np.float64)
    present = np.zeros(N_ROWS, dtype=bool)
    for z, arr in rows.items():
        table[z] = arr
        present[z] = True
    return table, present


def load_atom_table(path: str | Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Read an ``atom_init.json``: (dense ``[101, F]`` table, ``[101]`` defined mask, sha256)."""
    path = Path(path).expanduser()
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"atom feature table not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"atom feature table {path} is not valid JSON: {exc}") from exc
    table, present = parse_atom_table(content, str(path))
    return table, present, table_sha256(table, present)


# --- featurizer --------------------------------------------------------------------------------


def _symbol(z: int) -> str:
    try:
        from pymatgen.core import Element

        return Element.from_Z(int(z)).symbol
    except Exception:  # noqa: BLE001 - only used to word an error message
        return "?"


class AtomFeaturizer:
    """Maps atomic numbers to tabulated features.

    Attributes:
        spec: ``"cgcnn"`` or ``"table:<sha256>"`` (the ``GraphSettings.atom_features`` value).
        table: dense ``[101, F]`` float64 table (row Z = element Z).
        present: ``[101]`` bool, which rows are defined.
        sha256: :func:`table_sha256` of the table.
    """

    def __init__(
        self, spec: str, table: np.ndarray, present: np.ndarray, sha256: str | None = None
    ):
        self.table = np.asarray(table, dtype=np.float64)
        self.present = np.asarray(present, dtype=bool)
        if self.table.ndim != 2 or self.table.shape[0] != self.present.shape[0]:
            raise ValueError(
                f"atom table shape {self.table.shape} does not match mask {self.present.shape}"
            )
        self.sha256 = table_sha256(self.table, self.present)
        if sha256 is not None and sha256 != self.sha256:
            raise ValueError(
                f"atom feature table content has sha256 {self.sha256}, expected {sha256} "
                "(the table was changed or belongs to another checkpoint)"
            )
        self.spec = spec
        self._table32 = self.table.astype(np.float32)

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def cgcnn(cls) -> AtomFeaturizer:
        """The CGCNN one-hot table computed from pymatgen element data."""
        return cls("cgcnn", _cgcnn_table_cached(), np.arange(N_ROWS) >= 1)

    @classmethod
    def from_table(
        cls, content: Mapping[Any, Any] | str | Path, expected_sha256: str | None = None
    ) -> AtomFeaturizer:
        """A table featurizer from an ``atom_init.json`` path or its parsed ``{"Z": [...]}``."""
        if isinstance(content, (str, Path)):
            table, present, _ = load_atom_table(content)
        else:
            table, present = parse_atom_table(content)
        sha = table_sha256(table, present)
        if expected_sha256 is not None and sha != expected_sha256:
            raise ValueError(
                f"atom feature table {content if isinstance(content, (str, Path)) else '(given)'} "
                f"has sha256 {sha}, but the spec asks for table:{expected_sha256}; supply the "
                "table the model was trained with"
            )
        return cls(f"table:{sha}", table, present, sha)

    @classmethod
    def from_spec(
        cls, spec: str, table_path: str | Path | Mapping[Any, Any] | None = None
    ) -> AtomFeaturizer | None:
        """Featurizer for a ``GraphSettings.atom_features`` value.

        Args:
            spec: ``"none"`` (returns None), ``"cgcnn"``, ``"table"`` (any table, its hash
                becomes the spec) or ``"table:<sha256>"`` (the table must have that hash).
            table_path: the ``atom_init.json`` (path, or its parsed content) for table specs.

        Raises:
            ValueError: unknown spec, table missing for a table spec, or hash mismatch.
        """
        spec = (spec or "none").strip()
        if spec == "none":
            return None
        if spec == "cgcnn":
            return cls.cgcnn()
        if spec == "table" or spec.startswith("table:"):
            want = spec.split(":", 1)[1] if ":" in spec else None
            if table_path is None:
                raise ValueError(
                    f"atom_features={spec!r} needs the table content: pass the atom_init.json "
                    "(graph.atom_table) it was built from"
                )
            if want is not None and not want:
                raise ValueError("atom_features='table:' has an empty sha256")
            return cls.from_table(table_path, expected_sha256=want)
        raise ValueError(
            f"unknown atom_features spec {spec!r}; valid: 'none', 'cgcnn', 'table:<sha256>'"
        )

    # -- use -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def missing(self, atomic_numbers) -> list[int]:
        """Atomic numbers (sorted, unique) that have no row in the table."""
        z = np.unique(np.asarray(atomic_numbers, dtype=np.int64).ravel())
        bad = (z < 1) | (z >= self.table.shape[0])
        ok = ~bad
        bad[ok] = ~self.present[z[ok]]
        return z[bad].tolist()

    def __call__(self, atomic_numbers) -> np.ndarray:
        """``[n, F]`` float32 features of ``atomic_numbers``.

        Raises:
            ValueError: naming the element(s) the table has no entry for.
        """
        z = np.asarray(atomic_numbers, dtype=np.int64).ravel()
        if z.size and (z.min() < 1 or z.max() >= self.table.shape[0] or not self.present[z].all()):
            bad = self.missing(z)
            names = ", ".join(f"{_symbol(b)} (Z={b})" for b in bad)
            raise ValueError(
                f"atom feature table {self.spec!r} has no entry for element(s) {names}"
            )
        return self._table32[z]

    def __repr__(self) -> str:
        return f"AtomFeaturizer(spec={self.spec!r}, dim={self.dim}, elements={int(self.present.sum())})"

    # -- checkpoint state --------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Plain-data state (the table itself included), safe for ``torch.load(weights_only=True)``."""
        zs = np.flatnonzero(self.present)
        return {
            "spec": self.spec,
            "kind": "cgcnn" if self.spec == "cgcnn" else "table",
            "dim": self.dim,
            "sha256": self.sha256,
            "rows": int(self.table.shape[0]),
            "table": {str(int(z)): [float(v) for v in self.table[z]] for z in zs},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AtomFeaturizer:
        """Rebuild from :meth:`to_state` (the stored table is used, and its hash is checked)."""
        if not isinstance(state, Mapping) or "spec" not in state or "table" not in state:
            raise ValueError("atom-feature state must be a dict with 'spec' and 'table'")
        content = state["table"]
        rows = int(state.get("rows", N_ROWS))
        width = int(state["dim"])
        table = np.zeros((rows, width), dtype=np.float64)
        present = np.zeros(rows, dtype=bool)
        for key, vec in content.items():
            z = int(key)
            table[z] = np.asarray(vec, dtype=np.float64)
            present[z] = True
        return cls(str(state["spec"]), table, present, sha256=state.get("sha256"))
