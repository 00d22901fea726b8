"""docs/extending.md, walked through: the page's toy backbone, head and dataset, registered at
run time as a plugin would, trained by the normal run path, checkpointed and predicted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from matxfer import keys as K
from matxfer.config import ModuleConfig, PosInt
from matxfer.models.base import Backbone, Head
from matxfer.models.registry import BACKBONES, HEADS, register_backbone, register_head


class MeanFieldConfig(ModuleConfig):
    width: PosInt = 16


class MeanField(Backbone):
    graph_defaults = {"cutoff": 5.0, "max_neighbors": 12}

    def __init__(self, width: int = 16):
        super().__init__()
        self.config = {"width": width}
        self.out_spec = width
        self.embedding = nn.Embedding(self.num_species, width)
        self.mix = nn.Linear(width, width)

    def forward(self, data):
        h = self.embed(data)
        return {K.NODE_FEATURES: h + self.mix(h).tanh()}

    def layer_groups(self):
        return ["embedding", "mix"]


class MaxPoolHeadConfig(ModuleConfig):
    hidden: PosInt = 16


class MaxPoolHead(Head):
    task_kinds = ("scalar",)

    def __init__(self, in_spec, hidden: int = 16):
        super().__init__()
        self.config = {"hidden": hidden}
        self.mlp = nn.Sequential(nn.Linear(in_spec, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, backbone_out, data):
        from torch_geometric.utils import scatter

        h = backbone_out[K.NODE_FEATURES]
        pooled = scatter(h, data.batch, dim=0, dim_size=data.num_graphs, reduce="max")
        return self.mlp(pooled).squeeze(-1)


def _parse(paths):
    from matxfer.data.sources.common import _float_or_none, _load_json, _structure_cls

    for row in _load_json(paths[0]):
        def build(row=row):
            structure = _structure_cls().from_dict(row["structure"])
            return structure, {K.BAND_GAP: _float_or_none(row["gap"])}, {"frame": "structure"}

        yield str(row["id"]), build


@pytest.fixture
def toy_plugins(tmp_path, monkeypatch):
    from pymatgen.core import Lattice, Structure

    from matxfer.data.registry import REGISTRY, DatasetSpec, register

    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        a = 5.4 + 0.3 * rng.random()
        s = Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        rows.append({"id": f"toy-{i}", "structure": s.as_dict(), "gap": float(a - 4.0)})
    rows.append({"id": "toy-bad", "structure": {"not": "a structure"}, "gap": 1.0})
    (tmp_path / "data" / "my_gaps").mkdir(parents=True)
    (tmp_path / "data" / "my_gaps" / "gaps.json").write_text(json.dumps(rows))
    register_backbone("mean-field", config=MeanFieldConfig)(MeanField)
    register_head("max-pool", config=MaxPoolHeadConfig)(MaxPoolHead)
    register(DatasetSpec(name="my-gaps", files=("my_gaps/gaps.json",),
                         targets={K.BAND_GAP: "eV"}, parser=_parse, frame="no tensors",
                         citation="toy", source="generated in the test", description="toy gaps"))
    monkeypatch.setenv("MATXFER_CACHE_DIR", str(tmp_path / "cache"))
    yield tmp_path
    BACKBONES.pop("mean-field", None)
    HEADS.pop("max-pool", None)
    REGISTRY.specs.pop("my-gaps", None)


def test_the_extending_page_toy_plugins_train_and_predict(toy_plugins):
    from matxfer.config import config_from_dict
    from matxfer.predict import Predictor
    from matxfer.train.loop import fit

    tmp = toy_plugins
    cfg = config_from_dict({
        "name": "toy", "out": str(tmp / "run"),
        "data": {"datasets": ["my-gaps"], "targets": ["band_gap"], "data_dir": str(tmp / "data"),
                 "split": {"fractions": [0.75, 0.125, 0.125]}},
        "model": {"backbone": {"name": "mean-field", "width": 8},
                  "heads": {"band_gap": {"name": "max-pool", "hidden": 8}}},
        "optim": {"epochs": 2, "batch_size": 4, "patience": 0},
        "trainer": {"progress": False},
    })
    res = fit(cfg)
    ck = torch.load(res.checkpoint, weights_only=True)
    assert ck["model_config"]["backbone"] == {"name": "mean-field", "width": 8}
    assert ck["model_config"]["heads"]["band_gap"]["name"] == "max-pool"
    # the malformed entry was skipped with its reason, the others trained
    dropped = ck["provenance"]["dropped"]
    assert sum(dropped.values()) == 1, dropped
    from pymatgen.core import Lattice, Structure

    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    out = Predictor.from_checkpoint(res.checkpoint).predict_structures([nacl])[0]
    assert np.isfinite(out["band_gap"])


def test_the_toy_backbone_options_are_checked_by_its_config_class(toy_plugins):
    from matxfer.models.registry import build_backbone

    with pytest.raises(ValueError, match=r"model.backbone.width: expected an integer \(>= 1\), got 'abc'"):
        build_backbone({"name": "mean-field", "width": "abc"}, "model.backbone")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['depth'\] in backbone 'mean-field'"):
        build_backbone({"name": "mean-field", "depth": 2})
