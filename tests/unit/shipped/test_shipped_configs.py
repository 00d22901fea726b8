"""Every config shipped in configs/ parses, and every run it would start is a valid run config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from matxfer.config import config_from_dict, load_config
from matxfer.study.config import load_study
from matxfer.study.runner import StudyRunner

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").rglob("*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "seed000_tensor_transfer.yaml", "seed001_cgcnn_bandgap.yaml",
            "devi_sizes.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    if "recipes" not in raw:  # a run config
        cfg = load_config(path)
        assert cfg.data.datasets and cfg.data.targets
        return
    study = load_study(path)
    runner = StudyRunner(study, tmp_path)
    for spec in study.pretrain:
        if spec.config:
            cfg = config_from_dict(runner.pretrain_raw(spec))
            assert cfg.data.targets
        runner.pretrained[spec.name] = {"checkpoint": "parent.ckpt", "targets": [], "ids": set()}
    for target in study.targets:
        for recipe in study.recipes:
            cfg = config_from_dict(runner.cell_raw(target, recipe, 10, 0, tmp_path / "cell"))
            assert cfg.data.split.file.endswith("cell_split.json")
            if recipe.kind != "scratch" or study.scratch_pretrained:
                assert cfg.transfer.init_from == "parent.ckpt"
                assert "backbone" not in cfg.model
            else:
                assert cfg.model["backbone"]["name"]


def test_documents_cited_by_shipped_configs_are_in_the_repository():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    cited = set()
    for cfg in (root / "configs").rglob("*.yaml"):
        text = cfg.read_text()
        cited |= set(re.findall(r"\b(docs/[\w./-]+\.md)", text))
        assert "SCIENCE.md" not in text, f"{cfg} cites a document outside the repository"
    assert cited, "no shipped config cites the project's docs"
    for doc in cited:
        assert (root / doc).is_file(), f"{doc} is cited by a config but missing"
