"""Zero-shot elastic tensors from a universal interatomic potential.

A universal potential already encodes stiffness: strain a crystal, relax what the strain
leaves free, read the stress, and fit ``sigma = C : epsilon``. The strain set, the
strain-stress fit and the relaxations are matcalc's :class:`matcalc.ElasticityCalc` (with
pymatgen's ``DeformedStructureSet``); this module chooses the settings, runs it per crystal
with a clear per-crystal error, and keeps every result in an append-only store so that an
interrupted run loses nothing and a rerun computes only what is missing.

Settings (:class:`ZeroShotSettings`):

- the parent structure is first relaxed with the potential (cell and ions, ``fmax``), so the
  tensor is taken at the potential's own equilibrium, as DFT tensors are taken at DFT's;
- ``relax_ions=True`` (default) relaxes the internal coordinates of every strained cell at
  fixed cell: the *relaxed-ion* tensor, which is what the Materials Project labels are.
  ``relax_ions=False`` gives the clamped-ion tensor (several times cheaper, stiffer for
  crystals with internal degrees of freedom);
- four normal (+-0.5 %, +-1 %) and four shear (+-3 %, +-6 %) strains per Voigt component.

Results are Voigt ``(6, 6)`` matrices in GPa in the Cartesian frame of the structure as given
(the relaxation changes cell lengths and angles, not the orientation).

Requires the ``zeroshot`` extra (``pip install matxfer[zeroshot]``: matcalc) and the potential's
own extra (``sevennet`` or ``chgnet``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matxfer.errors import MissingDependencyError

log = logging.getLogger(__name__)

#: potentials a zero-shot tensor can come from -> what they are
POTENTIALS = {
    "sevennet-0": "SevenNet-0 (11Jul2024) from the sevenn wheel",
    "chgnet-0.3.0": "CHGNet 0.3.0 from the chgnet wheel",
}
INSTALL_HINT = "pip install matxfer[zeroshot]"
#: bump when the stored layout or the computation changes
FORMAT = 1


@dataclass(frozen=True)
class ZeroShotSettings:
    """How a zero-shot elastic tensor is computed (part of the store's key)."""

    potential: str = "sevennet-0"
    relax_ions: bool = True
    fmax: float = 0.05
    norm_strains: tuple[float, ...] = (-0.01, -0.005, 0.005, 0.01)
    shear_strains: tuple[float, ...] = (-0.06, -0.03, 0.03, 0.06)

    def __post_init__(self) -> None:
        if self.potential not in POTENTIALS:
            raise ValueError(f"unknown potential {self.potential!r}; one of {sorted(POTENTIALS)}")
        if not self.fmax > 0:
            raise ValueError(f"fmax must be > 0, got {self.fmax}")

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "format": FORMAT}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def mode(self) -> str:
        return "relaxed-ion" if self.relax_ions else "clamped-ion"


def make_calculator(potential: str):
    """The potential's ASE calculator (CPU unless a GPU is visible)."""
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if potential == "sevennet-0":
            from sevenn.calculator import SevenNetCalculator

            return SevenNetCalculator("7net-0", device=device)
        if potential == "chgnet-0.3.0":
            from chgnet.model import CHGNet
            from chgnet.model.dynamics import CHGNetCalculator

            return CHGNetCalculator(CHGNet.load(model_name="0.3.0", verbose=False), use_device=device)
    except ImportError as exc:
        extra = "sevennet" if potential.startswith("sevennet") else "chgnet"
        raise MissingDependencyError(
            f"zero-shot tensors from {potential} need its package: pip install matxfer[{extra}] "
            f"(import failed with: {exc})"
        ) from exc
    raise ValueError(f"unknown potential {potential!r}; one of {sorted(POTENTIALS)}")


def structure_hash(structure) -> str:
    """Hash of species, lattice and fractional coordinates (an edited entry misses the store)."""
    h = hashlib.sha256()
    h.update(" ".join(s.symbol for s in structure.species).encode())
    h.update(np.round(np.asarray(structure.lattice.matrix, dtype=np.float64), 8).tobytes())
    h.update(np.round(np.asarray(structure.frac_coords, dtype=np.float64), 8).tobytes())
    return h.hexdigest()[:16]


class ZeroShotStore:
    """Append-only JSON-lines store of zero-shot results, one line per crystal.

    Each line is written and flushed as soon as its crystal is done, so a killed run keeps
    everything before it; a truncated last line (a kill mid-write) is ignored on reading.
    Failures are stored too (with their message), so a rerun does not retry them unless
    asked (``retry_failed``).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            with open(self.path) as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(row, dict) and "id" in row:
                        self.entries[str(row["id"])] = row

    @classmethod
    def for_dataset(cls, name: str, settings: ZeroShotSettings, root: Path | None = None) -> ZeroShotStore:
        if root is None:
            from matxfer.paths import cache_dir

            root = cache_dir()
        return cls(Path(root) / "zeroshot" / f"{name}-{settings.potential}-{settings.mode}-{settings.key()}.jsonl")

    def get(self, material_id: str, structure=None) -> dict[str, Any] | None:
        row = self.entries.get(material_id)
        if row is None or (structure is not None and row.get("structure") != structure_hash(structure)):
            return None
        return row

    def add(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, allow_nan=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[str(row["id"])] = row


def _check_elements(structure, calculator) -> str | None:
    """The elements a SevenNet/CHGNet calculator has no parameters for (None: all known)."""
    known = None
    model = getattr(calculator, "model", None)
    chem = getattr(model, "type_map", None) or getattr(calculator, "type_map", None)
    if isinstance(chem, dict):
        known = set(chem)
    if known is None:
        return None
    from pymatgen.core import Element

    missing = sorted({s.symbol for s in structure.species if Element(s.symbol).Z not in known})
    return f"the potential has no parameters for {', '.join(missing)}" if missing else None


def elastic_tensor(structure, calculator, settings: ZeroShotSettings) -> dict[str, Any]:
    """One crystal's zero-shot elastic tensor: ``{voigt (6x6 GPa), r2, warnings}``.

    Raises whatever the potential or the fit raises; :func:`compute` turns it into a stored
    per-crystal error.
    """
    try:
        from matcalc import ElasticityCalc
    except ImportError as exc:
        raise MissingDependencyError(f"zero-shot elastic tensors need matcalc: {INSTALL_HINT}") from exc
    problem = _check_elements(structure, calculator)
    if problem:
        raise ValueError(problem)
    calc = ElasticityCalc(
        calculator,
        norm_strains=settings.norm_strains,
        shear_strains=settings.shear_strains,
        fmax=settings.fmax,
        relax_structure=True,
        relax_deformed_structures=settings.relax_ions,
        units_GPa=True,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = calc.calc(structure.copy())
    voigt = np.asarray(out["elastic_tensor"].voigt, dtype=np.float64)
    if not np.all(np.isfinite(voigt)):
        raise ValueError("the strain-stress fit gave a non-finite tensor")
    notes = sorted({str(w.message).split(".")[0] for w in caught if "R²" in str(w.message) or "converge" in str(w.message).lower()})
    return {"voigt": voigt, "r2": float(out.get("r2_score_mean", math.nan)), "warnings": notes}


def compute(
    items: Iterable[tuple[str, Any]],
    settings: ZeroShotSettings,
    store: ZeroShotStore,
    retry_failed: bool = False,
    progress: bool = True,
    calculator=None,
) -> dict[str, dict[str, Any]]:
    """Zero-shot tensors of ``(material_id, structure)`` pairs, from the store where present.

    Returns id -> stored row: ``{"id", "voigt" (6x6 list, GPa) or None, "error", "seconds",
    "r2", "warnings", "structure"}``. One crystal that fails (an element the potential lacks,
    a relaxation that breaks) gets its error and the others go on. ``calculator``: an ASE
    calculator to use instead of ``settings.potential``'s (the store still carries the
    settings' name).
    """
    from matxfer.progress import progress_bar

    items = list(items)
    todo = []
    for mid, s in items:
        row = store.get(mid, s)
        if row is None or (retry_failed and row.get("error")):
            todo.append((mid, s))
    if todo and calculator is None:
        calculator = make_calculator(settings.potential)
    bar = progress_bar(f"zero-shot elastic tensors ({settings.potential}, {settings.mode})",
                       total=len(todo), disable=None if progress else True, unit="crystal")
    try:
        for mid, s in todo:
            t0 = time.perf_counter()
            row: dict[str, Any] = {"id": mid, "structure": structure_hash(s), "voigt": None, "error": None}
            try:
                res = elastic_tensor(s, calculator, settings)
                row["voigt"] = res["voigt"].round(6).tolist()
                row["r2"] = res["r2"] if math.isfinite(res["r2"]) else None
                row["warnings"] = res["warnings"]
            except MissingDependencyError:
                raise
            except Exception as exc:  # noqa: BLE001 - one crystal's failure is recorded, not fatal
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
                log.warning("zero-shot elastic tensor of %s failed: %s", mid, row["error"])
            row["seconds"] = round(time.perf_counter() - t0, 3)
            row["n_atoms"] = len(s)
            store.add(row)
            bar.update(1)
    finally:
        bar.close()
    return {mid: store.entries[mid] for mid, _ in items if mid in store.entries}


def user_store(settings: ZeroShotSettings, root: Path | None = None) -> ZeroShotStore:
    """The store of zero-shot results on a user's own structure files (keyed by the name the
    structure is reported under and its structure hash, so an edited file is recomputed)."""
    return ZeroShotStore.for_dataset("files", settings, root)


def zeroshot_files(
    inputs: list[str | Path],
    settings: ZeroShotSettings,
    store: ZeroShotStore | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    calculator=None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Zero-shot elastic tensors of structure files and folders, like ``matxfer predict``.

    Returns ``(results, errors)``: each result has the Voigt (6x6) and Cartesian
    (3x3x3x3) tensor in GPa and the derived quantities of
    :func:`matxfer.predict.elastic_quantities` (K/G/E VRH, Poisson ratio, universal
    anisotropy, Born stability); a file that cannot be read, a structure that fails the
    structure checks and a crystal the potential cannot handle each get an entry in
    ``errors`` (``{"input", "error"}``) and the others go on. Results are kept in ``store``
    (default :func:`user_store`), so a rerun computes only what is missing.
    """
    from matxfer.predict import elastic_quantities, read_inputs
    from matxfer.tensors import voigt_to_cartesian

    items, errors = read_inputs(inputs)
    store = store if store is not None else user_store(settings)
    rows = compute(items, settings, store, retry_failed=retry_failed, progress=progress,
                   calculator=calculator) if items else {}
    results = []
    for name, s in items:
        row = rows.get(name)
        if row is None or row.get("voigt") is None:
            err = (row or {}).get("error") or "no result"
            errors.append({"input": name, "error": f"zero-shot elastic tensor failed: {err}"})
            continue
        voigt = np.asarray(row["voigt"], dtype=float)
        cart = np.asarray(voigt_to_cartesian(voigt, 4), dtype=float)
        results.append({
            "name": name,
            "formula": s.composition.reduced_formula,
            "n_atoms": len(s),
            "potential": settings.potential,
            "mode": settings.mode,
            "seconds": row.get("seconds"),
            "fit_r2": row.get("r2"),
            "elastic_tensor": {"voigt": voigt.tolist(), "cartesian": cart.tolist(),
                               "units": "GPa", **elastic_quantities(cart)},
        })
    return results, errors
