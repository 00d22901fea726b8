"""Overlapping atoms (closer than MIN_INTERATOMIC_DISTANCE, periodic images included) never
reach a model: datasets report the entry as invalid, predict skips the file with the two
sites named; outputs never hold NaN."""

from __future__ import annotations

import csv
import json
import re

import pytest
from pymatgen.core import Lattice, Structure

from matxfer.data.graphs import GraphSettings, structure_to_graph
from matxfer.data.records import (
    MIN_INTERATOMIC_DISTANCE,
    RecordError,
    check_structure,
    closest_pair,
    make_record,
)

SAME_SITE = "atoms 1 (Cl) and 2 (Cl) are 0.000 A apart"


def _stacked():
    """NaCl2 with the two Cl atoms on the same position."""
    return Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5] * 3, [0.5] * 3])


def _through_image():
    """Na at x=0 and Cl at x=0.99 of a 4 A cell: 0.04 A apart through the periodic boundary."""
    return Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.99, 0, 0]])


def test_closest_pair(nacl):
    assert MIN_INTERATOMIC_DISTANCE == 0.5
    assert closest_pair(nacl) is None
    assert closest_pair(_stacked()) == (1, 2, pytest.approx(0.0, abs=1e-9))
    i, j, d = closest_pair(_through_image())
    assert (i, j) == (0, 1) and d == pytest.approx(0.04)
    i, j, d = closest_pair(Structure(Lattice.orthorhombic(0.4, 5, 5), ["Na"], [[0, 0, 0]]))
    assert (i, j) == (0, 0) and d == pytest.approx(0.4)


def test_dataset_entry_is_invalid():
    with pytest.raises(RecordError, match="mp-1: overlapping atoms: " + re.escape(SAME_SITE)):
        make_record("mp-1", _stacked(), {"band_gap": 1.0})
    with pytest.raises(RecordError, match=r"atoms 0 \(Na\) and 1 \(Cl\) are 0.040 A apart"):
        check_structure("x", _through_image())
    with pytest.raises(RecordError, match="its own periodic image"):
        check_structure("x", Structure(Lattice.orthorhombic(0.4, 5, 5), ["Na"], [[0, 0, 0]]))


def test_graph_refuses_overlap():
    with pytest.raises(RecordError, match="stacked: overlapping atoms: " + re.escape(SAME_SITE)):
        structure_to_graph(_stacked(), GraphSettings(cutoff=5.0), material_id="stacked")


def test_python_api_refuses_overlap(tiny_checkpoint, nacl):
    from matxfer.predict import Predictor

    pred = Predictor.from_checkpoint(tiny_checkpoint)
    with pytest.raises(RecordError, match=re.escape(SAME_SITE)):
        pred.predict_structures([_stacked()], ["stacked"])
    (ok,) = pred.predict_structures([nacl], ["NaCl"])
    assert ok["band_gap"] == ok["band_gap"]  # finite, not NaN


def test_predict_skips_overlapping_files(tiny_checkpoint, nacl, tmp_path, capsys):
    from matxfer.cli import main

    d = tmp_path / "in"
    d.mkdir()
    _stacked().to(filename=str(d / "POSCAR_stacked"), fmt="poscar")
    _stacked().to(filename=str(d / "stacked.json"))
    _stacked().to(filename=str(d / "stacked.cif"))
    _through_image().to(filename=str(d / "image.vasp"), fmt="poscar")
    nacl.to(filename=str(d / "nacl.cif"))
    out = tmp_path / "p.json"
    assert main(["predict", str(tiny_checkpoint), str(d), "--out", str(out)]) == 0
    blob = json.loads(out.read_text())
    assert [p["name"] for p in blob["predictions"]] == [str(d / "nacl.cif")]
    errors = {e["input"]: e["error"] for e in blob["errors"]}
    assert SAME_SITE in errors[str(d / "POSCAR_stacked")]
    assert SAME_SITE in errors[str(d / "stacked.json")]
    assert "0.040 A apart" in errors[str(d / "image.vasp")]
    cif = errors[str(d / "stacked.cif")]
    assert "no structures" not in cif
    assert "overlapping atoms: sites 1 Cl1 (Cl) and 2 Cl2 (Cl) are 0.000 A apart" in cif
    assert "merged them into one site of occupancy 2.0" in cif
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("skipped")]
    assert len(lines) == 4 and all("overlapping atoms" in ln for ln in lines)
    assert "Traceback" not in err


def test_outputs_hold_no_nan(tmp_path):
    from matxfer.predict import write_predictions

    results = [{"name": "a", "x": float("nan"), "t": {"cartesian": [[1.0, float("inf")]], "k_vrh": float("nan")}}]
    p = write_predictions(results, [], tmp_path / "p.json")

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    blob = json.loads(p.read_text(), parse_constant=refuse)
    assert blob["predictions"][0]["x"] is None
    assert blob["predictions"][0]["t"] == {"cartesian": [[1.0, None]], "k_vrh": None}
    p = write_predictions(results, [], tmp_path / "p.csv")
    assert "nan" not in p.read_text().lower() and "inf" not in p.read_text().lower()
    with open(p, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["x"] == "" and row["t.k_vrh"] == "" and json.loads(row["t.cartesian"]) == [[1.0, None]]
