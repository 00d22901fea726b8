"""Transfer operations on a small stand-in model with the PropertyModel layout."""

import pytest
import torch
from torch import nn

from matxfer.transfer import apply_recipe, freeze, param_groups, parse_recipe, set_frozen_eval


class ToyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Linear(4, 8)
        self.convs = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)) for _ in range(3)])

    def layer_groups(self):
        return ["embedding", "convs.0", "convs.1", "convs.2"]

    def forward(self, x):
        h = self.embedding(x)
        for c in self.convs:
            h = torch.relu(c(h)) + h
        return h


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ToyBackbone()
        self.heads = nn.ModuleDict({"y": nn.Linear(8, 1)})

    def forward(self, x):
        return self.heads["y"](self.backbone(x)).squeeze(-1)


def _train(model, steps=5):
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    for _ in range(steps):
        model.train()
        set_frozen_eval(model)
        loss = (model(torch.randn(16, 4)) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("recipe, frozen_prefixes", [
    ("head", ["backbone."]),
    ("freeze:0", ["backbone.embedding."]),
    ("freeze:2", ["backbone.embedding.", "backbone.convs.0.", "backbone.convs.1."]),
    ("full", []),
])
def test_frozen_parts_are_bit_identical_buffers_included(recipe, frozen_prefixes):
    torch.manual_seed(1)
    m = Toy()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    info = apply_recipe(m, recipe)
    after_reinit = {k: v.clone() for k, v in m.state_dict().items()}
    _train(m)
    after = m.state_dict()
    for k in after:
        if any(k.startswith(p) for p in frozen_prefixes):
            assert torch.equal(after[k], before[k]), k  # weights and BN running stats
        elif after[k].is_floating_point() and "num_batches" not in k:
            assert not torch.equal(after[k], after_reinit[k]), k  # trained
    if recipe == "freeze:2":
        assert info["reinitialised"] == ["backbone.convs.2"]
        assert not torch.equal(after_reinit["backbone.convs.2.0.weight"], before["backbone.convs.2.0.weight"])
    n_frozen = sum(not p.requires_grad for p in m.parameters())
    assert (n_frozen > 0) == bool(frozen_prefixes)


def test_freeze_errors_and_recipes():
    m = Toy()
    with pytest.raises(ValueError, match="matched no parameter"):
        freeze(m, ["nothing.*"])
    with pytest.raises(ValueError, match="unknown recipe"):
        parse_recipe("freeze")
    assert parse_recipe("freeze:3") == ("freeze", 3)
    with pytest.raises(ValueError, match="only 3 layer groups"):
        apply_recipe(m, "freeze:4")


def test_param_groups_multipliers_and_layer_decay():
    m = Toy()
    groups = param_groups(m, lr=1.0, lr_mult={"backbone": 0.1}, layer_decay=0.5, weight_decay=0.01)
    lr_of = {}
    for g in groups:
        for p in g["params"]:
            lr_of[id(p)] = (g["lr"], g["weight_decay"])
    assert lr_of[id(m.heads["y"].weight)] == (1.0, 0.01)
    assert lr_of[id(m.heads["y"].bias)] == (1.0, 0.0)
    assert lr_of[id(m.backbone.convs[2][0].weight)][0] == pytest.approx(0.1 * 0.5)
    assert lr_of[id(m.backbone.embedding.weight)][0] == pytest.approx(0.1 * 0.5**4)
    freeze(m, ["backbone.*"])
    ids = {id(p) for g in param_groups(m, 1.0) for p in g["params"]}
    assert ids == {id(p) for p in m.heads.parameters()}
