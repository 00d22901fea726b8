"""Matbench phonons: last phonon-DOS peak."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from matxfer.data.registry import DatasetSpec, DownloadSpec, RawEntry, register
from matxfer.data.sources.common import (
    _U,
    _float_or_none,
    _literal,
    _split_json_rows,
    _structure_cls,
)


def _parse_matbench_phonons(paths: list[Path]) -> Iterator[RawEntry]:
    for row in _split_json_rows(paths[0]):
        entry = f"mb-phonons-{int(row['_index']) + 1:04d}"

        def build(row=row):
            structure = _structure_cls().from_dict(_literal(row["structure"]))
            return structure, {"last_phdos_peak": _float_or_none(row.get("last phdos peak"))}, {}

        yield entry, build


# ----------------------------------------------------------------------------------------


register(
    DatasetSpec(
        name="matbench-phonons",
        files=("matbench/matbench_phonons.json.gz",),
        targets={"last_phdos_peak": _U["last_phdos_peak"]},
        parser=_parse_matbench_phonons,
        frame="scalars only",
        citation="Dunn et al., npj Comput. Mater. 6, 138 (2020); Petretto et al. (2018).",
        source="Matbench v0.1 matbench_phonons",
        description="Frequency of the last phonon DOS peak (cm^-1)",
        downloads=(
            DownloadSpec(
                "matbench/matbench_phonons.json.gz",
                "url",
                "https://ml.materialsproject.org/projects/matbench_phonons.json.gz",
            ),
        ),
        has_material_ids=False,
    )
)
