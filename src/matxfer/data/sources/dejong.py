"""de Jong et al.: elastic tensors (2015) and piezoelectric tensors (2015)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from matxfer import keys as K
from matxfer.data.records import RecordError
from matxfer.data.registry import DatasetSpec, DownloadSpec, RawEntry, register
from matxfer.data.sources.common import (
    _ELASTIC_RULE,
    _ELASTIC_SCALARS,
    _PIEZO_RULE,
    _U,
    _float_or_none,
    _literal,
    _positive_log10,
    _read_csv,
    _split_json_rows,
    _structure_cls,
    _voigt_elastic,
    _voigt_piezo,
    to_ieee_frame,
)


def _parse_dejong_elastic(paths: list[Path]) -> Iterator[RawEntry]:
    for row in _split_json_rows(paths[0]):
        mp_id = str(row["material_id"])

        def build(row=row, mp_id=mp_id):
            structure = to_ieee_frame(_structure_cls().from_dict(_literal(row["structure"])))
            k = _float_or_none(row.get("K_VRH"))
            g = _float_or_none(row.get("G_VRH"))
            labels = {
                K.ELASTIC_TENSOR: _voigt_elastic(mp_id, row["elastic_tensor"]),
                K.BULK_MODULUS_VRH: k,
                K.SHEAR_MODULUS_VRH: g,
                "log10_bulk_modulus_vrh": _positive_log10(k),
                "log10_shear_modulus_vrh": _positive_log10(g),
                "poisson_ratio": _float_or_none(row.get("poisson_ratio")),
            }
            meta = {"frame": "IEEE (conventional cell rotated)", "space_group": row.get("space_group")}
            return structure, labels, meta

        yield mp_id, build


def _parse_dejong_piezo(paths: list[Path]) -> Iterator[RawEntry]:
    df = _read_csv(paths[0], skip_comment=True)
    for _, row in df.iterrows():
        mp_id = str(row["material_id"])

        def build(row=row, mp_id=mp_id):
            cif = row["structure"]
            if not isinstance(cif, str) or not cif.strip():
                raise RecordError(mp_id, "no CIF in the 'structure' column")
            structure = to_ieee_frame(_structure_cls().from_str(cif, fmt="cif"))
            labels = {
                K.PIEZO_TENSOR: _voigt_piezo(mp_id, row["piezoelectric_tensor"]),
                K.EIJ_MAX: _float_or_none(row.get("eij_max")),
            }
            meta = {
                "frame": "IEEE (conventional cell rotated)",
                "point_group": row.get("point_group"),
                "space_group": row.get("space_group"),
            }
            return structure, labels, meta

        yield mp_id, build


register(
    DatasetSpec(
        name="dejong-elastic-2015",
        files=("matminer_figshare/elastic_tensor_2015.json.gz",),
        targets={K.ELASTIC_TENSOR: _U[K.ELASTIC_TENSOR], **_ELASTIC_SCALARS, "poisson_ratio": "-"},
        parser=_parse_dejong_elastic,
        frame="IEEE-frame tensor; the conventional standard cell is rotated into the IEEE frame",
        citation="de Jong et al., 'Charting the complete elastic properties of inorganic "
        "crystalline compounds', Sci. Data 2, 150009 (2015). CC BY 4.0.",
        source="matminer dataset elastic_tensor_2015 (figshare)",
        description="de Jong 2015 elastic tensors (IEEE, symmetrised)",
        downloads=(
            DownloadSpec(
                "matminer_figshare/elastic_tensor_2015.json.gz",
                "matminer",
                "elastic_tensor_2015",
            ),
        ),
        label_rules={K.ELASTIC_TENSOR: _ELASTIC_RULE},
    )
)


register(
    DatasetSpec(
        name="dejong-piezo-2015",
        files=("matminer_v0.4.1/piezoelectric_tensor.csv.gz",),
        targets={K.PIEZO_TENSOR: _U[K.PIEZO_TENSOR], K.EIJ_MAX: _U[K.EIJ_MAX]},
        parser=_parse_dejong_piezo,
        frame="IEEE-frame tensor; the conventional standard cell is rotated into the IEEE frame",
        citation="de Jong et al., 'A database to enable discovery and design of piezoelectric "
        "materials', Sci. Data 2, 150053 (2015).",
        source="matminer==0.4.1 (PyPI sdist), matminer/datasets/piezoelectric_tensor.csv",
        description="DFPT-PBE piezoelectric stress tensors e_ij (C/m^2), total",
        downloads=(
            DownloadSpec(
                "matminer_v0.4.1/piezoelectric_tensor.csv.gz",
                "pypi-sdist",
                "matminer==0.4.1:matminer/datasets/piezoelectric_tensor.csv",
            ),
        ),
        label_rules={K.PIEZO_TENSOR: _PIEZO_RULE},
    )
)
