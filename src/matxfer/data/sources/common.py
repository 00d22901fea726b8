"""Parsing helpers shared by the dataset sources, and the plausible ranges of their labels."""

from __future__ import annotations

import ast
import gzip
import io
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matxfer import keys as K
from matxfer.data.records import LabelRule, RecordError
from matxfer.targets import TARGET_UNITS

if TYPE_CHECKING:
    from pymatgen.core import Structure

log = logging.getLogger(__name__)


def _structure_cls():
    """pymatgen's ``Structure`` (imported on first use: ``matxfer data list`` never needs it)."""
    from pymatgen.core import Structure

    return Structure


def _structure_from_dict(entry: str, value: Any) -> Structure:
    """``Structure.from_dict`` of a dict (or its Python-literal string); a value that is not
    a readable structure is a :class:`RecordError` naming the entry and the column."""
    try:
        return _structure_cls().from_dict(_literal(value))
    except RecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - pymatgen raises anything on a malformed dict
        raise RecordError(
            entry, f"structure: not a readable pymatgen structure ({type(exc).__name__}: {exc})"
        ) from None


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


def _atoms_value(table: dict, atoms, names: tuple[str, ...]):
    """The first of ``names`` in ``table`` (``atoms.arrays`` or ``atoms.info``), else in the
    attached calculator's results; None when absent."""
    for n in names:
        if n in table:
            return table[n]
    results = getattr(getattr(atoms, "calc", None), "results", None) or {}
    for n in names:
        if n in results:
            return results[n]
    return None


def _atoms_array(atoms, names: tuple[str, ...]):
    return _atoms_value(atoms.arrays, atoms, names)


def _atoms_info(atoms, names: tuple[str, ...]):
    return _atoms_value(atoms.info, atoms, names)


def _eps_and_becs(atoms, entry: str, eps_target: str, eps_key: str, eps_name: str,
                  becs_key: str) -> dict:
    """Labels of an extended-XYZ frame: a 3x3 dielectric tensor from ``atoms.info[eps_key]``
    (under ``eps_target``) and per-atom Born charges from ``atoms.arrays[becs_key]``; None
    where the frame has none."""
    eps = _atoms_info(atoms, (eps_key,))
    becs = _atoms_array(atoms, (becs_key,))
    return {
        eps_target: None if eps is None else _matrix3(entry, eps_name, eps),
        K.BORN_CHARGES: None if becs is None else _per_atom_3x3(entry, becs_key, becs, len(atoms)),
    }


def _per_atom_3x3(entry: str, name: str, arr, n_atoms: int) -> np.ndarray:
    a = _tensor_array(entry, name, arr)
    if a.shape != (n_atoms, 9) and a.shape != (n_atoms, 3, 3):
        raise RecordError(entry, f"{name} has shape {a.shape}, expected ({n_atoms}, 9)")
    return a.reshape(n_atoms, 3, 3)


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
