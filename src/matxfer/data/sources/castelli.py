"""Castelli et al.: cubic perovskites (CDVAE perov_5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from matxfer.data.registry import DatasetSpec, DownloadSpec, RawEntry, register
from matxfer.data.sources.common import (
    _float_or_none,
    _read_csv,
    _structure_cls,
)


def _parse_castelli(paths: list[Path]) -> Iterator[RawEntry]:
    for path in paths:
        split = path.name.split(".")[0]
        df = _read_csv(path, skip_comment=False)
        for _, row in df.iterrows():
            entry = f"perov5-{int(row['material_id'])}"

            def build(row=row, split=split):
                structure = _structure_cls().from_str(row["cif"], fmt="cif")
                labels = {
                    "formation_energy": _float_or_none(row.get("heat_ref")),
                    "band_gap_direct": _float_or_none(row.get("dir_gap")),
                    "band_gap_indirect": _float_or_none(row.get("ind_gap")),
                }
                return structure, labels, {"split": split}

            yield entry, build


_CDVAE_URL = "https://raw.githubusercontent.com/txie-93/cdvae/main/data/perov_5/"
register(
    DatasetSpec(
        name="castelli-perovskites",
        files=("cdvae_perov5_partial/val.csv.gz", "cdvae_perov5_partial/test.csv.gz"),
        targets={
            "formation_energy": "eV/cell",
            "band_gap_direct": "eV",
            "band_gap_indirect": "eV",
        },
        parser=_parse_castelli,
        frame="scalars only (cubic ABX3, 5-atom cells)",
        citation="Castelli et al., Energy Environ. Sci. 5, 5814 and 9034 (2012); CDVAE perov_5 "
        "splits (Xie et al., ICLR 2022).",
        source=_CDVAE_URL + "{val,test}.csv",
        description="Castelli cubic perovskites: heat of formation (heat_ref, eV per 5-atom "
        "cell) and GLLB-SC gaps (partial: val+test splits)",
        downloads=(
            DownloadSpec(
                "cdvae_perov5_partial/val.csv.gz",
                "url",
                _CDVAE_URL + "val.csv",
                None,
            ),
            DownloadSpec(
                "cdvae_perov5_partial/test.csv.gz",
                "url",
                _CDVAE_URL + "test.csv",
                None,
            ),
        ),
        has_material_ids=False,
    )
)
