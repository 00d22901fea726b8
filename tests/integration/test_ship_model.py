"""benchmarks/ship_model.py end to end on tiny data: 24 Petousis crystals, frozen CHGNet,
2 epochs, 2 members, written into a temporary shipped folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("ship_model", ROOT / "benchmarks" / "ship_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ship_model_end_to_end(tmp_path, data_dir, monkeypatch):
    pytest.importorskip("chgnet", reason="chgnet is not installed (pip install matxfer[chgnet])")
    from matxfer.models.backbones.chgnet import export_chgnet_checkpoint

    parent = export_chgnet_checkpoint(tmp_path / "chgnet-0.3.0.ckpt")
    cfg = {
        "name": "tiny-ship",
        "data": {"datasets": ["petousis-dielectric-2017"], "targets": ["dielectric_total"],
                 "limit": 24, "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0}},
        "transfer": {"init_from": str(parent), "recipe": "head"},
        "model": {"heads": {"dielectric_total": {"name": "edge-tensor", "hidden": [16],
                                                 "channels": 2}}},
        "optim": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "patience": 0},
        "trainer": {"progress": False},
    }
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    shipped = tmp_path / "shipped"
    rc = _script().main([
        "dielectric", "--config", str(config), "--members", "2", "--shipped", str(shipped),
        "--work-dir", str(tmp_path / "work"), "--description", "tiny test model",
    ])
    assert rc == 0
    index = json.loads((shipped / "index.json").read_text())
    entry = index["models"]["dielectric"]
    assert entry["file"] == "dielectric.ckpt" and entry["members"] == 2
    assert entry["targets"] == ["dielectric_total"] and entry["backbone"] == "chgnet"
    assert "mae_voigt" in entry["metrics"]["test"]["dielectric_total"]
    ck_path = shipped / "dielectric.ckpt"
    assert entry["size_bytes"] == ck_path.stat().st_size < 200_000
    member = torch.load(tmp_path / "work" / "member0" / "model.ckpt", weights_only=True)
    assert ck_path.stat().st_size < member_size(tmp_path) / 5
    assert member["provenance"]["train_elements"]
    ck = torch.load(ck_path, weights_only=True)
    assert ck["backbone_ref"]["name"] == "chgnet" and len(ck["members"]) == 2
    assert [m["seed"] for m in ck["members"]] == [0, 1]
    assert ck["split"] == member["split"]  # one split for every member
    assert "by_crystal_system" in ck["metrics"]
    card = (shipped / "dielectric.md").read_text()
    for text in ("# dielectric", "tiny test model", member["provenance"]["data_fingerprint"],
                 "ship_model.py dielectric --config", "By crystal system", "Known limits",
                 "chgnet", "dielectric_total", "wall time"):
        assert text in card, text

    monkeypatch.setenv("MATXFER_SHIPPED_DIR", str(shipped))
    from matxfer.data.registry import load_dataset
    from matxfer.predict import Predictor

    pred = Predictor.from_pretrained("dielectric")
    rec = load_dataset("petousis-dielectric-2017", limit=1).records[0]
    row = pred.predict_structures([rec.structure])[0]
    d = row["dielectric_total"]
    assert row["ensemble_members"] == 2 and isinstance(row["unseen_elements"], list)
    assert {"mean_eigenvalue_std", "anisotropy_std", "cartesian_std", "eigenvalues_std"} <= set(d)


def member_size(tmp_path: Path) -> int:
    return (tmp_path / "work" / "member0" / "model.ckpt").stat().st_size


def test_shipped_name_in_evaluate_inspect_and_finetune(tmp_path, data_dir, monkeypatch, capsys):
    """A shipped (slim, ensemble) model's name works for evaluate, inspect and as the parent
    of a fine-tuning run (transfer.init_from / finetune --init-from)."""
    pytest.importorskip("chgnet", reason="chgnet is not installed (pip install matxfer[chgnet])")
    from matxfer.checkpoint import load_checkpoint
    from matxfer.cli import main
    from matxfer.config import config_from_dict
    from matxfer.models.backbones.chgnet import export_chgnet_checkpoint
    from matxfer.shipped.build import ship_model
    from matxfer.train.cli import evaluate_checkpoint
    from matxfer.train.loop import fit

    parent = export_chgnet_checkpoint(tmp_path / "chgnet-0.3.0.ckpt")
    data = {"datasets": ["petousis-dielectric-2017"], "targets": ["dielectric_total"],
            "limit": 24, "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0}}
    cfg = {"name": "tiny", "data": data, "trainer": {"progress": False},
           "transfer": {"init_from": str(parent), "recipe": "head"},
           "model": {"heads": {"dielectric_total": {"name": "edge-tensor", "hidden": [8],
                                                    "channels": 1}}},
           "optim": {"epochs": 1, "batch_size": 8, "patience": 0}}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    shipped = tmp_path / "shipped"
    ship_model("diel", config, 2, shipped=shipped, work_dir=tmp_path / "work")
    monkeypatch.setenv("MATXFER_SHIPPED_DIR", str(shipped))

    res = evaluate_checkpoint("diel", "petousis-dielectric-2017", "test")
    assert res["n"] == len(load_checkpoint("diel")["split"]["test"])
    assert "mae_voigt" in res["metrics"]["dielectric_total"]
    assert main(["inspect", "diel", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["members"] == 2 and info["backbone_ref"]["name"] == "chgnet"

    child = fit(config_from_dict({
        "name": "child", "out": str(tmp_path / "child"), "data": data,
        "trainer": {"progress": False}, "optim": {"epochs": 1, "batch_size": 8, "patience": 0},
        "transfer": {"init_from": "diel", "recipe": "head", "keep_heads": ["dielectric_total"]},
    }))
    ck = load_checkpoint(child.checkpoint)
    assert ck["provenance"]["parent"] == "diel"
    assert ck["provenance"]["parent_sha256"]
    sd = torch.load(parent, weights_only=True)["state_dict"]
    assert all(torch.equal(ck["state_dict"][k], v) for k, v in sd.items())
