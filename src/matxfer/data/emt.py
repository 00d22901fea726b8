"""A small, reproducible energy/force dataset computed with ASE's EMT calculator.

EMT (effective-medium theory, Jacobsen, Stoltze and Norskov) is a cheap interatomic
potential for the fcc metals Al, Ni, Cu, Pd, Ag, Pt and Au; ASE ships it. Its energies and
forces are NOT DFT numbers: the data set exists to test and demonstrate energy + force
training end to end without a network or heavy compute. Every frame says so in its info
(``source="ASE EMT (not DFT)"``).

:func:`generate_emt_dataset` draws, from one seeded generator, ``n_configs`` periodic cells:

- lattice: fcc (70 %) or bcc (30 %) conventional cubic cells, repeated to 4-32 atoms
  (fcc: 1x1x1, 2x1x1, 2x2x1, 2x2x2; bcc: 2x1x1, 2x2x1, 2x2x2, 3x2x2);
- composition: a pure element (40 %) or a random binary alloy (60 %: two distinct
  elements, fraction of the first uniform in [0.1, 0.9], sites assigned at random);
- lattice constant: ASE's reference fcc constant (Vegard average by atom fraction for
  alloys; bcc at the same volume per atom), scaled by a factor uniform in [0.97, 1.03];
- strain: the cell is multiplied by ``1 + eps`` with a symmetric ``eps`` of N(0, 0.01)
  entries;
- rattle: Gaussian displacements of every atom with a standard deviation uniform in
  [0.01, 0.12] Angstrom.

Energies (eV per cell) and forces (eV/Angstrom) are written as an extended XYZ file
(gzip-compressed when the name ends in ``.gz``, with a zero time stamp), so the same seed
gives a byte-identical file.

:func:`parse_emt` turns the file into matxfer records with labels ``energy`` (eV per cell)
and ``energy_per_atom``; forces ``[n_atoms, 3]`` are a label when
``targets.TARGET_SHAPES`` knows ``"forces"`` and otherwise travel in ``record.meta["forces"]``
(:func:`record_forces` reads either). The registry holds the dataset as ``emt-metals``;
when its file is not in the data directory it is generated on first use (300
configurations, seed 0, a few seconds) into matxfer's cache directory.
"""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from matxfer.data.records import CrystalRecord, RecordError, make_record
from matxfer.targets import TARGET_SHAPES

log = logging.getLogger(__name__)

#: elements ASE's EMT has parameters for (and that this generator uses)
EMT_ELEMENTS: tuple[str, ...] = ("Cu", "Al", "Ni", "Pd", "Ag", "Pt", "Au")
#: value of the ``source`` info field of every frame
EMT_SOURCE = "ASE EMT (not DFT)"
#: registry name and file of the dataset
EMT_DATASET = "emt-metals"
EMT_FILE = "emt_metals/emt_metals.xyz.gz"
ENERGY = "energy"
ENERGY_PER_ATOM = "energy_per_atom"
FORCES = "forces"

_FCC_REPEATS = ((1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2))
_BCC_REPEATS = ((2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 2, 2))


def _fcc_constant(symbol: str) -> float:
    from ase.data import atomic_numbers, reference_states

    ref = reference_states[atomic_numbers[symbol]]
    if ref.get("symmetry") != "fcc":  # pragma: no cover - all EMT metals are fcc in ASE
        raise ValueError(f"{symbol} has no fcc reference lattice constant in ASE")
    return float(ref["a"])


def _one_config(rng: np.random.Generator, index: int, elements: tuple[str, ...]):
    """Draw and compute one configuration (ASE Atoms with energy and forces)."""
    from ase import Atoms
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    lattice = "fcc" if rng.random() < 0.7 else "bcc"
    if rng.random() < 0.4:
        chosen = [str(rng.choice(elements))]
        fractions = [1.0]
    else:
        pair = rng.choice(len(elements), size=2, replace=False)
        chosen = [elements[int(pair[0])], elements[int(pair[1])]]
        x = float(rng.uniform(0.1, 0.9))
        fractions = [x, 1.0 - x]
    # Vegard's law on the volume per atom, then the cubic constant of the chosen lattice
    vol = sum(f * _fcc_constant(s) ** 3 / 4.0 for s, f in zip(chosen, fractions))
    scale = float(rng.uniform(0.97, 1.03))
    if lattice == "fcc":
        a = (4.0 * vol) ** (1.0 / 3.0) * scale
        basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
        repeats = _FCC_REPEATS[int(rng.integers(len(_FCC_REPEATS)))]
    else:
        a = (2.0 * vol) ** (1.0 / 3.0) * scale
        basis = np.array([[0, 0, 0], [0.5, 0.5, 0.5]])
        repeats = _BCC_REPEATS[int(rng.integers(len(_BCC_REPEATS)))]
    grid = np.array([[i, j, k] for i in range(repeats[0]) for j in range(repeats[1])
                     for k in range(repeats[2])])
    frac = (grid[:, None, :] + basis[None, :, :]).reshape(-1, 3) / np.array(repeats)
    n = len(frac)
    if len(chosen) == 1:
        symbols = chosen * n
    else:
        n_a = int(np.clip(round(fractions[0] * n), 1, n - 1))
        symbols = [chosen[0]] * n_a + [chosen[1]] * (n - n_a)
        symbols = [symbols[i] for i in rng.permutation(n)]
    eps = rng.normal(0.0, 0.01, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    cell = np.diag(np.array(repeats, dtype=float) * a) @ (np.eye(3) + eps)
    sigma = float(rng.uniform(0.01, 0.12))
    pos = frac @ cell + rng.normal(0.0, sigma, size=(n, 3))
    atoms = Atoms(symbols=symbols, positions=pos, cell=cell, pbc=True)
    atoms.calc = EMT()
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(), dtype=float)
    out = Atoms(symbols=symbols, positions=pos, cell=cell, pbc=True)
    out.info.update(
        {
            "source": EMT_SOURCE,
            "config_id": f"emt-{index:05d}",
            "config_type": f"{lattice}-{'-'.join(chosen)}",
            "lattice": lattice,
            "rattle_sigma": round(sigma, 6),
            "volume_scale": round(scale, 6),
        }
    )
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    return out


def generate_emt_dataset(
    path: str | Path,
    n_configs: int = 300,
    seed: int = 0,
    elements: tuple[str, ...] | list[str] = EMT_ELEMENTS,
) -> Path:
    """Generate the EMT energy/force dataset and write it as extended XYZ.

    Args:
        path: output file; ``.gz`` names are gzip-compressed (zero time stamp, no name in
            the header, so identical content gives identical bytes).
        n_configs: number of configurations.
        seed: seed of the single random generator all choices come from.
        elements: elements to draw from (each must be one of :data:`EMT_ELEMENTS`).

    Returns:
        The path written.

    Raises:
        ValueError: ``n_configs < 1`` or an element EMT does not cover.
    """
    from ase.io import write

    if isinstance(n_configs, bool) or int(n_configs) != n_configs or n_configs < 1:
        raise ValueError(f"n_configs must be a positive integer, got {n_configs!r}")
    elements = tuple(str(e) for e in elements)
    bad = [e for e in elements if e not in EMT_ELEMENTS]
    if bad or len(elements) < 2:
        raise ValueError(
            f"elements {list(elements)}: need >= 2 of {list(EMT_ELEMENTS)} (bad: {bad})"
        )
    rng = np.random.default_rng(seed)
    frames = [_one_config(rng, i, elements) for i in range(int(n_configs))]
    for f in frames:
        f.info["seed"] = int(seed)
    buf = io.StringIO()
    write(buf, frames, format="extxyz")
    data = buf.getvalue().encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=0
        ) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)
    log.info("wrote %d EMT configurations to %s", len(frames), path)
    return path


def _read_frames(path: Path):
    from ase.io import read

    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return read(fh, index=":", format="extxyz")
    with open(path, encoding="utf-8") as fh:
        return read(fh, index=":", format="extxyz")


def _result(atoms, name: str):
    calc = getattr(atoms, "calc", None)
    if calc is not None and name in getattr(calc, "results", {}):
        return calc.results[name]
    if name in atoms.info:
        return atoms.info[name]
    if name in atoms.arrays:
        return atoms.arrays[name]
    return None


def parse_emt(paths: list[Path]) -> Iterator[tuple[str, Any]]:
    """Registry parser: ``(entry id, thunk -> (structure, labels, meta))`` per frame."""
    from pymatgen.io.ase import AseAtomsAdaptor

    for path in paths:
        for i, atoms in enumerate(_read_frames(Path(path))):
            entry = str(atoms.info.get("config_id", f"emt-{i:05d}"))

            def build(atoms=atoms, entry=entry):
                energy = _result(atoms, "energy")
                forces = _result(atoms, "forces")
                if energy is None:
                    raise RecordError(entry, "no energy")
                if forces is None:
                    raise RecordError(entry, "no forces")
                n = len(atoms)
                forces = np.asarray(forces, dtype=float)
                if forces.shape != (n, 3) or not np.all(np.isfinite(forces)):
                    raise RecordError(entry, f"forces of shape {forces.shape}, expected ({n}, 3)")
                structure = AseAtomsAdaptor.get_structure(atoms)
                labels: dict[str, Any] = {
                    ENERGY: float(energy),
                    ENERGY_PER_ATOM: float(energy) / n,
                }
                meta: dict[str, Any] = {
                    "source": str(atoms.info.get("source", "")),
                    "config_type": str(atoms.info.get("config_type", "")),
                    "frame": "structure (Cartesian forces)",
                }
                if FORCES in TARGET_SHAPES:
                    labels[FORCES] = forces
                else:
                    meta[FORCES] = forces
                return structure, labels, meta

            yield entry, build


def read_emt_records(path: str | Path) -> list[CrystalRecord]:
    """All records of an EMT file (no registry, no cache); bad frames raise RecordError."""
    return [make_record(entry, *build()) for entry, build in parse_emt([Path(path)])]


def record_forces(record: CrystalRecord) -> np.ndarray:
    """``[n_atoms, 3]`` forces of a record (from its labels or, failing that, its meta).

    Raises:
        ValueError: the record has no forces.
    """
    f = record.labels.get(FORCES, record.meta.get(FORCES))
    if f is None:
        raise ValueError(f"record {record.material_id!r} has no forces")
    return np.asarray(f, dtype=float)


def emt_spec():
    """The :class:`~matxfer.data.registry.DatasetSpec` of ``emt-metals``."""
    from matxfer.data.registry import DatasetSpec

    return DatasetSpec(
        name=EMT_DATASET,
        files=(EMT_FILE,),
        targets={ENERGY: "eV", ENERGY_PER_ATOM: "eV/atom", FORCES: "eV/Angstrom"},
        parser=parse_emt,
        frame="structure frame (Cartesian per-atom forces)",
        citation="Jacobsen, Stoltze, Norskov, Surf. Sci. 366, 394 (1996) (EMT); ASE: Larsen "
        "et al., J. Phys.: Condens. Matter 29, 273002 (2017). Synthetic data, not DFT.",
        source="generated locally: matxfer.data.emt.generate_emt_dataset(<data dir>/"
        f"{EMT_FILE}, n_configs=300, seed=0) with ASE's EMT calculator (not DFT)",
        description="Rattled, strained fcc/bcc cells of Cu, Al, Ni, Pd, Ag, Pt, Au and random "
        "binary alloys (4-32 atoms): EMT energies (eV/cell) and forces (eV/A); not DFT",
        downloads=(),
        has_material_ids=False,
        generator=lambda path: generate_emt_dataset(path, n_configs=300, seed=0),
    )


def register_emt_dataset():
    """Add ``emt-metals`` to the dataset registry (once; later calls return the entry)."""
    from matxfer.data.registry import REGISTRY, register

    if EMT_DATASET in REGISTRY:  # registered with the built-in datasets
        return REGISTRY[EMT_DATASET]
    return register(emt_spec())
