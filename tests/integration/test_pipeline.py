"""End to end: pretrain -> fine-tune (every recipe) -> evaluate -> predict.

Pretraining and the transfer recipes run on the generated EMT data set (``emt-metals``:
generated into the cache directory when the data directory lacks it), so they run
everywhere; the tensor pipeline needs the real dielectric data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from matxfer.checkpoint import load_checkpoint
from matxfer.config import config_from_dict
from matxfer.train.loop import fit

TINY_CGCNN = {"name": "cgcnn", "width": 16, "n_conv": 2}
TINY_EQ = {"name": "equivariant", "hidden_irreps": "4x0e+4x0o+2x1o+2x1e+1x2e+1x2o+1x3o+1x3e+1x4e", "n_layers": 1}


def _run(tmp_path, name, data, model=None, transfer=None, epochs=2, **optim):
    raw = {
        "name": name,
        "out": str(tmp_path / name),
        "data": data,
        "optim": {"epochs": epochs, "batch_size": 8, "lr": 3e-3, "patience": 0, **optim},
        "trainer": {"progress": False},
    }
    if model is not None:
        raw["model"] = {"backbone": model}
    if transfer is not None:
        raw["transfer"] = transfer
    return fit(config_from_dict(raw))


#: pretraining and fine-tuning data: the generated EMT set (two different targets)
PRETRAIN = {"datasets": ["emt-metals"], "targets": ["energy_per_atom"], "limit": 24,
            "split": {"fractions": [0.7, 0.15, 0.15]}}
FINETUNE = {**PRETRAIN, "targets": ["energy"]}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pre")
    return _run(tmp, "pre", PRETRAIN, TINY_CGCNN, epochs=3)


def _params(model, prefix):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_pretrain_writes_checkpoint(pretrained):
    ck = torch.load(pretrained.checkpoint, weights_only=True)
    assert ck["format_version"] == 1
    assert ck["graph"]["cutoff"] == 8.0 and ck["graph"]["max_neighbors"] == 12
    assert ck["tasks"]["energy_per_atom"]["units"] == "eV/atom"
    assert set(ck["split"]) >= {"train", "val", "test"}
    assert "test" in ck["metrics"] and ck["metrics"]["test"]["energy_per_atom"]["n"] > 0
    assert (pretrained.out_dir / "best.ckpt").is_file()
    assert (pretrained.out_dir / "logs" / "metrics.csv").is_file()


def test_checkpoint_round_trip_identical_outputs(pretrained):
    from matxfer.data.registry import load_dataset
    from matxfer.predict import Predictor

    p1 = Predictor.from_checkpoint(pretrained.checkpoint)
    p2 = Predictor.from_checkpoint(pretrained.checkpoint)
    recs = load_dataset("emt-metals", limit=4).records
    a = p1.predict_structures([r.structure for r in recs])
    b = p2.predict_structures([r.structure for r in recs])
    assert [x["energy_per_atom"] for x in a] == [x["energy_per_atom"] for x in b]


@pytest.mark.parametrize("recipe", ["head", "freeze:1", "full", "scratch"])
def test_recipes_freeze_exactly_what_they_claim(tmp_path, pretrained, recipe):
    data = FINETUNE
    parent = load_checkpoint(pretrained.checkpoint)
    res = _run(tmp_path, f"ft-{recipe.replace(':', '')}", data,
               transfer={"init_from": str(pretrained.checkpoint), "recipe": recipe})
    child = load_checkpoint(res.checkpoint)
    prov = child["provenance"]
    assert prov["recipe"] == recipe
    psd, csd = parent["state_dict"], child["state_dict"]
    bb = [k for k in csd if k.startswith("backbone.")]
    if recipe == "head":
        frozen = bb
    elif recipe == "freeze:1":
        frozen = [k for k in bb if k.startswith(("backbone.embedding.", "backbone.convs.0."))]
        # the layer after the frozen ones was re-initialised and trained
        later = [k for k in bb if k.startswith("backbone.convs.1.") and csd[k].is_floating_point()]
        assert any(not torch.equal(csd[k], psd[k]) for k in later)
    else:
        frozen = []
    for k in frozen:  # parameters AND buffers (batch-norm running stats) bit-identical
        assert torch.equal(csd[k], psd[k]), k
    if recipe in ("full", "scratch"):
        assert any(not torch.equal(csd[k], psd[k]) for k in bb if csd[k].is_floating_point())
    assert "energy" in child["tasks"] and "energy_per_atom" not in child["tasks"]
    assert child["provenance"]["parent_sha256"]
    assert child["graph"] == parent["graph"]


def test_head_recipe_reuses_cached_frozen_backbone_outputs(tmp_path, pretrained, monkeypatch):
    """Head-only training reads the frozen backbone's outputs computed once (and kept on disk):
    the same result as running the backbone every step, far fewer backbone calls."""
    from matxfer.models.backbones.cgcnn import CGCNN

    calls = []
    real_forward = CGCNN.forward

    def counting(self, data):
        calls.append(int(data.num_graphs))
        return real_forward(self, data)

    monkeypatch.setattr(CGCNN, "forward", counting)
    data = FINETUNE

    def run(name, cache):
        calls.clear()
        raw = {"name": name, "out": str(tmp_path / name), "data": data,
               "optim": {"epochs": 4, "batch_size": 4, "lr": 3e-3, "patience": 0},
               "trainer": {"progress": False, "cache_frozen_features": cache},
               "transfer": {"init_from": str(pretrained.checkpoint), "recipe": "head"}}
        res = fit(config_from_dict(raw))
        return res, list(calls), (tmp_path / name / "train.log").read_text()

    plain, plain_calls, _ = run("plain", False)
    cached, cached_calls, log1 = run("cached", True)
    again, again_calls, log2 = run("again", True)
    m_plain = plain.metrics["test"]["energy"]["mae"]
    assert cached.metrics["test"]["energy"]["mae"] == pytest.approx(m_plain, rel=1e-5)
    assert again.metrics["test"]["energy"]["mae"] == pytest.approx(m_plain, rel=1e-5)
    # plain: every training step runs the backbone; cached: one pass, then only evaluation
    n_train = len(load_checkpoint(plain.checkpoint)["split"]["train"])
    assert sum(plain_calls) >= 4 * n_train
    assert sum(cached_calls) < sum(plain_calls) / 2
    assert "0 reused from disk" in log1 and "0 computed" in log2  # the second run read the disk store
    # the checkpoint still holds the real (frozen, unchanged) backbone
    ck = load_checkpoint(cached.checkpoint)
    parent = load_checkpoint(pretrained.checkpoint)
    for k, v in ck["state_dict"].items():
        if k.startswith("backbone."):
            assert torch.equal(v, parent["state_dict"][k]), k


def test_mismatching_graph_config_is_an_error(tmp_path, pretrained):
    data = {**FINETUNE, "limit": 12}
    raw = {"name": "x", "out": str(tmp_path / "x"), "data": data, "graph": {"cutoff": 5.0},
           "transfer": {"init_from": str(pretrained.checkpoint), "recipe": "full"}, "trainer": {"progress": False}}
    with pytest.raises(ValueError, match="graph.cutoff"):
        fit(config_from_dict(raw))


def test_tensor_pipeline_evaluate_and_predict(tmp_path, data_dir, si, zno):
    from matxfer.predict import predict_files, write_predictions
    from matxfer.train.cli import evaluate_checkpoint

    data = {"datasets": ["petousis-dielectric-2017"], "targets": ["dielectric_total"], "limit": 24,
            "split": {"fractions": [0.7, 0.15, 0.15]}}
    res = _run(tmp_path, "eq", data, TINY_EQ)
    ev = evaluate_checkpoint(str(res.checkpoint), "petousis-dielectric-2017", "test")
    m = ev["metrics"]["dielectric_total"]
    assert m["n"] == ev["n"] > 0 and {"mae_voigt", "fnorm_rel", "mean_eig_mae"} <= set(m)
    ev_all = evaluate_checkpoint(str(res.checkpoint), "petousis-dielectric-2017", "all")
    assert ev_all["n"] > ev["n"]
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    si.to(filename=str(cifs / "si.cif"))
    zno.to(filename=str(cifs / "zno.cif"))
    (cifs / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    results, errors = predict_files(res.checkpoint, [cifs])
    assert len(results) == 2 and len(errors) == 1 and "broken.cif" in errors[0]["input"]
    eps = np.array(results[0]["dielectric_total"]["cartesian"])
    np.testing.assert_allclose(eps, eps.T, atol=1e-6)
    path = write_predictions(results, errors, tmp_path / "p.csv")
    assert "dielectric_total.mean_eigenvalue" in path.read_text().splitlines()[0]
    out = write_predictions(results, errors, tmp_path / "p.json")
    assert json.loads(out.read_text())["errors"][0]["input"].endswith("broken.cif")


def test_masked_multitask_loss_is_sum_of_present_losses(si, nacl):
    from torch_geometric.data import Batch

    from matxfer.data.graphs import GraphSettings, structure_to_graph
    from matxfer.data.records import CrystalRecord
    from matxfer.models.registry import build_model
    from matxfer.tasks import make_task
    from matxfer.train.data import attach_labels
    from matxfer.train.losses import normalized_target, task_losses, total_loss

    tasks = {"band_gap": make_task("band_gap", weight=2.0), "dielectric_total": make_task("dielectric_total", loss="mse")}
    model = build_model({"backbone": TINY_EQ, "heads": {"band_gap": {"name": "scalar"},
                         "dielectric_total": {"name": "tensor", "formula": "ij=ji"}}}, tasks)
    model.normalizers["band_gap"].fit(torch.tensor([1.0, 2.0, 3.0]))
    model.normalizers["dielectric_total"].fit(torch.stack([torch.eye(3) * 2, torch.eye(3) * 5]))
    settings = GraphSettings(cutoff=5.0)
    eps = np.diag([4.0, 5.0, 6.0])
    r1 = CrystalRecord("a", si, {"band_gap": 1.1})
    r2 = CrystalRecord("b", nacl, {"band_gap": 5.0, "dielectric_total": eps})
    g = [attach_labels(structure_to_graph(r.structure, settings, r.material_id), r, tasks) for r in (r1, r2)]
    batch = Batch.from_data_list(g)
    out = model(batch)
    losses = task_losses(model, tasks, out, batch)
    tot = total_loss(tasks, losses)
    y_gap = normalized_target(model, tasks["band_gap"], torch.tensor([1.1, 5.0]))
    l_gap = ((out["band_gap"] - y_gap) ** 2).mean()
    y_eps = normalized_target(model, tasks["dielectric_total"], torch.tensor(eps).float().unsqueeze(0))
    l_eps = ((out["dielectric_total"][1:] - y_eps) ** 2).mean()
    torch.testing.assert_close(tot, 2.0 * l_gap + l_eps)
    # a batch where nobody has the tensor label: that task contributes nothing
    only = Batch.from_data_list([g[0]])
    assert set(task_losses(model, tasks, model(only), only)) == {"band_gap"}


def test_budget_sizes_the_schedule_to_the_measured_throughput(tmp_path):
    data = {**PRETRAIN, "limit": 40}
    res = _run(tmp_path, "budget", data, TINY_CGCNN, epochs=100000, budget_min=0.25, warmup_epochs=50)
    plan = load_checkpoint(res.checkpoint)["provenance"]["budget"]
    # the planned schedule fits 90 % of what is left of 15 s at the measured epoch time
    assert 1 <= plan["epochs"] < 100000
    assert plan["epochs"] * plan["epoch_s"] <= 0.9 * plan["budget_s"] + 1e-6
    assert 0 < plan["budget_s"] <= 15.0 and plan["train_structures_per_s"] > 0
    assert res.metrics["epochs_run"] <= plan["epochs"]
