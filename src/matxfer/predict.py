"""Predict with a checkpoint on user structures (CIF, POSCAR, pymatgen JSON, extended XYZ).

For every structure and task: the Cartesian tensor, its Voigt form and derived quantities
(elastic: K_VRH, G_VRH, Young's modulus, Poisson ratio, universal anisotropy, Born
stability; dielectric: eigenvalues, their mean and anisotropy; piezo: eij_max and its
direction), the scalar value, or per-atom values (Born charges; forces with their largest
norm). With an ensemble checkpoint every number has its standard deviation across members
beside it (``<name>_std``). Crystals with elements the training data never had are named
with a warning (column ``unseen_elements``; for checkpoints that record their training
elements). Unreadable inputs are reported with the file and the reason; one bad file never
stops the others.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Structure

from matxfer.data.records import RecordError, check_structure
from matxfer.tasks import ATOM_TENSOR, FORCES, SCALAR, TENSOR, Task

if TYPE_CHECKING:
    from matxfer.data.atom_features import AtomFeaturizer
    from matxfer.data.graphs import CrystalGraph, GraphSettings
    from matxfer.models.base import PropertyModel
    from matxfer.models.ensemble import EnsembleModel

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


def _check_readable(path: Path) -> None:
    """Raise :class:`RecordError` for an empty file, or binary content in an uncompressed one
    (a NUL byte or bytes that are not UTF-8 text in its first 64 kB)."""
    if path.stat().st_size == 0:
        raise RecordError(str(path), "the file is empty (0 bytes)")
    if path.name.lower().endswith(".gz"):
        return
    with open(path, "rb") as fh:
        head = fh.read(65536)
    try:
        head.decode("utf-8")
        text = b"\x00" not in head
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the 64 kB boundary is text
        text = exc.start >= len(head) - 3 and b"\x00" not in head
    if not text:
        raise RecordError(
            str(path), f"binary content (starts with the bytes {head[:8]!r}), not a text "
            "structure file (CIF, POSCAR, pymatgen JSON or extended XYZ)"
        )


def _structure_from_json(path: Path) -> Structure:
    """A pymatgen ``Structure.as_dict()`` JSON file."""
    try:
        blob = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecordError(
            str(path), f"not valid JSON ({exc}); is the file complete?"
        ) from None
    if not isinstance(blob, dict) or not {"lattice", "sites"} <= set(blob):
        keys = sorted(map(str, blob))[:8] if isinstance(blob, dict) else type(blob).__name__
        raise RecordError(
            str(path), f"not a pymatgen Structure JSON (Structure.as_dict() has 'lattice' and "
            f"'sites'; this file has {keys})"
        )
    return Structure.from_dict(blob)


def read_structures(path: Path) -> list[tuple[str, Structure]]:
    """All structures in one file as (name, structure); extended XYZ may hold several."""
    _check_readable(path)
    name = path.name.lower()
    if name.endswith((".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")):
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        frames = read(str(path), index=":")
        if not frames:
            raise ValueError("no frames in the file")
        for i, a in enumerate(frames):
            if abs(float(a.cell.volume)) < 1e-6:  # a molecule: no Lattice in the comment line
                where = f"frame {i}" if len(frames) > 1 else "the frame"
                raise RecordError(
                    str(path), f"{where} has no periodic cell (no Lattice=\"...\" or a "
                    "zero-volume one); give the crystal's lattice vectors"
                )
        if len(frames) == 1:
            return [(path.stem, AseAtomsAdaptor.get_structure(frames[0]))]  # type: ignore[arg-type]
        return [
            (f"{path.stem}[{i}]", AseAtomsAdaptor.get_structure(a))  # type: ignore[arg-type]
            for i, a in enumerate(frames)  # ase types read(index=":") as Atoms | list[Atoms]
        ]
    if name.endswith(".json"):
        return [(path.stem, _structure_from_json(path))]
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
        except (ArithmeticError, IndexError, KeyError, TypeError) as exc:
            # pymatgen's CIF parser on an incomplete file (e.g. a loop cut after its header)
            raise RecordError(
                str(path), f"pymatgen cannot parse this CIF ({type(exc).__name__}: {exc}); the "
                "file is truncated or malformed"
            ) from None
    if structure is not None:
        for w in caught:  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return structure
    notes, unparsed = [], []
    issue = "Possible issue in CIF file at line:"
    for w in caught:
        for line in str(w.message).splitlines():
            line = line.strip()
            skip = line.startswith(("Issues encountered", "No structure parsed"))
            if line.startswith(issue):  # one warning per word of a line pymatgen cannot parse
                unparsed.append(line[len(issue):].strip())
            elif line and not skip and line not in notes:
                notes.append(line)
    if unparsed:
        notes.insert(0, f"text it cannot parse: {' '.join(unparsed)[:200]!r}")
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
    import warnings

    from pymatgen.core import Lattice
    from pymatgen.io.cif import CifParser

    from matxfer.data.records import MIN_INTERATOMIC_DISTANCE

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already reported by _read_cif
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
            ii, jj = np.unravel_index(np.argmin(d), d.shape)
            if d[ii, jj] < MIN_INTERATOMIC_DISTANCE:
                i, j = sorted((int(ii), int(jj)))
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

    model: PropertyModel | EnsembleModel
    tasks: dict[str, Task]
    settings: GraphSettings
    featurizer: AtomFeaturizer | None = None
    ckpt: dict[str, Any] = field(default_factory=dict)
    #: spglib tolerance (Angstrom) of the point group each tensor prediction is projected
    #: onto (symmetry-forbidden components exactly 0); None keeps the raw model output
    symprec: float | None = 0.01

    @classmethod
    def from_checkpoint(cls, path: str | Path, symprec: float | None = 0.01) -> Predictor:
        """Load a checkpoint file, or a shipped model by name (``matxfer models``)."""
        from matxfer.inference import load_predictor

        model, tasks, settings, feat, ckpt = load_predictor(path)
        return cls(model, tasks, settings, feat, ckpt, symprec)

    @classmethod
    def from_pretrained(cls, name: str, symprec: float | None = 0.01) -> Predictor:
        """A shipped model by name, e.g. ``Predictor.from_pretrained("elastic")``."""
        return cls.from_checkpoint(name, symprec=symprec)

    @property
    def is_ensemble(self) -> bool:
        return hasattr(self.model, "predict_members")

    @property
    def train_elements(self) -> set[str] | None:
        """Elements of the training crystals, None when the checkpoint does not record them."""
        elements = (self.ckpt.get("provenance") or {}).get("train_elements")
        return set(elements) if elements else None

    def unseen_elements(self, structure: Structure, name: str = "") -> list[str] | None:
        """Elements of ``structure`` absent from the training data (warns), or None when the
        checkpoint does not record its training elements."""
        known = self.train_elements
        if known is None:
            return None
        unseen = sorted(
            {e.symbol for e in structure.composition.element_composition} - known
        )
        if unseen:
            log.warning(
                "%s: element(s) %s never occur in the training data of this model; its "
                "prediction is an extrapolation (column unseen_elements)",
                name or structure.composition.reduced_formula, ", ".join(unseen),
            )
        return unseen

    def graph(self, structure: Structure, name: str = "") -> CrystalGraph:
        from matxfer.data.graphs import structure_to_graph

        check_structure(name or structure.composition.reduced_formula, structure)
        return structure_to_graph(structure, self.settings, material_id=name, featurizer=self.featurizer)

    def predict_structures(
        self, structures: list[Structure], names: list[str] | None = None, batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """Predictions with derived quantities for each structure (same order).

        With an ensemble, values are the mean over members (derived quantities are those of
        the mean tensor) and each number has ``<name>_std`` (across members) beside it.
        """
        from matxfer.inference import predict_graphs, predict_members_graphs

        names = names or [s.composition.reduced_formula for s in structures]
        graphs = [self.graph(s, n) for s, n in zip(structures, names)]
        isolated = [self.isolated(s, n) for s, n in zip(structures, names)]
        unseen = [self.unseen_elements(s, n) for s, n in zip(structures, names)]
        members = None
        if self.is_ensemble:
            members = predict_members_graphs(self.model, graphs, batch_size)
            raw = [{k: v.mean(0) for k, v in m.items()} for m in members]
        else:
            raw = predict_graphs(self.model, graphs, batch_size)
        for n, r in zip(names, raw):
            bad = [k for k, v in r.items() if not np.all(np.isfinite(np.asarray(v, dtype=float)))]
            if bad:  # never a NaN in the output, nor a derived quantity of one
                raise ValueError(
                    f"{n}: the model's {', '.join(bad)} prediction is not finite (NaN or inf)"
                )
        tensor_formulas = {
            k: t.formula for k, t in self.tasks.items() if t.kind == TENSOR and t.formula
        }
        symmetry: list[dict[str, Any]] = [{} for _ in graphs]
        if self.symprec is not None and tensor_formulas:
            from matxfer.symmetry import project, project_predictions

            groups = project_predictions(raw, graphs, tensor_formulas, self.symprec)
            symmetry = [
                {"symmetry": {"point_group": pg.symbol, "symprec": pg.symprec, "projected": True}}
                for pg in groups
            ]
            if members is not None:
                for m, pg in zip(members, groups):
                    for name in tensor_formulas:
                        m[name] = np.stack([project(x, pg.rotations) for x in m[name]])
        out = []
        for i, (n, s, iso, r, sym) in enumerate(zip(names, structures, isolated, raw, symmetry)):
            row = {
                "name": n,
                "formula": s.composition.reduced_formula,
                "isolated_atoms": len(iso),
            }
            if unseen[i] is not None:
                row["unseen_elements"] = unseen[i]
            if members is not None:
                row["ensemble_members"] = int(next(iter(members[i].values())).shape[0])
            row.update(sym)
            desc = self.describe(r)
            if members is not None:
                k = next(iter(members[i].values())).shape[0]
                per = [self.describe({t: v[j] for t, v in members[i].items()}) for j in range(k)]
                desc = add_member_std(desc, per)
            row.update(desc)
            out.append(row)
        return out

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
        from matxfer.tensors import cartesian_to_voigt

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
            entry.update(derived_quantities(val, str(task.formula)))
            out[name] = entry
        return out


def elastic_quantities(c: np.ndarray) -> dict[str, Any]:
    """K_VRH, G_VRH, Young's modulus (from K and G, tensor units), homogeneous Poisson ratio,
    universal anisotropy (pymatgen's ``ElasticTensor``) and Born stability (the 6x6 Voigt
    matrix positive definite) of a ``(3, 3, 3, 3)`` stiffness tensor. Quantities that are
    undefined for the tensor (e.g. the anisotropy of a singular one) are NaN."""
    from pymatgen.analysis.elasticity import ElasticTensor

    from matxfer.tensors import elastic_moduli, is_positive_definite

    m = elastic_moduli(c)
    k, g = float(m["k_vrh"]), float(m["g_vrh"])
    et = ElasticTensor(np.asarray(c, dtype=float))
    with np.errstate(all="ignore"):
        young = 9.0 * k * g / (3.0 * k + g) if (3.0 * k + g) != 0 else float("nan")
        try:
            poisson = float(et.homogeneous_poisson)
        except (ZeroDivisionError, FloatingPointError, ValueError):
            poisson = float("nan")
        try:
            anisotropy = float(et.universal_anisotropy)
        except (ZeroDivisionError, FloatingPointError, ValueError, np.linalg.LinAlgError):
            anisotropy = float("nan")
    return {
        "k_vrh": k,
        "g_vrh": g,
        "y_mod": float(young),
        "homogeneous_poisson": poisson,
        "universal_anisotropy": anisotropy,
        "mechanically_stable": bool(is_positive_definite(c)),
    }


def dielectric_quantities(eps: np.ndarray) -> dict[str, Any]:
    """Eigenvalues (ascending), their mean and the anisotropy max/min eigenvalue (NaN when
    the smallest is not positive) of a symmetric ``(3, 3)`` tensor."""
    eig = np.linalg.eigvalsh(0.5 * (eps + np.swapaxes(eps, -1, -2)))
    lo, hi = float(eig[0]), float(eig[-1])
    return {
        "eigenvalues": [float(x) for x in eig],
        "mean_eigenvalue": float(eig.mean()),
        "anisotropy": hi / lo if lo > 0 else float("nan"),
    }


def piezo_quantities(e: np.ndarray) -> dict[str, Any]:
    """eij_max (de Jong 2015 convention) and the unit direction reaching it."""
    from matxfer.tensors import eij_max

    value, direction = eij_max(e, return_direction=True)
    return {"eij_max": float(value), "eij_max_direction": [float(x) for x in direction]}


def derived_quantities(val: np.ndarray, formula: str) -> dict[str, Any]:
    """The derived quantities of a crystal tensor with index ``formula`` (none for others)."""
    if formula == "ijkl=jikl=klij":
        return elastic_quantities(val)
    if formula == "ij=ji":
        return dielectric_quantities(val)
    if formula == "ijk=ikj":
        return piezo_quantities(val)
    return {}


def _std_of(values: list) -> Any:
    """Standard deviation across members of numbers or equal-shaped lists (None otherwise)."""
    if all(isinstance(v, bool) for v in values):
        return None
    if all(isinstance(v, (int, float)) for v in values):
        return float(np.std(np.asarray(values, dtype=float)))
    if all(isinstance(v, list) for v in values):
        try:
            return np.std(np.asarray(values, dtype=float), axis=0).tolist()
        except ValueError:
            return None
    return None


#: entries of a tensor result that get no ``_std`` (unit names, a direction's sign is arbitrary)
_NO_STD = {"units", "eij_max_direction", "voigt"}


def add_member_std(mean: dict[str, Any], members: list[dict[str, Any]]) -> dict[str, Any]:
    """``mean`` (one structure's :meth:`Predictor.describe`) with ``<key>_std`` across the
    members' descriptions beside every number and tensor; booleans get the fraction of
    members where they hold (``<key>_fraction``)."""
    out: dict[str, Any] = {}
    for name, value in mean.items():
        vals = [m[name] for m in members]
        if isinstance(value, dict):
            entry = dict(value)
            for key, v in value.items():
                if key in _NO_STD:
                    continue
                mv = [m[name][key] for m in members]
                if isinstance(v, bool):
                    entry[f"{key}_fraction"] = float(np.mean([bool(x) for x in mv]))
                    continue
                std = _std_of(mv)
                if std is not None:
                    entry[f"{key}_std"] = std
            out[name] = entry
        else:
            out[name] = value
            std = _std_of(vals)
            if std is not None:
                out[f"{name}_std"] = std
    return out


def read_inputs(inputs: list[str | Path]) -> tuple[list[tuple[str, Structure]], list[dict]]:
    """The structures of files and folders as ``(name, structure)``, checked with
    :func:`~matxfer.data.records.check_structure`, and ``{"input", "error"}`` for each file
    that cannot be read or fails the checks (the others are still returned).

    Raises:
        ValueError: no structure file among ``inputs``.
    """
    files = expand_inputs(inputs)
    if not files:
        raise ValueError(f"no structure files found in {[str(i) for i in inputs]}")
    items, errors = [], []
    for f in files:
        try:
            for name, s in read_structures(f):
                check_structure(str(f), s)
                items.append((name if name != f.stem else str(f), s))
        except RecordError as exc:
            errors.append({"input": str(f), "error": exc.reason})
        except Exception as exc:
            errors.append(
                {"input": str(f), "error": f"could not read structure ({type(exc).__name__}: {exc})"}
            )
    return items, errors


def predict_files(
    ckpt: str | Path, inputs: list[str | Path], symprec: float | None = 0.01
) -> tuple[list[dict], list[dict]]:
    """Predict on files/folders; returns (results, errors) where errors name file and reason.

    ``symprec``: tensor predictions are projected onto each crystal's point group found with
    this spglib tolerance (Angstrom); None keeps the raw model output.
    """
    pred = Predictor.from_checkpoint(ckpt, symprec=symprec)
    items, errors = read_inputs(inputs)
    results = []
    for n, s in items:
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
