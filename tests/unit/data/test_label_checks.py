"""One label-check path for every tensor dataset: small files in the formats of the real
ones, loaded through the real parsers, with a NaN, an implausible component and an
asymmetric tensor among good rows."""

import gzip
import json
import logging

import numpy as np
import pandas as pd
import pytest

from matxfer import keys as K
from matxfer.data.records import RecordError, make_record
from matxfer.data.registry import REGISTRY, get_spec, load_dataset

TENSOR_DATASETS = [
    "mp-elastic-2024",
    "dejong-elastic-2015",
    "petousis-dielectric-2017",
    "dejong-piezo-2015",
    "macefield-dielectric-ionic",
    "petretto-dielectric",
]


def _write_split_json(path, cols, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"columns": cols, "index": list(range(len(rows))), "data": rows}
    with gzip.open(path, "wt") as fh:
        json.dump(blob, fh)


def _monty(a):
    return {"@module": "numpy", "@class": "array", "dtype": "float64", "data": np.asarray(a).tolist()}


def _si_voigt():
    c = np.zeros((6, 6))
    c[:3, :3] = 64.0
    np.fill_diagonal(c[:3, :3], 166.0)
    c[3, 3] = c[4, 4] = c[5, 5] = 80.0
    return c


def test_every_tensor_dataset_declares_ranges_with_a_reason():
    for name in TENSOR_DATASETS:
        spec = get_spec(name)
        tensor_targets = {t for t in spec.targets if t in (
            K.ELASTIC_TENSOR, K.DIELECTRIC_TOTAL, K.DIELECTRIC_ELECTRONIC, K.DIELECTRIC_IONIC,
            K.PIEZO_TENSOR, K.BORN_CHARGES)}
        assert tensor_targets <= set(spec.label_rules), (name, tensor_targets - set(spec.label_rules))
        for label, rule in spec.label_rules.items():
            assert rule.reason, (name, label)
            assert rule.eig_max is not None or rule.abs_max is not None, (name, label)
    assert set(TENSOR_DATASETS) <= set(REGISTRY)


def test_petousis_nan_huge_and_asymmetric_rows(tmp_path, si, caplog):
    cols = ["material_id", "structure", "e_total", "e_electronic", "band_gap", "n"]
    eye = np.eye(3).tolist()
    eps = (np.eye(3) * 12.0).tolist()
    nan = [[float("nan"), 0.0, 0.0], [0.0, 12.0, 0.0], [0.0, 0.0, 12.0]]
    huge = (np.eye(3) * 1e6).tolist()
    asym = [[12.0, 3.0, 0.0], [0.0, 12.0, 0.0], [0.0, 0.0, 12.0]]
    # str(list) writes NaN as `nan`, as the tensors of the real file are Python-literal strings
    rows = [
        ["mp-1", si.as_dict(), str(eps), str(eye), 1.0, 1.0],
        ["mp-nan", si.as_dict(), str(nan), str(eye), 1.0, 1.0],
        ["mp-huge", si.as_dict(), str(huge), str(eye), 1.0, 1.0],
        ["mp-asym", si.as_dict(), str(asym), str(eye), 1.0, 1.0],
        ["mp-garbled", si.as_dict(), "[[1, 2], oops", str(eye), 1.0, 1.0],
        ["mp-2", si.as_dict(), str(eps), str(eye), 1.0, 1.0],
    ]
    _write_split_json(tmp_path / "matminer_figshare/dielectric_constant.json.gz", cols, rows)
    with caplog.at_level(logging.WARNING, logger="matxfer"):
        ds = load_dataset("petousis-dielectric-2017", root=tmp_path)
    assert ds.ids == ["mp-1", "mp-2"]
    reasons = dict(ds.failures)
    assert set(reasons) == {"mp-nan", "mp-huge", "mp-asym", "mp-garbled"}
    assert "'dielectric_total' contains NaN or inf" in reasons["mp-nan"]
    assert "malformed node" not in reasons["mp-nan"]
    assert "dielectric_total eigenvalue 1e+06 above the plausible maximum 1000" in reasons["mp-huge"]
    assert "violates the index symmetry ij=ji" in reasons["mp-asym"]
    assert "cannot read" in reasons["mp-garbled"] and "e_total" in reasons["mp-garbled"]
    # the log line names dataset, entry and problem
    assert "petousis-dielectric-2017: mp-nan: label 'dielectric_total' contains NaN" in caplog.text


def test_dejong_elastic_nan_huge_asymmetric_and_unstable(tmp_path, si):
    cols = ["material_id", "structure", "elastic_tensor", "K_VRH", "G_VRH", "poisson_ratio", "space_group"]
    good = _si_voigt()
    nan = good.copy()
    nan[3, 3] = np.nan
    huge = good.copy()
    huge[0, 0] = 1e6
    asym = good.copy()
    asym[0, 1] = 120.0
    unstable = good.copy()
    unstable[3, 3] = -5.0
    rows = [
        [mid, si.as_dict(), _monty(c), 98.0, 66.0, 0.22, 227]
        for mid, c in [("mp-1", good), ("mp-nan", nan), ("mp-huge", huge), ("mp-asym", asym),
                       ("mp-unstable", unstable), ("mp-2", good)]
    ]
    _write_split_json(tmp_path / "matminer_figshare/elastic_tensor_2015.json.gz", cols, rows)
    ds = load_dataset("dejong-elastic-2015", root=tmp_path)
    assert ds.ids == ["mp-1", "mp-2"]
    reasons = dict(ds.failures)
    assert "'elastic_tensor' contains NaN or inf" in reasons["mp-nan"]
    assert "elastic_tensor eigenvalue 1e+06 GPa above the plausible maximum 3000" in reasons["mp-huge"]
    assert "diamond" in reasons["mp-huge"]  # the rule's reason travels with the message
    assert "violates the index symmetry ijkl=jikl=klij" in reasons["mp-asym"]
    assert "elastic_tensor not positive definite" in reasons["mp-unstable"]


def test_mp_elastic_2024_huge_component(tmp_path, si):
    good = _si_voigt()
    huge = good.copy()
    huge[1, 1] = 2.8e14
    docs = {
        mid: {
            "material_id": mid,
            "structure": si.as_dict(),
            "elastic_tensor": {"raw": c.tolist(), "ieee_format": c.tolist()},
            "bulk_modulus": {"vrh": 98.0},
            "shear_modulus": {"vrh": 66.0},
        }
        for mid, c in [("mp-1", good), ("mp-huge", huge)]
    }
    path = tmp_path / "mp_elasticity_2024_mp_tests/mp_elasticity_conventional_4-9-24.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as fh:
        json.dump(docs, fh)
    ds = load_dataset("mp-elastic-2024", root=tmp_path)
    assert ds.ids == ["mp-1"]
    assert "above the plausible maximum 3000" in dict(ds.failures)["mp-huge"]


def test_piezo_csv_nan_and_huge(tmp_path, si):
    cif = si.to(fmt="cif")
    zero = np.zeros((3, 6)).tolist()
    nan = np.zeros((3, 6))
    nan[0, 3] = np.nan
    huge = np.zeros((3, 6))
    huge[0, 3] = 1e6
    df = pd.DataFrame(
        {
            "material_id": ["mp-1", "mp-nan", "mp-huge", "mp-2"],
            "piezoelectric_tensor": [str(zero), str(nan.tolist()), str(huge.tolist()), str(zero)],
            "eij_max": [0.0, 0.0, 1e6, 0.0],
            "structure": [cif] * 4,
            "point_group": ["m-3m"] * 4,
            "space_group": [227] * 4,
        }
    )
    path = tmp_path / "matminer_v0.4.1/piezoelectric_tensor.csv.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as fh:
        fh.write("# ref: a test file in the layout of matminer's piezoelectric_tensor.csv\n")
        df.to_csv(fh, index=False)
    ds = load_dataset("dejong-piezo-2015", root=tmp_path)
    assert ds.ids == ["mp-1", "mp-2"]
    reasons = dict(ds.failures)
    assert "'piezo_tensor' contains NaN or inf" in reasons["mp-nan"]
    assert "piezo_tensor component 1e+06 C/m^2 above the plausible maximum |100|" in reasons["mp-huge"]


def _write_macefield(path, frames):
    lines = []
    for eps, becs in frames:
        cell = np.eye(3) * 5.64
        lat = " ".join(f"{x:.6g}" for x in cell.ravel())
        e = " ".join(f"{x:.6g}" for x in np.asarray(eps).ravel())
        lines.append("2")
        lines.append(f'Lattice="{lat}" Properties=species:S:1:pos:R:3:REF_becs:R:9 '
                     f'REF_dielectric_ionic="{e}" pbc="T T T"')
        for s, p, b in zip(["Na", "Cl"], [[0, 0, 0], [2.82, 2.82, 2.82]], becs):
            lines.append(" ".join([s, *(f"{x:.6g}" for x in p), *(f"{x:.6g}" for x in np.ravel(b))]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def test_macefield_nan_huge_and_asymmetric(tmp_path):
    z = np.eye(3) * 1.1
    good = (np.eye(3) * 3.0, [z, -z])
    asym_eps = np.eye(3) * 3.0
    asym_eps[0, 1] = 1.5
    frames_valid = [
        good,
        (np.full((3, 3), np.nan), [z, -z]),  # 0001: NaN ionic dielectric
        (np.eye(3) * 1e6, [z, -z]),  # 0002: implausible ionic dielectric
        (asym_eps, [z, -z]),  # 0003: asymmetric
        (np.eye(3) * 3.0, [z * 1e3, -z * 1e3]),  # 0004: implausible Born charges
    ]
    _write_macefield(tmp_path / "mace_field_mp_dielectric/dielectric-valid.xyz.gz", frames_valid)
    _write_macefield(tmp_path / "mace_field_mp_dielectric/dielectric-test.xyz.gz", [good])
    ds = load_dataset("macefield-dielectric-ionic", root=tmp_path)
    assert ds.ids == ["macefield-valid-0000", "macefield-test-0000"]
    reasons = dict(ds.failures)
    assert "contains NaN or inf" in reasons["macefield-valid-0001"]
    assert "dielectric_ionic eigenvalue 1e+06 above the plausible maximum 1000" in reasons["macefield-valid-0002"]
    assert "index symmetry" in reasons["macefield-valid-0003"]
    assert "born_charges component 1100 e above the plausible maximum |30|" in reasons["macefield-valid-0004"]


def test_record_error_names_dataset_entry_and_problem(si):
    with pytest.raises(RecordError) as exc:
        make_record("mp-9", si, {K.DIELECTRIC_TOTAL: -np.eye(3)}, dataset="some-set")
    assert str(exc.value).startswith("some-set: mp-9: dielectric_total not positive definite")


def test_data_validate_cli_reports_the_bad_rows(tmp_path, si, capsys):
    from matxfer.cli import main

    cols = ["material_id", "structure", "e_total", "e_electronic", "band_gap", "n"]
    eps = str((np.eye(3) * 12.0).tolist())
    eye = str(np.eye(3).tolist())
    rows = [
        ["mp-1", si.as_dict(), eps, eye, 1.0, 1.0],
        ["mp-huge", si.as_dict(), str((np.eye(3) * 1e6).tolist()), eye, 1.0, 1.0],
    ]
    _write_split_json(tmp_path / "matminer_figshare/dielectric_constant.json.gz", cols, rows)
    assert main(["data", "validate", "petousis-dielectric-2017", "--json", "--data-dir", str(tmp_path)]) == 0
    blob = json.loads(capsys.readouterr().out)
    assert (blob["n"], blob["passed"], blob["failed"]) == (2, 1, 1)
    (fail,) = blob["failures"]
    assert fail["id"] == "mp-huge" and "plausible maximum 1000" in fail["reason"]


def test_macefield_malformed_frame_is_reported_and_the_rest_load(tmp_path):
    z = np.eye(3) * 1.1
    good = (np.eye(3) * 3.0, [z, -z])
    path = tmp_path / "mace_field_mp_dielectric/dielectric-valid.xyz.gz"
    _write_macefield(path, [good, good, good])
    with gzip.open(path, "rt") as fh:
        lines = fh.read().splitlines()
    lines[6] = lines[6].rsplit(" ", 3)[0]  # frame 1, first atom: three columns missing
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    _write_macefield(tmp_path / "mace_field_mp_dielectric/dielectric-test.xyz.gz", [good])
    ds = load_dataset("macefield-dielectric-ionic", root=tmp_path)
    assert ds.ids == ["macefield-valid-0000", "macefield-valid-0002", "macefield-test-0000"]
    ((entry, reason),) = ds.failures
    assert entry == "macefield-valid-0001" and "unreadable extended-XYZ frame: lines 5-8" in reason
