"""Zero-shot elastic tensors by finite strains (matcalc) with a cheap ASE potential."""

import json

import numpy as np
import pytest

pytest.importorskip("matcalc")
from ase.calculators.emt import EMT
from pymatgen.core import Lattice, Structure

from matxfer.tensors import elastic_moduli
from matxfer.zeroshot import ZeroShotSettings, ZeroShotStore, compute


class CountingEMT(EMT):
    calls = 0

    def calculate(self, *a, **k):
        type(self).calls += 1
        return super().calculate(*a, **k)


def _cu():
    return Structure(Lattice.cubic(3.61), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def test_cubic_tensor_store_resume_and_bad_crystal(tmp_path):
    settings = ZeroShotSettings(relax_ions=False)
    store = ZeroShotStore(tmp_path / "zs.jsonl")
    bad = Structure(Lattice.cubic(4.0), ["U"], [[0, 0, 0]])  # EMT has no uranium
    items = [("cu", _cu()), ("u", bad)]
    out = compute(items, settings, store, progress=False, calculator=CountingEMT())
    assert out["u"]["voigt"] is None and "U" in out["u"]["error"]
    c = np.asarray(out["cu"]["voigt"])
    # cubic: C11 = C22 = C33, C12 = C13 = C23, C44 = C55 = C66, the rest zero
    assert np.allclose(np.diag(c)[:3], c[0, 0], rtol=1e-3)
    assert np.allclose([c[0, 1], c[0, 2], c[1, 2]], c[0, 1], rtol=1e-3)
    assert np.allclose(np.diag(c)[3:], c[3, 3], rtol=1e-3)
    assert abs(c[0, 3]) < 1e-3 * c[0, 0]
    assert c[0, 0] > c[0, 1] > 0 and c[3, 3] > 0
    k = elastic_moduli(c)["k_vrh"]
    assert k == pytest.approx((c[0, 0] + 2 * c[0, 1]) / 3, rel=1e-6)
    assert 100 < k < 200  # EMT copper, GPa
    # every row is strict JSON on its own line; a rerun computes nothing
    lines = (tmp_path / "zs.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["cu", "u"]
    CountingEMT.calls = 0
    again = compute(items, settings, ZeroShotStore(tmp_path / "zs.jsonl"), progress=False, calculator=CountingEMT())
    assert CountingEMT.calls == 0 and again["cu"]["voigt"] == out["cu"]["voigt"]
    # an edited structure misses the store and is recomputed
    strained = _cu()
    strained.scale_lattice(strained.volume * 1.01)
    compute([("cu", strained)], settings, ZeroShotStore(tmp_path / "zs.jsonl"), progress=False, calculator=CountingEMT())
    assert CountingEMT.calls > 0


def test_truncated_last_line_is_ignored(tmp_path):
    path = tmp_path / "zs.jsonl"
    path.write_text(json.dumps({"id": "a", "voigt": None, "error": "x"}) + "\n" + '{"id": "b", "vo')
    store = ZeroShotStore(path)
    assert set(store.entries) == {"a"}


def test_settings_key_and_checks():
    assert ZeroShotSettings(relax_ions=True).key() != ZeroShotSettings(relax_ions=False).key()
    with pytest.raises(ValueError, match="unknown potential"):
        ZeroShotSettings(potential="nope")


def test_zeroshot_command_on_a_folder_keeps_going_and_resumes(tmp_path, monkeypatch, capsys):
    from matxfer import zeroshot as zs
    from matxfer.cli import main

    monkeypatch.setenv("MATXFER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(zs, "make_calculator", lambda potential: CountingEMT())
    folder = tmp_path / "cifs"
    folder.mkdir()
    _cu().to(filename=str(folder / "cu.cif"))
    Structure(Lattice.cubic(4.0), ["U"], [[0, 0, 0]]).to(filename=str(folder / "u.cif"))
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    out = tmp_path / "zs.json"
    args = ["zeroshot", str(folder), "--out", str(out), "--clamped-ion"]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["predictions"]
    assert row["name"].endswith("cu.cif") and row["mode"] == "clamped-ion"
    el = row["elastic_tensor"]
    assert np.asarray(el["voigt"]).shape == (6, 6) and np.asarray(el["cartesian"]).shape == (3, 3, 3, 3)
    assert el["mechanically_stable"] and 100 < el["k_vrh"] < 200  # EMT copper
    assert el["k_vrh"] == pytest.approx(elastic_moduli(np.asarray(el["cartesian"]))["k_vrh"])
    errors = {e["input"].rsplit("/", 1)[-1]: e["error"] for e in doc["errors"]}
    assert set(errors) == {"u.cif", "broken.cif"} and "U" in errors["u.cif"]
    err = capsys.readouterr().err
    assert "skipped" in err and "u.cif" in err
    # a rerun computes nothing (the failure is remembered too) and gives the same numbers
    calls = CountingEMT.calls
    out2 = tmp_path / "zs.csv"
    assert main(["zeroshot", str(folder), "--out", str(out2), "--clamped-ion"]) == 0
    assert CountingEMT.calls == calls
    assert "elastic_tensor.k_vrh" in out2.read_text().splitlines()[0]
    assert main(["zeroshot", str(folder / "broken.cif"), "--out", str(out2)]) == 1
    assert main(["zeroshot", str(folder), "--out", str(out2), "--potential", "mace"]) == 2
    assert "unknown potential 'mace'" in capsys.readouterr().err
