"""One cutoff: graphs, backbone radial envelopes and heads use the same radius."""

from __future__ import annotations

import logging

import pytest
import torch

from matxfer.checkpoint import (
    build_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from matxfer.config import config_from_dict
from matxfer.data.graphs import GraphSettings
from matxfer.models.cutoff import cutoff_arg
from matxfer.models.registry import BACKBONES, HEADS, build_model
from matxfer.tasks import make_task
from matxfer.train.setup import build_run_model

EQ = {"name": "equivariant", "hidden_irreps": "4x0e+2x1o+2x2e", "n_layers": 1, "radial_hidden": [8]}


def _cfg(**raw):
    return config_from_dict({"name": "t", **raw})


# --------------------------------------------------------------------------------------
# at config-read time
# --------------------------------------------------------------------------------------


def test_backbone_cutoff_that_disagrees_with_the_graph_is_an_error_naming_both():
    with pytest.raises(ValueError) as err:
        _cfg(graph={"cutoff": 5.0}, model={"backbone": {**EQ, "cutoff": 6.0}})
    msg = str(err.value)
    assert "graph.cutoff=5.0" in msg and "model.backbone.cutoff=6.0" in msg


def test_head_cutoff_that_disagrees_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"model.heads.piezo_tensor.cutoff=4.0"):
        _cfg(
            graph={"cutoff": 5.0},
            model={"backbone": {"name": "cgcnn"},
                   "heads": {"piezo_tensor": {"name": "edge-tensor", "cutoff": 4.0}}},
        )
    # backbone and head disagree without a graph cutoff
    with pytest.raises(ValueError, match=r"model.backbone.cutoff=6.0.*model.heads.y.cutoff=5.0"):
        _cfg(model={"backbone": {**EQ, "cutoff": 6.0}, "heads": {"y": {"name": "x", "cutoff": 5.0}}})


@pytest.mark.parametrize("raw", [
    {},
    {"graph": {"cutoff": 5.0}},
    {"graph": {"cutoff": 5.0}, "model": {"backbone": {**EQ, "cutoff": 5}}},
    {"graph": {"cutoff": 5.0}, "model": {"backbone": {**EQ, "cutoff": 5.0},
                                         "heads": {"y": {"name": "edge-tensor", "cutoff": 5.0}}}},
    {"model": {"backbone": {**EQ, "cutoff": 6.0}}},
])
def test_agreeing_configs_read_as_before(raw):
    cfg = _cfg(**raw)
    assert cfg.graph.cutoff == raw.get("graph", {}).get("cutoff")
    assert cfg.model == raw.get("model", {})


def test_override_on_the_command_line_is_checked_too():
    from matxfer.config import load_config

    with pytest.raises(ValueError, match="graph.cutoff=4.5.*model.backbone.cutoff=5.0"):
        load_config(None, ["graph.cutoff=4.5", "model.backbone={name: equivariant, cutoff: 5.0}"])


# --------------------------------------------------------------------------------------
# when the model is built
# --------------------------------------------------------------------------------------


def test_radial_classes_are_the_ones_with_a_cutoff_argument():
    assert {n for n, c in BACKBONES.items() if cutoff_arg(c)} == {"alignn", "equivariant", "local-frame"}
    assert {n for n, c in HEADS.items() if cutoff_arg(c)} == {
        "direct-forces", "edge-atom-tensor", "edge-tensor"}


def _tasks(*names):
    return {n: make_task(n) for n in names}


def test_backbone_and_heads_read_the_graph_cutoff():
    cfg = _cfg(
        graph={"cutoff": 4.0},
        model={"backbone": EQ, "heads": {"piezo_tensor": {"name": "edge-tensor", "formula": "ijk=ikj"},
                                         "forces": {"name": "direct-forces"}}},
    )
    model, settings, *_ = build_run_model(cfg, _tasks("piezo_tensor", "forces"), None)
    assert settings.cutoff == 4.0
    assert model.backbone.config["cutoff"] == 4.0
    assert model.backbone.envelope.cutoff == 4.0 and model.backbone.radial_basis.cutoff == 4.0
    assert model.heads["piezo_tensor"].config["cutoff"] == 4.0
    assert model.heads["forces"].config["cutoff"] == 4.0


def test_without_a_graph_cutoff_the_backbone_cutoff_sets_the_graphs():
    cfg = _cfg(model={"backbone": {**EQ, "cutoff": 4.5}})
    model, settings, *_ = build_run_model(cfg, _tasks("band_gap"), None)
    assert settings.cutoff == 4.5 and model.backbone.config["cutoff"] == 4.5


def test_defaults_unchanged_when_nothing_is_given():
    for name, cutoff in (("equivariant", 5.0), ("alignn", 8.0), ("local-frame", 6.0)):
        bb = {"name": name} if name != "equivariant" else EQ
        model, settings, *_ = build_run_model(_cfg(model={"backbone": bb}), _tasks("band_gap"), None)
        assert settings.cutoff == cutoff == model.backbone.config["cutoff"]


# --------------------------------------------------------------------------------------
# old checkpoints
# --------------------------------------------------------------------------------------


def _old_checkpoint(tmp_path, bb_cutoff: float, graph_cutoff: float):
    tasks = _tasks("band_gap")
    torch.manual_seed(0)
    model = build_model({"backbone": {**EQ, "cutoff": bb_cutoff},
                         "heads": {"band_gap": {"name": "scalar"}}}, tasks)
    ck = build_checkpoint(model, tasks, GraphSettings(cutoff=graph_cutoff).to_dict(), None, split=None)
    return save_checkpoint(ck, tmp_path / "old.ckpt"), model


def test_old_checkpoint_with_a_mismatch_still_loads_as_trained(tmp_path, si):
    from matxfer.predict import Predictor

    path, _ = _old_checkpoint(tmp_path, bb_cutoff=5.0, graph_cutoff=6.0)
    model, _ = model_from_checkpoint(load_checkpoint(path))
    assert model.backbone.config["cutoff"] == 5.0
    pred = Predictor.from_checkpoint(path, symprec=None)
    assert pred.settings.cutoff == 6.0
    out = pred.predict_structures([si])
    assert len(out) == 1 and "band_gap" in str(out[0])


def test_fine_tuning_an_old_mismatched_checkpoint_keeps_its_cutoff_and_warns(tmp_path, caplog):
    path, _ = _old_checkpoint(tmp_path, bb_cutoff=5.0, graph_cutoff=6.0)
    parent = load_checkpoint(path)
    cfg = _cfg(transfer={"init_from": str(path), "recipe": "full"})
    with caplog.at_level(logging.WARNING, logger="matxfer.models.cutoff"):
        model, settings, *_ = build_run_model(cfg, _tasks("band_gap"), parent)
    assert model.backbone.config["cutoff"] == 5.0 and settings.cutoff == 6.0
    assert "differs from its graph cutoff 6" in caplog.text


def test_fine_tuning_a_matching_checkpoint_gives_new_heads_its_cutoff(tmp_path):
    path, _ = _old_checkpoint(tmp_path, bb_cutoff=6.0, graph_cutoff=6.0)
    parent = load_checkpoint(path)
    cfg = _cfg(transfer={"init_from": str(path), "recipe": "head"},
               model={"heads": {"piezo_tensor": {"name": "edge-tensor", "formula": "ijk=ikj"}}})
    model, settings, *_ = build_run_model(cfg, _tasks("piezo_tensor"), parent)
    assert model.heads["piezo_tensor"].config["cutoff"] == 6.0 == settings.cutoff
