"""Materials Project elasticity (2024 database state) and the 2025 binaries set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from matxfer import keys as K
from matxfer.data.registry import DatasetSpec, DownloadSpec, RawEntry, register
from matxfer.data.sources.common import (
    _ELASTIC_RULE,
    _ELASTIC_SCALARS,
    _U,
    _float_or_none,
    _load_json,
    _positive_log10,
    _structure_cls,
    _voigt_elastic,
    to_ieee_frame,
)


def _parse_mp_elastic_2024(paths: list[Path]) -> Iterator[RawEntry]:
    docs = _load_json(paths[0])
    for mp_id, doc in docs.items():

        def build(doc=doc, mp_id=mp_id):
            structure = _structure_cls().from_dict(doc["structure"])
            labels: dict[str, Any] = {}
            et = doc.get("elastic_tensor") or {}
            frame = "structure (raw tensor)"
            if et.get("ieee_format") is not None:
                # MP's symmetrised IEEE-frame tensor with the structure rotated into that
                # frame: consistent with the point group for every crystal system, where the
                # unsymmetrised `raw` tensor disagrees with the stored structure for most
                # trigonal and many hexagonal entries (the data README, section 1a)
                structure = to_ieee_frame(structure)
                labels[K.ELASTIC_TENSOR] = _voigt_elastic(mp_id, et["ieee_format"])
                frame = "IEEE (conventional cell rotated, ieee_format tensor)"
            elif et.get("raw") is not None:
                labels[K.ELASTIC_TENSOR] = _voigt_elastic(mp_id, et["raw"])
            k = _float_or_none((doc.get("bulk_modulus") or {}).get("vrh"))
            g = _float_or_none((doc.get("shear_modulus") or {}).get("vrh"))
            labels[K.BULK_MODULUS_VRH] = k
            labels[K.SHEAR_MODULUS_VRH] = g
            labels["log10_bulk_modulus_vrh"] = _positive_log10(k)
            labels["log10_shear_modulus_vrh"] = _positive_log10(g)
            return structure, labels, {"frame": frame}

        yield mp_id, build


def _parse_mp_binaries(paths: list[Path]) -> Iterator[RawEntry]:
    for doc in _load_json(paths[0]):
        mp_id = str(doc["mp_id"])

        def build(doc=doc):
            structure = _structure_cls().from_dict(doc["structure"])
            k = _float_or_none(doc.get("bulk_modulus_vrh"))
            g = _float_or_none(doc.get("shear_modulus_vrh"))
            labels = {
                K.BULK_MODULUS_VRH: k,
                K.SHEAR_MODULUS_VRH: g,
                "log10_bulk_modulus_vrh": _positive_log10(k),
                "log10_shear_modulus_vrh": _positive_log10(g),
            }
            return structure, labels, {}

        yield mp_id, build


register(
    DatasetSpec(
        name="mp-elastic-2024",
        files=("mp_elasticity_2024_mp_tests/mp_elasticity_conventional_4-9-24.json.gz",),
        targets={K.ELASTIC_TENSOR: _U[K.ELASTIC_TENSOR], **_ELASTIC_SCALARS},
        parser=_parse_mp_elastic_2024,
        frame="`ieee_format` tensor paired with the conventional structure rotated into the IEEE "
        "frame (`raw` with the stored structure where no IEEE tensor exists)",
        citation="de Jong et al., Sci. Data 2, 150009 (2015); Jain et al., APL Mater. 1, 011002 "
        "(2013). Materials Project elasticity, database state 2024-04-09. CC BY 4.0.",
        source="Materials Project elasticity API (emmet ElasticityDoc), conventional standard "
        "cells; mirrored in github.com/melo-gonzo/mp_tests",
        description="Materials Project elastic tensors (6x6 Voigt, GPa) with K/G (V/R/VRH)",
        downloads=(
            DownloadSpec(
                "mp_elasticity_2024_mp_tests/mp_elasticity_conventional_4-9-24.json.gz",
                "mp-api",
                "elasticity",
            ),
        ),
        label_rules={K.ELASTIC_TENSOR: _ELASTIC_RULE},
    )
)


register(
    DatasetSpec(
        name="mp-elastic-binaries-2025",
        files=("matcalc_mp_elasticity/mp-binary-pbe-elasticity-2025.1.json.gz",),
        targets=dict(_ELASTIC_SCALARS),
        parser=_parse_mp_binaries,
        frame="scalars only",
        citation="Materials Project (Jan 2025) binary elastic moduli, matcalc benchmark data "
        "(materialsvirtuallab/matcalc). CC BY 4.0.",
        source="https://raw.githubusercontent.com/materialsvirtuallab/matcalc/main/"
        "benchmark_data/mp-binary-pbe-elasticity-2025.1.json.gz",
        description="MP binaries: K_VRH and G_VRH (filtered 0 < K, G < 500 GPa upstream)",
        downloads=(
            DownloadSpec(
                "matcalc_mp_elasticity/mp-binary-pbe-elasticity-2025.1.json.gz",
                "url",
                "https://raw.githubusercontent.com/materialsvirtuallab/matcalc/main/"
                "benchmark_data/mp-binary-pbe-elasticity-2025.1.json.gz",
            ),
        ),
    )
)
