"""Physical and symmetry validation of dataset entries.

Every tensor label is checked against its structure's point group in Cartesian form
(``R·T = T`` for every point-group rotation, to a relative tolerance) and for physical sanity
by the same :func:`matxfer.data.records.label_problems` the loader runs (positive
definiteness, the dataset's plausible ranges; an entry failing those is already reported as
unloadable), and 0 < K_VRH, G_VRH < 500 GPa. Training uses
only the entries that pass and reports how many were dropped. Results are cached on disk
(symmetry analysis costs ~20 ms per structure), keyed by the dataset files, the tolerances
and the validator version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matxfer import keys as K
from matxfer.cache_io import write_text_atomic
from matxfer.data.records import CrystalRecord, LabelRule, label_problems, rule_for
from matxfer.data.registry import LoadedDataset
from matxfer.paths import cache_dir
from matxfer.targets import TARGET_FORMULAS

log = logging.getLogger(__name__)

VALIDATOR_VERSION = 2
#: physical bounds on the moduli (GPa), as used by MatTen and matcalc
MODULUS_BOUNDS = (0.0, 500.0)


@dataclass(frozen=True)
class ValidationSettings:
    """Tolerances of the checks.

    Attributes:
        symprec: pymatgen symmetry precision (Angstrom) for the point group.
        rtol: allowed ``max_R ||R·T - T||_F / ||T||_F``. Unsymmetrised DFT tensors (MP ``raw``)
            carry small symmetry-forbidden components, hence a few percent.
        pd_tol: an eigenvalue must exceed ``pd_tol`` times the largest |eigenvalue|.
    """

    symprec: float = 0.01
    rtol: float = 0.05
    pd_tol: float = 0.0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": VALIDATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


@dataclass
class EntryResult:
    material_id: str
    crystal_system: str
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons


def check_record(
    record: CrystalRecord,
    settings: ValidationSettings,
    rules: dict[str, LabelRule] | None = None,
) -> EntryResult:
    """Run every check on one record; returns the crystal system and the failure reasons.

    ``rules`` are the dataset's label rules (``DatasetSpec.label_rules``; default rules
    otherwise).
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from matxfer.tensors import elastic_moduli, symmetry_error

    reasons: list[str] = []
    tensor_labels = [t for t in record.labels if t in TARGET_FORMULAS and t != K.BORN_CHARGES]
    born = record.labels.get(K.BORN_CHARGES)
    if born is not None:  # per-atom: its plausible range (no point-group check here)
        reasons.extend(label_problems(K.BORN_CHARGES, np.asarray(born), rule_for(K.BORN_CHARGES, rules)))
    crystal_system = "unknown"
    rotations = None
    try:
        sga = SpacegroupAnalyzer(record.structure, symprec=settings.symprec)
        crystal_system = sga.get_crystal_system()
        if tensor_labels:
            # the distinct rotations of spglib's operations, in Cartesian form (a supercell
            # repeats each once per lattice translation, and pymatgen's SymmOp list of a
            # 2,000-atom cell took 20 s to build)
            w = np.asarray(sga.get_symmetry_dataset().rotations)
            _, first = np.unique(w.reshape(len(w), -1), axis=0, return_index=True)
            m = record.structure.lattice.matrix.T
            rotations = np.array([m @ r @ np.linalg.inv(m) for r in w[np.sort(first)]])
    except Exception as exc:  # symmetry analysis failing is itself a finding
        reasons.append(f"symmetry analysis failed: {exc}")

    for name in tensor_labels:
        t = np.asarray(record.labels[name], dtype=float)
        if rotations is not None:
            err = symmetry_error(t, rotations)
            if err > settings.rtol:
                reasons.append(
                    f"{name} breaks the {crystal_system} point-group symmetry "
                    f"(relative error {err:.3g} > {settings.rtol})"
                )
        reasons.extend(label_problems(name, t, rule_for(name, rules), settings.pd_tol))
        if name == K.ELASTIC_TENSOR:
            m = elastic_moduli(t)
            for key in ("k_vrh", "g_vrh"):
                val = m[key]
                lo, hi = MODULUS_BOUNDS
                if not (np.isfinite(val) and lo < val < hi):
                    reasons.append(f"derived {key.upper()} = {val:.4g} GPa outside ({lo:g}, {hi:g})")

    for name in (K.BULK_MODULUS_VRH, K.SHEAR_MODULUS_VRH):
        if name in record.labels:
            val = float(record.labels[name])
            lo, hi = MODULUS_BOUNDS
            if not (lo < val < hi):
                reasons.append(f"{name} = {val:.4g} GPa outside ({lo:g}, {hi:g})")
    return EntryResult(record.material_id, crystal_system, reasons)


@dataclass
class ValidationReport:
    dataset: str
    results: list[EntryResult]
    load_failures: list[tuple[str, str]]

    @property
    def passed_ids(self) -> list[str]:
        return [r.material_id for r in self.results if r.passed]

    @property
    def failed(self) -> list[EntryResult]:
        return [r for r in self.results if not r.passed]

    def to_json(self) -> dict[str, Any]:
        by_sys: dict[str, dict[str, int]] = defaultdict(lambda: {"passed": 0, "failed": 0})
        for r in self.results:
            by_sys[r.crystal_system]["passed" if r.passed else "failed"] += 1
        failures = [{"id": r.material_id, "reason": "; ".join(r.reasons)} for r in self.failed]
        failures += [{"id": i, "reason": f"could not be loaded: {why}"} for i, why in self.load_failures]
        n = len(self.results) + len(self.load_failures)
        return {
            "dataset": self.dataset,
            "n": n,
            "passed": len(self.passed_ids),
            "failed": n - len(self.passed_ids),
            "pass_rate": len(self.passed_ids) / n if n else float("nan"),
            "by_crystal_system": dict(sorted(by_sys.items())),
            "failure_reasons": dict(
                Counter(
                    reason.split(" (")[0].split(" = ")[0]
                    for r in self.failed
                    for reason in r.reasons
                ).most_common()
            ),
            "failures": failures,
        }


def _records_fingerprint(records: list[CrystalRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(r.material_id.encode())
        h.update(np.asarray(r.structure.lattice.matrix, dtype=np.float64).tobytes())
        h.update(np.asarray(r.structure.frac_coords, dtype=np.float64).round(8).tobytes())
        for k in sorted(r.labels):
            h.update(k.encode())
            h.update(np.asarray(r.labels[k], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _rules_key(rules: dict[str, LabelRule]) -> str:
    blob = json.dumps({k: asdict(v) for k, v in sorted(rules.items())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def validate_dataset(
    ds: LoadedDataset,
    settings: ValidationSettings | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> ValidationReport:
    """Validate every record of a loaded dataset (cached on disk by content)."""
    settings = settings or ValidationSettings()
    cache_file = (
        cache_dir()
        / "validation"
        / f"{ds.spec.name}-{settings.key()}-{_rules_key(ds.spec.label_rules)}-"
        f"{_records_fingerprint(ds.records)}.json"
    )
    if use_cache and cache_file.is_file():
        try:
            blob = json.loads(cache_file.read_text())
            results = [EntryResult(**d) for d in blob["results"]]
            return ValidationReport(ds.spec.name, results, [tuple(x) for x in ds.failures])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable validation cache %s", cache_file)
    bar = None
    if progress:
        from matxfer.progress import progress_bar

        bar = progress_bar(f"validating {ds.spec.name}", total=len(ds.records))
    results = []
    for rec in ds.records:
        results.append(check_record(rec, settings, ds.spec.label_rules))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if use_cache:
        try:
            write_text_atomic(cache_file, json.dumps({"results": [asdict(r) for r in results]}))
        except OSError as exc:
            log.warning("could not write validation cache %s: %s", cache_file, exc)
    return ValidationReport(ds.spec.name, results, [tuple(x) for x in ds.failures])


def filter_valid(
    ds: LoadedDataset, settings: ValidationSettings | None = None, progress: bool = False
) -> tuple[LoadedDataset, ValidationReport]:
    """A copy of ``ds`` holding only the records that pass validation, plus the report."""
    report = validate_dataset(ds, settings, progress=progress)
    keep = set(report.passed_ids)
    dropped = [(r.material_id, "; ".join(r.reasons)) for r in report.failed]
    out = LoadedDataset(ds.spec, [r for r in ds.records if r.material_id in keep], ds.failures + dropped)
    if dropped:
        log.info(
            "%s: %d of %d entries failed validation and are dropped",
            ds.spec.name,
            len(dropped),
            len(ds.records),
        )
    return out, report


def write_filtered(report: ValidationReport, path: Path | str) -> Path:
    """Write the ids that passed as a JSON list (usable as an id filter for training)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset": report.dataset, "ids": report.passed_ids}, indent=1))
    return path
