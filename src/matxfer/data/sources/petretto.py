"""Petretto et al.: DFPT phonon / dielectric data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from matxfer import keys as K
from matxfer.data.registry import DatasetSpec, RawEntry, register
from matxfer.data.sources.common import (
    _BORN_RULE,
    _EPS_ELECTRONIC_RULE,
    _U,
    _atoms_to_structure,
    _BadFrame,
    _eps_and_becs,
    _read_extxyz,
)


def _parse_petretto(paths: list[Path]) -> Iterator[RawEntry]:
    for i, atoms in enumerate(_read_extxyz(paths[0])):
        entry = f"petretto-{i:05d}"

        def build(atoms=atoms, entry=entry):
            if isinstance(atoms, _BadFrame):
                atoms.check(entry)
            structure = _atoms_to_structure(atoms)
            labels = _eps_and_becs(atoms, entry, K.DIELECTRIC_ELECTRONIC, "eps", "eps", "becs")
            return structure, labels, {"frame": "structure"}

        yield entry, build


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
