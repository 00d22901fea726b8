"""CHGNet backbone adapter: agreement with CHGNet, invariances, gradients, freezing, caching,
and the error when the optional dependency is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation
from torch_geometric.data import Batch

from matxfer import keys as K
from matxfer.data.graphs import GraphSettings, structure_to_graph
from matxfer.models.backbones.chgnet import (
    CachedBackbone,
    CHGNetBackbone,
    MissingDependencyError,
    attach_features,
    cache_features,
)
from matxfer.models.registry import BACKBONES, HEADS, build_backbone, build_head
from matxfer.transfer import freeze, set_frozen_eval

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def chgnet_installed():
    """Skip a test that needs the optional chgnet package when it is missing."""
    return pytest.importorskip(
        "chgnet", reason="chgnet is not installed (pip install matxfer[chgnet])"
    )


@pytest.fixture(scope="module", autouse=True)
def _edge_heads():
    """Register the edge tensor heads (in case the registry has not imported their module)."""
    if "edge-tensor" not in HEADS:
        pytest.importorskip("matxfer.models.heads.edge_tensor")


@pytest.fixture(scope="module")
def backbone(chgnet_installed):
    bb = CHGNetBackbone()
    bb.eval()
    return bb


@pytest.fixture(scope="module")
def backbone64(chgnet_installed):
    bb = CHGNetBackbone().double()
    bb.eval()
    return bb


def _settings() -> GraphSettings:
    return GraphSettings(**CHGNetBackbone.graph_defaults)


def _graph(structure: Structure, dtype=torch.float32):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return structure_to_graph(structure, _settings())
    finally:
        torch.set_default_dtype(old)


def _rotated(structure: Structure, rot: np.ndarray) -> Structure:
    lat = Lattice(structure.lattice.matrix @ rot.T)
    return Structure(
        lat, structure.species, structure.cart_coords @ rot.T, coords_are_cartesian=True
    )


def test_registered():
    assert BACKBONES["chgnet"] is CHGNetBackbone
    assert CHGNetBackbone.equivariant is False


def test_matches_chgnet_crystal_features(backbone, si, batio3, skewed, zno):
    """Summed node features equal CHGNet's own crystal features (sum pooling after its read-out norm)."""
    import contextlib
    import io

    from chgnet.model import CHGNet

    from matxfer.models.backbones.chgnet import chgnet_weights_path

    with contextlib.redirect_stdout(io.StringIO()):
        ref = CHGNet.from_file(str(chgnet_weights_path("0.3.0")))
    ref.eval()
    structures = [si, batio3, skewed, zno]
    out = ref.predict_structure(structures, task="e", return_crystal_feas=True)
    expected = torch.tensor(np.stack([o["crystal_fea"] for o in out]))
    batch = Batch.from_data_list([_graph(s) for s in structures])
    with torch.no_grad():
        feats = backbone(batch)[K.NODE_FEATURES]
    assert feats.shape == (sum(len(s) for s in structures), 64)
    pooled = torch.zeros(len(structures), 64).index_add_(0, batch.batch, feats)
    assert torch.allclose(pooled, expected, atol=2e-4, rtol=1e-5)


def test_state_dict_holds_only_used_weights(backbone):
    keys = list(backbone.state_dict())
    assert not any(k.startswith(("composition_model", "mlp.", "site_wise")) for k in keys)
    groups = backbone.layer_groups()
    assert groups[0] == "embedding" and groups[1:5] == [f"interactions.{k}" for k in range(4)]
    for name, _ in backbone.named_parameters():
        assert any(name.startswith(g + ".") for g in groups), name


@pytest.mark.parametrize("proper", [True, False])
def test_rotation_invariant_float64(backbone64, batio3, skewed, proper):
    rot = Rotation.from_euler("zyx", [0.3, -1.1, 2.0]).as_matrix()
    if not proper:
        rot = -rot
    for s in (batio3, skewed):
        a = backbone64(_graph(s, torch.float64))[K.NODE_FEATURES]
        b = backbone64(_graph(_rotated(s, rot), torch.float64))[K.NODE_FEATURES]
        assert a.dtype == torch.float64
        assert torch.allclose(a, b, atol=1e-9, rtol=0)


def test_batch_equals_single(backbone, si, skewed):
    g1, g2 = _graph(si), _graph(skewed)
    with torch.no_grad():
        both = backbone(Batch.from_data_list([g1, g2]))[K.NODE_FEATURES]
        one = backbone(g1)[K.NODE_FEATURES]
        two = backbone(g2)[K.NODE_FEATURES]
    assert torch.allclose(both, torch.cat([one, two]), atol=1e-5)


def test_positions_and_cell_differentiable(backbone64, skewed):
    g = _graph(skewed, torch.float64)
    g.pos.requires_grad_(True)
    g.cell.requires_grad_(True)
    feats = backbone64(g)[K.NODE_FEATURES]
    energy = (feats**2).sum()
    d_pos, d_cell = torch.autograd.grad(energy, [g.pos, g.cell])
    assert torch.isfinite(d_pos).all() and d_pos.abs().max() > 0
    assert torch.isfinite(d_cell).all()
    # translation invariance: the "forces" sum to zero
    assert torch.allclose(d_pos.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-8)
    # a finite difference along one coordinate agrees with autograd
    eps = 1e-5
    pos = g.pos.detach().clone()
    plus = g.clone()
    plus.pos = pos.clone()
    plus.pos[1, 2] += eps
    minus = g.clone()
    minus.pos = pos.clone()
    minus.pos[1, 2] -= eps
    with torch.no_grad():
        fd = (
            (backbone64(plus)[K.NODE_FEATURES] ** 2).sum()
            - (backbone64(minus)[K.NODE_FEATURES] ** 2).sum()
        ) / (2 * eps)
    assert float(fd) == pytest.approx(float(d_pos[1, 2]), rel=1e-4, abs=1e-6)


class _Model(torch.nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.heads = torch.nn.ModuleDict({"t": head})

    def forward(self, data):
        return self.heads["t"](self.backbone(data), data)


def test_frozen_backbone_bit_identical_after_head_step(chgnet_installed, si, batio3):
    torch.manual_seed(0)
    bb = CHGNetBackbone()
    head = build_head(
        {"name": "edge-tensor", "formula": "ij=ji", "hidden": [16], "channels": 2}, bb.out_spec
    )
    model = _Model(bb, head)
    frozen = freeze(model, ["backbone.*"])
    assert len(frozen) == len(list(bb.parameters()))
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    set_frozen_eval(model)
    batch = Batch.from_data_list([_graph(si), _graph(batio3)])
    loss = model(batch).pow(2).sum()
    loss.backward()
    opt.step()
    after = bb.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert any(not torch.equal(v, head.state_dict()[k]) for k, v in head_before.items())
    assert all(p.grad is None for p in bb.parameters())


def test_edge_tensor_head_equivariant_on_chgnet(backbone64, batio3):
    """An invariant edge tensor head on CHGNet features gives R T R^T for a rotated crystal."""
    torch.manual_seed(1)
    head = build_head(
        {"name": "edge-tensor", "formula": "ij=ji", "hidden": [16], "channels": 2}, 64
    ).double()
    rot = Rotation.from_euler("xyz", [0.7, 0.2, -0.4]).as_matrix()
    g1 = _graph(batio3, torch.float64)
    g2 = _graph(_rotated(batio3, rot), torch.float64)
    t1 = head.cartesian(backbone64(g1), g1)[0]
    t2 = head.cartesian(backbone64(g2), g2)[0]
    r = torch.tensor(rot)
    assert torch.allclose(t2, r @ t1 @ r.T, atol=1e-8)


def test_cached_features_reproduce_live_backbone(backbone, si, nacl, skewed):
    graphs = [_graph(s) for s in (si, nacl, skewed)]
    feats = cache_features(backbone, graphs, batch_size=2)
    assert [f.shape[0] for f in feats] == [g.num_nodes for g in graphs]
    attach_features(graphs, feats)
    batch = Batch.from_data_list(graphs)
    with torch.no_grad():
        live = backbone(batch)[K.NODE_FEATURES]
    cached = CachedBackbone(backbone.out_spec)(batch)[K.NODE_FEATURES]
    assert torch.allclose(live, cached, atol=1e-6)
    with pytest.raises(ValueError, match="graphs but"):
        attach_features(graphs, feats[:1])


def test_random_init_and_state_round_trip(backbone, si):
    torch.manual_seed(3)
    scratch = build_backbone({"name": "chgnet", "weights": None})
    g = _graph(si)
    with torch.no_grad():
        a = backbone(g)[K.NODE_FEATURES]
        b = scratch(g)[K.NODE_FEATURES]
    assert not torch.allclose(a, b)
    scratch.load_state_dict(backbone.state_dict(), strict=True)
    scratch.eval()
    with torch.no_grad():
        c = scratch(g)[K.NODE_FEATURES]
    assert torch.equal(a, c)


def test_bad_options(chgnet_installed):
    with pytest.raises(ValueError, match="nor an existing file"):
        CHGNetBackbone(weights="9.9.9")
    with pytest.raises(ValueError, match="topology_cache"):
        CHGNetBackbone(topology_cache=-1)


def test_element_outside_table(backbone):
    s = Structure(Lattice.cubic(4.0), ["Am"], [[0, 0, 0]])  # Z = 95
    with pytest.raises(ValueError, match="outside CHGNet's element table"):
        backbone(_graph(s))


def test_missing_package_gives_install_hint(monkeypatch):
    for name in list(sys.modules):
        if name == "chgnet" or name.startswith("chgnet."):
            monkeypatch.delitem(sys.modules, name)
    # a None entry in sys.modules makes the import raise ImportError
    for name in (
        "chgnet",
        "chgnet.model",
        "chgnet.model.model",
        "chgnet.graph",
        "chgnet.graph.converter",
    ):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install matxfer\[chgnet\]"):
        CHGNetBackbone()
    with pytest.raises(MissingDependencyError, match=r"pip install matxfer\[chgnet\]"):
        build_backbone({"name": "chgnet"})
    # also a ValueError, so the command line reports it as a user error
    with pytest.raises(ValueError):
        CHGNetBackbone(weights=None)


def test_config_records_architecture_not_weights(backbone, si):
    """Rebuilding from the recorded config gives random weights; the state dict restores them."""
    assert backbone.config["weights"] is None
    assert backbone.config["initialized_from"] == "0.3.0"
    assert backbone.config["arch"] == {}
    torch.manual_seed(5)
    rebuilt = build_backbone({"name": "chgnet", **backbone.config})
    assert not torch.equal(
        rebuilt.embedding.atom.embedding.weight, backbone.embedding.atom.embedding.weight
    )
    rebuilt.load_state_dict(backbone.state_dict(), strict=True)
    rebuilt.eval()
    g = _graph(si)
    with torch.no_grad():
        assert torch.equal(rebuilt(g)[K.NODE_FEATURES], backbone(g)[K.NODE_FEATURES])


@pytest.mark.parametrize("recipe", ["scratch", "head", "full", "freeze:2"])
def test_every_recipe_from_exported_checkpoint(chgnet_installed, tmp_path_factory, recipe):
    """``matxfer import-chgnet`` writes a parent checkpoint every transfer recipe accepts."""
    from matxfer.checkpoint import load_checkpoint
    from matxfer.config import config_from_dict
    from matxfer.models.backbones.chgnet import export_chgnet_checkpoint
    from matxfer.tasks import make_task
    from matxfer.train.setup import build_run_model

    path = tmp_path_factory.getbasetemp() / "chgnet-export" / "chgnet-0.3.0.ckpt"
    if not path.is_file():
        export_chgnet_checkpoint(path)
    parent = load_checkpoint(path)
    assert parent["tasks"] == {} and parent["provenance"]["source_sha256"]
    cfg = config_from_dict(
        {
            "data": {"targets": ["dielectric_total"]},
            "transfer": {"init_from": str(path), "recipe": recipe},
        }
    )
    tasks = {"dielectric_total": make_task("dielectric_total")}
    torch.manual_seed(0)
    model, settings, _, _, prov = build_run_model(cfg, tasks, parent)
    assert prov["recipe"] == recipe
    assert settings.cutoff == 5.0 and settings.max_neighbors is None
    assert type(model.heads["dielectric_total"]).registry_name == "edge-tensor"
    pre = {k[len("backbone.") :]: v for k, v in parent["state_dict"].items()}
    now = model.backbone.state_dict()
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    same = {k for k in pre if torch.equal(pre[k], now[k])}
    if recipe == "scratch":
        assert "embedding.atom.embedding.weight" not in same and not frozen
    elif recipe == "head":
        assert same == set(pre) and frozen == {n for n, _ in model.backbone.named_parameters()}
    elif recipe == "full":
        assert same == set(pre) and not frozen
    else:
        assert all(
            n.startswith(("embedding.", "interactions.0.", "interactions.1.")) for n in frozen
        )
        assert "interactions.1.atom_conv.mlp_out.layers.1.weight" in same
        assert "interactions.2.atom_conv.mlp_out.layers.1.weight" not in same
        assert "interactions.3.atom_conv.twoBody_atom.mlp_core.layers.0.weight" not in same
