"""MACE-Field: ionic dielectric tensors and Born charges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from matxfer import keys as K
from matxfer.data.registry import DatasetSpec, DownloadSpec, RawEntry, register
from matxfer.data.sources.common import (
    _BORN_RULE,
    _EPS_IONIC_RULE,
    _U,
    _atoms_to_structure,
    _BadFrame,
    _eps_and_becs,
    _read_extxyz,
)


def _parse_macefield(paths: list[Path]) -> Iterator[RawEntry]:
    for path in paths:
        split = "test" if "test" in path.name else "valid"
        for i, atoms in enumerate(_read_extxyz(path)):
            entry = f"macefield-{split}-{i:04d}"

            def build(atoms=atoms, entry=entry, split=split):
                if isinstance(atoms, _BadFrame):
                    atoms.check(entry)
                structure = _atoms_to_structure(atoms)
                labels = _eps_and_becs(atoms, entry, K.DIELECTRIC_IONIC, "REF_dielectric_ionic",
                                       "eps_ionic", "REF_becs")
                return structure, labels, {"frame": "structure", "split": split}

            yield entry, build


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
