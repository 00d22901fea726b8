"""Atoms without a neighbour inside the cutoff: predict warns (naming the structure and the
sites) and reports the count per structure (column isolated_atoms, CSV and JSON)."""

from __future__ import annotations

import csv
import json
import logging

from pymatgen.core import Lattice, Structure

from matxfer.data.graphs import isolated_atoms


def _lonely():
    """Na 15 A from a Cl2 pair in a 30 A cell: Na has no neighbour within 5 A (or 8 A)."""
    return Structure(Lattice.cubic(30.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5] * 3, [0.55, 0.5, 0.5]])


def test_isolated_atoms(nacl):
    assert isolated_atoms(nacl, 5.0) == []
    assert isolated_atoms(_lonely(), 5.0) == [0]
    assert isolated_atoms(_lonely(), 1.0) == [0, 1, 2]


def test_predict_warns_and_counts(tiny_checkpoint, nacl, tmp_path, caplog):
    from matxfer.predict import predict_files, write_predictions

    _lonely().to(filename=str(tmp_path / "lonely.vasp"), fmt="poscar")
    nacl.to(filename=str(tmp_path / "nacl.vasp"), fmt="poscar")
    with caplog.at_level(logging.WARNING, logger="matxfer"):
        results, errors = predict_files(tiny_checkpoint, [tmp_path / "lonely.vasp", tmp_path / "nacl.vasp"])
    assert not errors
    assert [r["isolated_atoms"] for r in results] == [1, 0]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "lonely.vasp: 1 of 3 atom(s) have no neighbour within the 5.00 A cutoff (sites 0 (Na))" in warned[0]
    p = write_predictions(results, errors, tmp_path / "p.csv")
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["isolated_atoms"] for r in rows] == ["1", "0"]
    p = write_predictions(results, errors, tmp_path / "p.json")
    assert [r["isolated_atoms"] for r in json.loads(p.read_text())["predictions"]] == [1, 0]


def test_cli_warning_is_shown_by_default(tiny_checkpoint, tmp_path):
    import os
    import subprocess
    import sys

    _lonely().to(filename=str(tmp_path / "lonely.vasp"), fmt="poscar")
    proc = subprocess.run(
        [sys.executable, "-m", "matxfer", "predict", str(tiny_checkpoint), str(tmp_path / "lonely.vasp"),
         "--out", str(tmp_path / "p.json")],
        capture_output=True, text=True, check=False, env={**os.environ, "MATXFER_PROGRESS": "0"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "lonely.vasp: 1 of 3 atom(s) have no neighbour" in proc.stderr
