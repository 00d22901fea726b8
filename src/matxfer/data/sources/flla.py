"""The FLLA formation-energy set (2015)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from matxfer import keys as K
from matxfer.data.registry import DatasetSpec, DownloadSpec, RawEntry, register
from matxfer.data.sources.common import (
    _U,
    _float_or_none,
    _literal,
    _read_csv,
    _structure_cls,
)


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
