"""Predict with a checkpoint on user structures (CIF, POSCAR, pymatgen JSON, extended XYZ).

For every structure and task: the Cartesian tensor, its Voigt form and derived quantities
(elastic: K_VRH, G_VRH, mechanical stability; dielectric: mean eigenvalue; piezo: eij_max),
the scalar value, or per-atom values (Born charges; forces with their largest norm). Unreadable inputs are reported with the file and the reason; one bad
file never stops the others.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from matxfer.data.records import RecordError, check_structure
from matxfer.tasks import ATOM_TENSOR, FORCES, SCALAR, TENSOR, Task

log = logging.getLogger(__name__)

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".json", ".xyz", ".extxyz", ".poscar")


def _is_structure_file(p: Path) -> bool:
    name = p.name.lower()
    return (
        name.endswith(STRUCTURE_SUFFIXES)
        or name.startswith(("poscar", "contcar"))
        or name.endswith(tuple(s + ".gz" for s in STRUCTURE_SUFFIXES))
    )


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and structure files inside folders (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and _is_structure_file(f)))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    return out


def read_structures(path: Path) -> list[tuple[str, Structure]]:
    """All structures in one file as (name, structure); extended XYZ may hold several."""
    name = path.name.lower()
    if name.endswith((".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")):
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        frames = read(str(path), index=":")
        if not frames:
            raise ValueError("no frames in the file")
        if len(frames) == 1:
            return [(path.stem, AseAtomsAdaptor.get_structure(frames[0]))]
        return [(f"{path.stem}[{i}]", AseAtomsAdaptor.get_structure(a)) for i, a in enumerate(frames)]
    if name.endswith(".json"):
        blob = json.loads(path.read_text())
        return [(path.stem, Structure.from_dict(blob))]
    if name.endswith((".cif", ".cif.gz")):
        return [(path.stem, _read_cif(path))]
    return [(path.stem, Structure.from_file(str(path)))]


def _read_cif(path: Path) -> Structure:
    """``Structure.from_file`` of a CIF; when pymatgen builds no structure, say why.

    pymatgen's CIF reader merges atoms at the same position (within 1e-4 in fractional
    coordinates) into one site and adds up their occupancies; two full atoms there make an
    occupancy of 2, over the tolerance, and the structure is dropped with the bare message
    "Invalid CIF file with no structures". The reasons it gave as warnings are reported
    instead, with the overlapping sites of the file's atom list.
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = Structure.from_file(str(path))
        except ValueError as exc:
            if "no structures" not in str(exc):
                raise
            structure = None
    if structure is not None:
        for w in caught:  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return structure
    notes = []
    for w in caught:
        for line in str(w.message).splitlines():
            line = line.strip()
            skip = line.startswith(("Issues encountered", "No structure parsed"))
            if line and not skip and line not in notes:
                notes.append(line)
    overlap = _cif_overlapping_sites(path)
    occu = next((m for n in notes if (m := re.search(r"Occupancy ([0-9.]+) exceeded", n))), None)
    if overlap or occu:
        merged = f"merged them into one site of occupancy {occu.group(1)} (> 1)" if occu else (
            "merged them into one site")
        raise RecordError(
            str(path),
            f"overlapping atoms: {overlap or 'atoms at the same position'}; pymatgen's CIF "
            f"reader {merged} and built no structure; check the atom coordinates",
        )
    raise RecordError(
        str(path), "pymatgen built no structure from this CIF" + (f": {'; '.join(notes)}" if notes else "")
    )


def _cif_overlapping_sites(path: Path) -> str:
    """'sites Cl1 and Cl2 (Cl, Cl) are 0.000 A apart' for the closest pair of the CIF's
    listed atom sites nearer than the minimum distance (periodic images included), or ''."""
    from pymatgen.core import Lattice
    from pymatgen.io.cif import CifParser

    from matxfer.data.records import MIN_INTERATOMIC_DISTANCE

    try:
        blocks = CifParser(str(path)).as_dict()
        for block in blocks.values():
            cell = [float(str(block[f"_cell_{k}"]).split("(")[0]) for k in (
                "length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")]
            lat = Lattice.from_parameters(*cell)
            frac = np.array([
                [float(str(v).split("(")[0]) for v in block[f"_atom_site_fract_{ax}"]]
                for ax in "xyz"
            ]).T
            labels = list(block.get("_atom_site_label") or range(len(frac)))
            species = list(block.get("_atom_site_type_symbol") or labels)
            d = lat.get_all_distances(frac, frac)
            np.fill_diagonal(d, np.inf)
            i, j = np.unravel_index(np.argmin(d), d.shape)
            if d[i, j] < MIN_INTERATOMIC_DISTANCE:
                i, j = sorted((int(i), int(j)))
                return (
                    f"sites {i} {labels[i]} ({species[i]}) and {j} {labels[j]} ({species[j]}) "
                    f"are {d[i, j]:.3f} A apart"
                )
    except Exception:  # noqa: BLE001 - a diagnosis only; the caller reports what pymatgen said
        return ""
    return ""


@dataclass
class Predictor:
    """A loaded checkpoint ready to predict on pymatgen structures."""

    model: Any
    tasks: dict[str, Task]
    settings: Any
    featurizer: Any = None
    ckpt: dict = field(default_factory=dict)
    #: spglib tolerance (Angstrom) of the point group each tensor prediction is projected
    #: onto (symmetry-forbidden components exactly 0); None keeps the raw model output
    symprec: float | None = 0.01

    @classmethod
    def from_checkpoint(cls, path: str | Path, symprec: float | None = 0.01) -> Predictor:
        from matxfer.checkpoint import load_checkpoint, model_from_checkpoint
        from matxfer.data.atom_features import AtomFeaturizer
        from matxfer.data.graphs import GraphSettings

        ckpt = load_checkpoint(path)
        model, tasks = model_from_checkpoint(ckpt)
        settings = GraphSettings.from_dict(ckpt["graph"])
        feat = AtomFeaturizer.from_state(ckpt["atom_features"]) if ckpt.get("atom_features") else None
        return cls(model, tasks, settings, feat, ckpt, symprec)

    def graph(self, structure: Structure, name: str = ""):
        from matxfer.data.graphs import structure_to_graph

        check_structure(name or structure.composition.reduced_formula, structure)
        kwargs = {}
        if self.featurizer is not None:
            kwargs["featurizer"] = self.featurizer
        return structure_to_graph(structure, self.settings, material_id=name, **kwargs)

    def predict_structures(
        self, structures: list[Structure], names: list[str] | None = None, batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """Predictions with derived quantities for each structure (same order)."""
        from matxfer.train.loop import predict_graphs

        names = names or [s.composition.reduced_formula for s in structures]
        graphs = [self.graph(s, n) for s, n in zip(structures, names)]
        isolated = [self.isolated(s, n) for s, n in zip(structures, names)]
        raw = predict_graphs(self.model, graphs, batch_size)
        tensor_formulas = {k: t.formula for k, t in self.tasks.items() if t.kind == TENSOR}
        symmetry: list[dict[str, Any]] = [{} for _ in graphs]
        if self.symprec is not None and tensor_formulas:
            from matxfer.symmetry import project_predictions

            groups = project_predictions(raw, graphs, tensor_formulas, self.symprec)
            symmetry = [
                {"symmetry": {"point_group": pg.symbol, "symprec": pg.symprec, "projected": True}}
                for pg in groups
            ]
        return [
            {
                "name": n,
                "formula": s.composition.reduced_formula,
                "isolated_atoms": len(iso),
                **sym,
                **self.describe(r),
            }
            for n, s, iso, r, sym in zip(names, structures, isolated, raw, symmetry)
        ]

    def isolated(self, structure: Structure, name: str = "") -> list[int]:
        """Atoms with no neighbour within the graph cutoff; logs a warning naming them."""
        from matxfer.data.graphs import isolated_atoms

        cutoff = float(self.settings.cutoff)
        iso = isolated_atoms(structure, cutoff)
        if iso:
            sites = ", ".join(f"{i} ({structure[i].species_string})" for i in iso[:10])
            more = f" and {len(iso) - 10} more" if len(iso) > 10 else ""
            log.warning(
                "%s: %d of %d atom(s) have no neighbour within the %.2f A cutoff (sites %s%s); "
                "the model sees them only through neighbours beyond its cutoff, so the "
                "prediction is an extrapolation (column isolated_atoms)",
                name or structure.composition.reduced_formula, len(iso), len(structure),
                cutoff, sites, more,
            )
        return iso

    def describe(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        from matxfer.tensors import (
            cartesian_to_voigt,
            eij_max,
            elastic_moduli,
            is_positive_definite,
            mean_eigenvalue,
        )

        out: dict[str, Any] = {}
        for name, task in self.tasks.items():
            val = np.asarray(raw[name], dtype=float)
            if task.kind == SCALAR:
                out[name] = float(val.ravel()[0])
                continue
            if task.kind == ATOM_TENSOR:
                out[name] = val.tolist()
                continue
            if task.kind == FORCES:
                out[name] = {"per_atom": val.tolist(), "units": task.units,
                             "max_norm": float(np.linalg.norm(val, axis=1).max()) if len(val) else 0.0}
                continue
            entry: dict[str, Any] = {"cartesian": val.tolist(), "units": task.units}
            entry["voigt"] = cartesian_to_voigt(val).tolist()
            if task.formula == "ijkl=jikl=klij":
                m = elastic_moduli(val)
                entry["k_vrh"] = float(m["k_vrh"])
                entry["g_vrh"] = float(m["g_vrh"])
                entry["mechanically_stable"] = bool(is_positive_definite(val))
            elif task.formula == "ij=ji":
                entry["mean_eigenvalue"] = float(mean_eigenvalue(val))
            elif task.formula == "ijk=ikj":
                entry["eij_max"] = float(eij_max(val))
            out[name] = entry
        return out


def predict_files(
    ckpt: str | Path, inputs: list[str | Path], symprec: float | None = 0.01
) -> tuple[list[dict], list[dict]]:
    """Predict on files/folders; returns (results, errors) where errors name file and reason.

    ``symprec``: tensor predictions are projected onto each crystal's point group found with
    this spglib tolerance (Angstrom); None keeps the raw model output.
    """
    pred = Predictor.from_checkpoint(ckpt, symprec=symprec)
    files = expand_inputs(inputs)
    if not files:
        raise ValueError(f"no structure files found in {[str(i) for i in inputs]}")
    structures, names, errors = [], [], []
    for f in files:
        try:
            for name, s in read_structures(f):
                check_structure(str(f), s)
                structures.append(s)
                names.append(name if name != f.stem else str(f))
        except RecordError as exc:
            errors.append({"input": str(f), "error": exc.reason})
        except Exception as exc:
            errors.append({"input": str(f), "error": f"could not read structure: {exc}"})
    results = []
    for s, n in zip(structures, names):
        try:
            results.extend(pred.predict_structures([s], [n]))
        except Exception as exc:  # one bad crystal never kills the run
            errors.append({"input": n, "error": f"prediction failed: {exc}"})
    return results, errors


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = json.dumps(v, allow_nan=False)
        else:
            out[key] = v
    return out


def write_predictions(results: list[dict], errors: list[dict], path: str | Path) -> Path:
    """Write predictions as strict JSON (NaN/inf become null) or CSV (empty cells)."""
    from matxfer.jsonout import dumps, json_safe

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json_safe(results)
    if path.suffix == ".json":
        path.write_text(dumps({"predictions": results, "errors": errors}, indent=1))
    elif path.suffix == ".csv":
        rows = [_flatten(r) for r in results]
        cols: list[str] = []
        for r in rows:
            cols.extend(c for c in r if c not in cols)
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        if errors:
            path.with_suffix(".errors.json").write_text(dumps(errors, indent=1))
    else:
        raise ValueError(f"--out must end in .json or .csv, got {path.name}")
    return path
