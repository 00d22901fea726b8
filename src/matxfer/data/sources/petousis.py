"""Petousis et al. (2017): DFPT dielectric tensors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from matxfer import keys as K
from matxfer.data.registry import DatasetSpec, DownloadSpec, RawEntry, register
from matxfer.data.sources.common import (
    _EPS_ELECTRONIC_RULE,
    _EPS_IONIC_RULE,
    _EPS_TOTAL_RULE,
    _U,
    _float_or_none,
    _matrix3,
    _split_json_rows,
    _structure_from_dict,
)


def _parse_petousis(paths: list[Path]) -> Iterator[RawEntry]:
    for row in _split_json_rows(paths[0]):
        mp_id = str(row["material_id"])

        def build(row=row, mp_id=mp_id):
            structure = _structure_from_dict(mp_id, row["structure"])
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
