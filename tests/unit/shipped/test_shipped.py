"""Shipped models: slim checkpoints over a frozen third-party backbone, ensembles, derived
quantities in prediction output, unseen elements, and names wherever a checkpoint goes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from matxfer.checkpoint import (
    CheckpointError,
    backbone_sha256,
    build_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    slim_checkpoint,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def chgnet_parent(tmp_path_factory):
    pytest.importorskip("chgnet", reason="chgnet is not installed (pip install matxfer[chgnet])")
    from matxfer.models.backbones.chgnet import export_chgnet_checkpoint

    return export_chgnet_checkpoint(tmp_path_factory.mktemp("chgnet") / "chgnet-0.3.0.ckpt")


def _member(parent, out, seed: int, recipe: str = "head", elements=("Si", "Na", "Cl")):
    """A checkpoint of a dielectric head on CHGNet (``recipe``), head weights from ``seed``."""
    from matxfer.config import config_from_dict
    from matxfer.tasks import make_task
    from matxfer.train.setup import build_run_model

    cfg = config_from_dict({
        "data": {"targets": ["dielectric_total"]},
        "transfer": {"init_from": str(parent), "recipe": recipe},
    })
    tasks = {"dielectric_total": make_task("dielectric_total")}
    torch.manual_seed(seed)
    model, settings, _, atom_state, prov = build_run_model(cfg, tasks, load_checkpoint(parent))
    with torch.no_grad():  # a non-trivial head and normaliser so members differ visibly
        for p in model.heads.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for k, b in model.normalizers.named_buffers():
            if b.is_floating_point() and "scale" in k:
                b.fill_(4.0)
    prov = {**prov, "seed": seed, "train_elements": list(elements)}
    ck = build_checkpoint(model, tasks, settings.to_dict(), atom_state,
                          {"seed": 0, "train": [], "val": [], "test": []}, prov)
    return save_checkpoint(ck, out / f"m{seed}-{recipe}.ckpt")


@pytest.fixture(scope="module")
def members(chgnet_parent, tmp_path_factory):
    out = tmp_path_factory.mktemp("members")
    return [_member(chgnet_parent, out, s) for s in (0, 1)]


def _predict(path, structures, **kw):
    from matxfer.predict import Predictor

    return Predictor.from_checkpoint(path, **kw).predict_structures(structures)


# ---- hash ---------------------------------------------------------------------------------


def test_backbone_hash_definition():
    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor([1, 2])}
    h = backbone_sha256(a)
    assert h == backbone_sha256({k: a[k] for k in reversed(list(a))})  # key order irrelevant
    # floating tensors are hashed as float64: the precision the model runs in does not matter
    assert h == backbone_sha256({"w": a["w"].double(), "n": a["n"]})
    assert h != backbone_sha256({"w": a["w"] + 1e-6, "n": a["n"]})
    assert h != backbone_sha256({"w": a["w"].reshape(3, 2), "n": a["n"]})  # the shape counts
    assert h != backbone_sha256({"v": a["w"], "n": a["n"]})  # so do the names
    z = {"w": torch.tensor([0.0, 1.0])}
    assert backbone_sha256(z) == backbone_sha256({"w": torch.tensor([-0.0, 1.0])})


# ---- slim checkpoints ---------------------------------------------------------------------


def test_slim_checkpoint_small_identical_and_hash_checked(members, tmp_path, si, batio3):
    full = load_checkpoint(members[0])
    slim = slim_checkpoint(full)
    ref = slim["backbone_ref"]
    assert ref["name"] == "chgnet" and ref["package"] == "chgnet" and ref["weights"] == "0.3.0"
    assert ref["package_version"] in ref["version"] and len(ref["sha256"]) == 64
    assert not any(k.startswith("backbone.") for k in slim["state_dict"])
    path = save_checkpoint(slim, tmp_path / "slim.ckpt")
    size_full, size_slim = members[0].stat().st_size, path.stat().st_size
    assert size_slim < size_full / 5 and size_slim < 300_000, (size_full, size_slim)
    # plain data only
    torch.load(path, weights_only=True)
    a = _predict(members[0], [si, batio3], symprec=None)
    b = _predict(path, [si, batio3], symprec=None)
    for x, y in zip(a, b):
        assert x["dielectric_total"]["cartesian"] == y["dielectric_total"]["cartesian"]
    tampered = dict(slim)
    tampered["backbone_ref"] = {**ref, "sha256": "0" * 64}
    with pytest.raises(CheckpointError) as err:
        model_from_checkpoint(tampered)
    msg = str(err.value)
    assert "0" * 64 in msg and ref["sha256"] in msg and ref["package_version"] in msg


def test_slim_sevennet_round_trip(tmp_path, si, zno):
    pytest.importorskip("sevenn", reason="sevenn is not installed (pip install matxfer[sevennet])")
    from matxfer.models.backbones.sevennet import export_sevennet_checkpoint

    parent = export_sevennet_checkpoint(tmp_path / "sevennet-0.ckpt")
    full = _member(parent, tmp_path, 0)
    slim = slim_checkpoint(load_checkpoint(full))
    ref = slim["backbone_ref"]
    assert ref["package"] == "sevenn" and ref["weights"] == "7net-0"
    assert ref["version"].startswith("sevenn ")
    path = save_checkpoint(slim, tmp_path / "slim7.ckpt")
    assert path.stat().st_size < full.stat().st_size / 10
    a = _predict(full, [si, zno], symprec=None)
    b = _predict(path, [si, zno], symprec=None)
    for x, y in zip(a, b):
        assert x["dielectric_total"]["cartesian"] == y["dielectric_total"]["cartesian"]


def test_slim_refuses_a_trained_or_own_backbone(chgnet_parent, tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="only the third-party"):
        slim_checkpoint(load_checkpoint(tiny_checkpoint))
    full = load_checkpoint(_member(chgnet_parent, tmp_path, 0, recipe="full"))
    with pytest.raises(CheckpointError, match="was trained"):
        slim_checkpoint(full)
    # frozen per provenance, but weights that are not the package's: refused by the hash
    head = load_checkpoint(_member(chgnet_parent, tmp_path, 0))
    sd = dict(head["state_dict"])
    key = next(k for k in sd if k.startswith("backbone.") and sd[k].is_floating_point())
    sd[key] = sd[key] + 1.0
    with pytest.raises(CheckpointError, match="is not the weights"):
        slim_checkpoint({**head, "state_dict": sd})


# ---- ensembles ----------------------------------------------------------------------------


def test_ensemble_mean_and_std(members, tmp_path, si, batio3):
    from matxfer.models.ensemble import EnsembleModel, make_ensemble

    ens = make_ensemble(members)
    assert len(ens["members"]) == 2 and ens["backbone_ref"]["name"] == "chgnet"
    assert [m["seed"] for m in ens["members"]] == [0, 1]
    path = save_checkpoint(ens, tmp_path / "ens.ckpt")
    assert path.stat().st_size < 400_000
    model, _ = model_from_checkpoint(load_checkpoint(path))
    assert isinstance(model, EnsembleModel) and len(model) == 2
    assert all(m.backbone is model.backbone for m in model.members)
    singles = [_predict(p, [si, batio3], symprec=None) for p in members]
    res = _predict(path, [si, batio3], symprec=None)
    for i, row in enumerate(res):
        cart = np.array([s[i]["dielectric_total"]["cartesian"] for s in singles])
        d = row["dielectric_total"]
        assert np.allclose(d["cartesian"], cart.mean(0), atol=1e-5)
        assert np.allclose(d["cartesian_std"], cart.std(0), atol=1e-5)
        means = [s[i]["dielectric_total"]["mean_eigenvalue"] for s in singles]
        assert d["mean_eigenvalue_std"] == pytest.approx(np.std(means), abs=1e-5)
        assert d["mean_eigenvalue_std"] > 0
        assert "anisotropy_std" in d and len(d["eigenvalues_std"]) == 3
        assert row["ensemble_members"] == 2
    # symmetry projection applies to every member: a cubic crystal has no spread off-diagonal
    cubic = _predict(path, [si])[0]["dielectric_total"]
    std = np.array(cubic["cartesian_std"])
    assert np.allclose(std - np.diag(np.diag(std)), 0, atol=1e-9)


def test_make_ensemble_refuses_members_that_differ(members, chgnet_parent, tmp_path):
    from matxfer.models.ensemble import make_ensemble

    other = load_checkpoint(members[1])
    sd = dict(other["state_dict"])
    key = next(k for k in sd if k.startswith("backbone.") and sd[k].is_floating_point())
    sd[key] = sd[key] * 1.01
    bad = save_checkpoint({**other, "state_dict": sd}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="another backbone"):
        make_ensemble([members[0], bad])
    tasks = json.loads(json.dumps(other["tasks"]))
    tasks["dielectric_total"]["units"] = "other"
    bad2 = save_checkpoint({**other, "tasks": tasks}, tmp_path / "bad2.ckpt")
    with pytest.raises(CheckpointError, match="differs .* in tasks"):
        make_ensemble([members[0], bad2])


# ---- derived quantities and unseen elements ----------------------------------------------------


def _isotropic(k: float, g: float) -> np.ndarray:
    d = np.eye(3)
    lam = k - 2 * g / 3
    return (lam * np.einsum("ij,kl->ijkl", d, d)
            + g * (np.einsum("ik,jl->ijkl", d, d) + np.einsum("il,jk->ijkl", d, d)))


def test_elastic_quantities_isotropic():
    from matxfer.predict import elastic_quantities

    q = elastic_quantities(_isotropic(100.0, 50.0))
    assert q["k_vrh"] == pytest.approx(100.0) and q["g_vrh"] == pytest.approx(50.0)
    assert q["y_mod"] == pytest.approx(9 * 100 * 50 / 350)
    assert q["homogeneous_poisson"] == pytest.approx((300 - 100) / (2 * 350))
    assert q["universal_anisotropy"] == pytest.approx(0.0, abs=1e-9)
    assert q["mechanically_stable"] is True
    assert elastic_quantities(_isotropic(100.0, -10.0))["mechanically_stable"] is False


def test_dielectric_and_piezo_quantities():
    from matxfer.predict import dielectric_quantities, piezo_quantities

    q = dielectric_quantities(np.diag([2.0, 3.0, 8.0]))
    assert q["eigenvalues"] == pytest.approx([2, 3, 8]) and q["mean_eigenvalue"] == pytest.approx(13 / 3)
    assert q["anisotropy"] == pytest.approx(4.0)
    assert np.isnan(dielectric_quantities(np.diag([-1.0, 1, 1]))["anisotropy"])
    e = np.zeros((3, 3, 3))
    e[2, 2, 2] = 1.5
    p = piezo_quantities(e)
    assert p["eij_max"] == pytest.approx(1.5, rel=1e-6)
    assert abs(abs(p["eij_max_direction"][2]) - 1) < 1e-5


def test_unseen_elements_warned_and_in_output(members, tmp_path, batio3, nacl, caplog):
    from matxfer.predict import Predictor, write_predictions

    pred = Predictor.from_checkpoint(members[0], symprec=None)
    with caplog.at_level(logging.WARNING, logger="matxfer.predict"):
        rows = pred.predict_structures([batio3, nacl], ["batio3", "nacl"])
    assert rows[0]["unseen_elements"] == ["Ba", "O", "Ti"] and rows[1]["unseen_elements"] == []
    assert "batio3" in caplog.text and "Ba, O, Ti" in caplog.text and "nacl" not in caplog.text
    out = write_predictions(rows, [], tmp_path / "p.csv")
    text = out.read_text()
    assert "unseen_elements" in text.splitlines()[0] and "dielectric_total.anisotropy" in text
    # a checkpoint that does not record its training elements: no column, no warning
    ck = load_checkpoint(members[0])
    ck["provenance"] = {k: v for k, v in ck["provenance"].items() if k != "train_elements"}
    old = Predictor.from_checkpoint(save_checkpoint(ck, tmp_path / "old.ckpt"), symprec=None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="matxfer.predict"):
        row = old.predict_structures([batio3])[0]
    assert "unseen_elements" not in row and "never occur" not in caplog.text


# ---- names of shipped models --------------------------------------------------------------------


@pytest.fixture
def shipped_folder(tmp_path, monkeypatch, tiny_checkpoint):
    import shutil

    from matxfer.shipped import write_index

    folder = tmp_path / "shipped"
    folder.mkdir()
    shutil.copy(tiny_checkpoint, folder / "gap.ckpt")
    (folder / "gap.md").write_text("# gap\n")
    write_index({"gap": {"file": "gap.ckpt", "card": "gap.md", "target": "band_gap",
                         "description": "a test model",
                         "metrics": {"test": {"band_gap": {"mae": 0.5, "n": 3}}}}}, folder)
    monkeypatch.setenv("MATXFER_SHIPPED_DIR", str(folder))
    return folder


def test_names_resolve_everywhere(shipped_folder, tmp_path, monkeypatch, si, capsys):
    from matxfer.cli import main
    from matxfer.predict import Predictor
    from matxfer.shipped import resolve

    assert resolve("gap") == shipped_folder / "gap.ckpt"
    assert load_checkpoint("gap")["tasks"]
    assert "band_gap" in Predictor.from_pretrained("gap").predict_structures([si])[0]
    with pytest.raises(CheckpointError, match=r"no shipped model.*gap"):
        load_checkpoint("elastik")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing" / "model.ckpt")
    # an existing file of that name wins
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gap").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch file"):
        load_checkpoint("gap")
    (tmp_path / "gap").unlink()
    assert main(["inspect", "gap", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"]["band_gap"]
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "gap" and rows[0]["metrics"]["test"]["band_gap"]["mae"] == 0.5
    assert main(["models"]) == 0
    assert "mae=0.5" in capsys.readouterr().out
    assert main(["predict", "nosuchmodel", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 2
    assert "shipped models: gap" in capsys.readouterr().err


def test_study_pretrain_checkpoint_takes_a_name(shipped_folder, tmp_path):
    from matxfer.study.config import study_from_dict
    from matxfer.study.runner import StudyRunner

    raw = {
        "name": "t",
        "pretrain": {"pre": {"checkpoint": "gap"}},
        "targets": {"gap": {"data": {"datasets": ["petousis-dielectric-2017"],
                                     "targets": ["band_gap"]}, "sizes": [10]}},
        "recipes": [{"name": "head", "kind": "head", "pretrained": "pre"}],
    }
    st = study_from_dict(raw)
    runner = StudyRunner(st, tmp_path / "study")
    info = runner.pretrain_one(st.pretrain[0])
    assert info["targets"] == ["band_gap"] and info["checkpoint"] == "gap"
    runner.pretrained["pre"] = info
    cell = runner.cell_raw(st.targets[0], st.recipes[-1], 10, 0, tmp_path / "cell")
    assert cell["transfer"]["init_from"] == "gap"
    missing = study_from_dict({**raw, "pretrain": {"pre": {"checkpoint": "nosuch"}}})
    with pytest.raises(CheckpointError, match="shipped models: gap"):
        StudyRunner(missing, tmp_path / "m").pretrain_one(missing.pretrain[0])


def test_package_data_includes_shipped_files():
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[3]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"]["matxfer"]
    assert {"shipped/index.json", "shipped/*.ckpt", "shipped/*.md"} <= set(globs)
    index = json.loads((root / "src/matxfer/shipped/index.json").read_text())
    assert index["format"] == 1
    for name, entry in index["models"].items():
        assert (root / "src/matxfer/shipped" / entry["file"]).is_file(), name
        assert (root / "src/matxfer/shipped" / entry["card"]).is_file(), name


def test_elastic_metrics_report_k_and_g_vrh_mae():
    """``matxfer evaluate`` on an elastic model reports k_vrh_mae and g_vrh_mae
    (tensor_metrics of the elastic formula)."""
    from matxfer.metrics import tensor_metrics

    pred = np.stack([_isotropic(110.0, 45.0), _isotropic(80.0, 30.0)])
    true = np.stack([_isotropic(100.0, 50.0), _isotropic(90.0, 30.0)])
    m = tensor_metrics(pred, true, "ijkl=jikl=klij")
    assert m["k_vrh_mae"] == pytest.approx(10.0) and m["g_vrh_mae"] == pytest.approx(2.5)


def test_card_puts_baselines_and_the_seed_spread_beside_the_ensemble(tiny_checkpoint, tmp_path):
    from matxfer.shipped import load_index, write_index
    from matxfer.shipped.build import member_spread, refresh_card

    folder = tmp_path / "shipped"
    folder.mkdir()
    ck = load_checkpoint(tiny_checkpoint)
    test = {"band_gap": {"mae": 0.4, "n": 3, "baselines": {"zero": {"mae": 1.5},
                                                            "train_mean": {"mae": 0.9}}}}
    ck["metrics"] = {"test": test, "split": "test",
                     "by_crystal_system": {"cubic": {"n": 3, "metrics": {"band_gap": {"mae": 0.4}}}},
                     "members": [{"band_gap": {"mae": 0.5}}, {"band_gap": {"mae": 0.7}}],
                     "wall_time_s": 12.0}
    ck["provenance"] = {**ck["provenance"], "command": "ship it", "config_file": "c.yaml"}
    save_checkpoint(ck, folder / "gap.ckpt")
    write_index({"gap": {"file": "gap.ckpt", "card": "gap.md", "members": 2,
                         "description": "a test model"}}, folder)
    assert member_spread(ck["metrics"]["members"]) == {"band_gap": {"mae": (0.6, pytest.approx(0.1))}}
    card = refresh_card("gap", folder).read_text()
    assert "| metric | ensemble | members (mean ± std) | predict zero | training mean |" in card
    assert "| mae | 0.4 | 0.6 ± 0.1 | 1.5 | 0.9 |" in card
    assert "| cubic | 3 | 0.4 |" in card and "ship it" in card
    assert load_index(folder)["gap"]["metrics"]["test"] == {"band_gap": {"mae": 0.4, "n": 3}}
    with pytest.raises(ValueError, match="no shipped model 'nope'"):
        refresh_card("nope", folder)


def _si():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(5.468), ["Si"] * 8,
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [0.25, 0.25, 0.25],
                      [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]])


def test_shipped_elastic_model_knows_silicon():
    """The packaged `elastic` ensemble on diamond-cubic Si (not in a test split: a sanity
    check of the shipped file, against the DFT moduli of MP mp-149, K_VRH 88 / G_VRH 62 GPa)."""
    pytest.importorskip("sevenn", reason="the elastic model runs on SevenNet-0 (matxfer[sevennet])")
    from matxfer.predict import Predictor
    from matxfer.shipped import load_index

    if "elastic" not in load_index():
        pytest.fail("the package ships no `elastic` model")
    (row,) = Predictor.from_pretrained("elastic").predict_structures([_si()])
    el = row["elastic_tensor"]
    assert 75 < el["k_vrh"] < 100 and 52 < el["g_vrh"] < 75, el
    assert el["mechanically_stable"] and el["k_vrh_std"] < 10
    c = np.asarray(el["voigt"])
    assert np.allclose(c[:3, :3][np.triu_indices(3, 1)], c[0, 1], rtol=1e-4)  # cubic form
    assert np.allclose(np.diag(c)[3:], c[3, 3], rtol=1e-4) and abs(c[0, 3]) < 1e-6 * c[0, 0]


def test_shipped_piezo_model_gives_zero_for_a_centrosymmetric_crystal(nacl):
    pytest.importorskip("chgnet", reason="the piezo model runs on CHGNet (matxfer[chgnet])")
    from matxfer.predict import Predictor

    (row,) = Predictor.from_pretrained("piezo").predict_structures([nacl])
    assert np.abs(np.asarray(row["piezo_tensor"]["voigt"])).max() == 0.0
