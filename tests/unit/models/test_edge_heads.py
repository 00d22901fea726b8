"""Edge tensor heads on invariant backbones: equivariance, parity, point groups, contract, training."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from torch_geometric.data import Batch

from matxfer import keys as K
from matxfer.data.graphs import GraphSettings, structure_to_graph
from matxfer.models.backbones.alignn import ALIGNN
from matxfer.models.heads.edge_tensor import EdgeAtomTensorHead, EdgeTensorHead
from matxfer.models.registry import BACKBONES, HEADS, build_head
from matxfer.tasks import default_head, make_task
from matxfer.tensors import from_irreps, irreps_of

FORMULAS = ["ij=ji", "ijk=ikj", "ijkl=jikl=klij", "ij"]
#: index permutations each formula's Cartesian tensor must be invariant under
PERMS = {
    "ij=ji": [(1, 0)],
    "ijk=ikj": [(0, 2, 1)],
    "ijkl=jikl=klij": [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)],
    "ij": [],
}
TINY_ALIGNN = {"width": 10, "n_alignn": 1, "n_gcn": 1, "num_rbf": 16, "num_angle_rbf": 8, "embedding_dim": 8}
TINY_HEAD = {"hidden": [16, 16], "channels": 3, "num_rbf": 8}
#: cutoff-only graphs: a cap on the neighbour count that cuts through a shell of equidistant
#: neighbours (ties broken by index) would break the crystal's symmetry before the model sees it
SYM_CUTOFF = 5.0


class _NodesOnly(torch.nn.Module):
    """An invariant backbone without bond features (ALIGNN output minus ``edge_feats``)."""

    def __init__(self):
        super().__init__()
        self.inner = ALIGNN(**TINY_ALIGNN)
        self.out_spec = self.inner.out_spec
        self.graph_defaults = self.inner.graph_defaults

    def forward(self, data):
        return {K.NODE_FEATURES: self.inner(data)[K.NODE_FEATURES]}


def _backbone(name: str):
    torch.manual_seed(0)
    if name == "alignn":
        bb = ALIGNN(**TINY_ALIGNN)
    elif name == "alignn-nodes-only":
        bb = _NodesOnly()
    elif name == "equivariant":  # the head reads only its 0e channels
        bb = BACKBONES["equivariant"](**TINY_EQUIVARIANT)
    elif name == "local-frame":
        bb = BACKBONES["local-frame"](width=12, n_layers=1)
    else:
        if name not in BACKBONES:
            pytest.skip(f"backbone {name!r} is not registered (its module is not imported yet)")
        bb = BACKBONES[name]()
    return bb.double().eval()


def _settings(bb) -> GraphSettings:
    d = dict(bb.graph_defaults)
    d.update(cutoff=SYM_CUTOFF, max_neighbors=None)
    return GraphSettings(**{k: v for k, v in d.items() if k in GraphSettings.__dataclass_fields__})


def _graph(structure, bb, dtype=torch.float64):
    """Graph with positions and cell taken from the structure at ``dtype`` precision."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        g = structure_to_graph(structure, _settings(bb))
    finally:
        torch.set_default_dtype(old)
    for key in ("pos", "cell", "cell_shift"):
        g[key] = g[key].to(dtype)
    if "x" in g:
        g.x = g.x.to(dtype)
    return g


def _head(cls, formula, bb, seed=1, **kw):
    torch.manual_seed(seed)
    return cls(bb.out_spec, formula=formula, **{**TINY_HEAD, **kw}).double().eval()


def _orthogonal(seed: int, proper: bool) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return torch.tensor(q, dtype=torch.float64)


def _transform(g, R):
    h = g.clone()
    h.pos = g.pos @ R.T + torch.tensor([0.7, -0.2, 1.1], dtype=torch.float64)
    h.cell = g.cell @ R.T
    return h


def _rotate(t: torch.Tensor, R: torch.Tensor, rank: int) -> torch.Tensor:
    """``R`` on every one of the last ``rank`` indices of ``t``."""
    for axis in range(t.ndim - rank, t.ndim):
        t = torch.movedim(torch.tensordot(t, R, dims=([axis], [1])), -1, axis)
    return t


def _rank(formula):
    return len(formula.split("=")[0])


def _perovskite():
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _rutile():
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                     [[0, 0, 0], [0.305, 0.305, 0]])


BACKBONE_NAMES = ["alignn", "alignn-nodes-only", "cgcnn", "cgcnn-attention", "local-frame", "equivariant"]
TINY_EQUIVARIANT = {"hidden_irreps": "4x0e+2x0o+2x1o+2x1e+1x2e+1x2o", "n_layers": 1, "l_max": 2}


@pytest.fixture(scope="module")
def crystals(zno, nacl, skewed, batio3):
    return {"zno": zno, "nacl": nacl, "skewed": skewed, "batio3": batio3, "srtio3": _perovskite(),
            "rutile": _rutile()}


# ----------------------------------------------------------------------------------------
# registration and contract
# ----------------------------------------------------------------------------------------


def test_registered_under_the_default_head_names():
    assert HEADS["edge-tensor"] is EdgeTensorHead
    assert HEADS["edge-atom-tensor"] is EdgeAtomTensorHead
    assert default_head(make_task("piezo_tensor"), False) == {"name": "edge-tensor", "formula": "ijk=ikj"}
    assert default_head(make_task("born_charges"), False)["name"] == "edge-atom-tensor"
    assert EdgeAtomTensorHead(8).formula == "ij"  # the default head config names no formula


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("formula", FORMULAS)
def test_output_shapes_and_dtypes(crystals, formula, dtype):
    bb = _backbone("alignn").to(dtype)
    graphs = [_graph(crystals[k], bb, dtype) for k in ("zno", "skewed")]
    batch = Batch.from_data_list(graphs)
    out = bb(batch)
    head = _head(EdgeTensorHead, formula, bb).to(dtype)
    y = head(out, batch)
    assert y.shape == (2, irreps_of(formula).dim) and y.dtype == dtype
    assert torch.isfinite(y).all()
    atom = _head(EdgeAtomTensorHead, "ij", bb).to(dtype)
    ya = atom(out, batch)
    assert ya.shape == (batch.num_nodes, 9) and ya.dtype == dtype


@pytest.mark.parametrize("cls,formula", [(EdgeTensorHead, "ijk=ikj"), (EdgeAtomTensorHead, "ij")])
def test_config_rebuilds_head(cls, formula):
    head = cls(10, formula=formula, **TINY_HEAD, reduce="sum") if cls is EdgeTensorHead else cls(10, **TINY_HEAD)
    again = build_head({"name": cls.registry_name, **head.config}, 10)
    assert again.config == head.config
    again.load_state_dict(head.state_dict(), strict=True)


def test_bad_options_raise_value_error():
    from e3nn import o3

    with pytest.raises(ValueError, match="ijkk"):
        EdgeTensorHead(8, formula="ijkk")
    with pytest.raises(ValueError, match="ijk=ikj"):
        EdgeAtomTensorHead(8, formula="ijk=ikj")
    with pytest.raises(ValueError, match="no 0e channels"):
        EdgeTensorHead(o3.Irreps("2x0o+2x1o"))
    assert EdgeTensorHead(o3.Irreps("4x0e+2x1o")).width == 4  # irreps: the 0e channels
    with pytest.raises(ValueError, match="max"):
        EdgeTensorHead(8, reduce="max")
    with pytest.raises(ValueError, match="channels"):
        EdgeTensorHead(8, channels=0)
    with pytest.raises(ValueError, match="edge_features"):
        EdgeTensorHead(8, edge_features="yes")


def test_width_mismatch_and_missing_edge_features_raise(zno):
    bb = _backbone("alignn-nodes-only")
    g = _graph(zno, bb)
    out = bb(g)
    with pytest.raises(ValueError, match="edge_features=True"):
        _head(EdgeTensorHead, "ij=ji", bb, edge_features=True)(out, g)
    with pytest.raises(ValueError, match=r"\[n, 7\]"):
        EdgeTensorHead(7).double()(out, g)


# ----------------------------------------------------------------------------------------
# physics
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("proper", [True, False])
@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("bb_name", BACKBONE_NAMES)
def test_crystal_tensor_transforms_with_R_on_every_index(crystals, bb_name, formula, proper):
    bb = _backbone(bb_name)
    head = _head(EdgeTensorHead, formula, bb)
    graphs = [_graph(crystals[k], bb) for k in ("zno", "skewed")]
    batch = Batch.from_data_list(graphs)
    R = _orthogonal(11 if proper else 12, proper)
    rb = Batch.from_data_list([_transform(g, R) for g in graphs])
    t = head.cartesian(bb(batch), batch)
    t_rot = head.cartesian(bb(rb), rb)
    assert t.abs().max() > 1e-6  # not trivially zero
    torch.testing.assert_close(t_rot, _rotate(t, R, _rank(formula)), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("formula", FORMULAS)
def test_index_symmetry_and_irreps_round_trip(crystals, formula):
    bb = _backbone("alignn")
    head = _head(EdgeTensorHead, formula, bb)
    g = _graph(crystals["skewed"], bb)
    out = bb(g)
    t = head.cartesian(out, g)[0]
    for p in PERMS[formula]:
        torch.testing.assert_close(t.permute(*p), t, atol=1e-12, rtol=0)
    # the Cartesian tensor lies in the formula's subspace: irreps -> Cartesian gives it back
    torch.testing.assert_close(from_irreps(head(out, g), formula)[0], t, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("bb_name", BACKBONE_NAMES)
@pytest.mark.parametrize("name", ["nacl", "srtio3", "rutile"])
def test_centrosymmetric_crystal_has_zero_piezo_tensor(crystals, bb_name, name):
    bb = _backbone(bb_name)
    head = _head(EdgeTensorHead, "ijk=ikj", bb)
    g = _graph(crystals[name], bb)
    out = bb(g)
    atom = head.atom_tensors(out, g)
    e = head.cartesian(out, g)
    assert e.abs().max() < 1e-10
    assert head(out, g).abs().max() < 1e-10
    if name == "rutile":  # O sites are no inversion centres: the O atoms cancel pairwise
        assert atom.abs().max() > 1e-6
    else:  # every site of NaCl and cubic SrTiO3 is an inversion centre
        assert atom.abs().max() < 1e-10


@pytest.mark.parametrize("bb_name", BACKBONE_NAMES)
def test_inversion_flips_piezo_and_keeps_even_tensors(crystals, bb_name):
    bb = _backbone(bb_name)
    g = _graph(crystals["zno"], bb)
    inv = _transform(g, -torch.eye(3, dtype=torch.float64))
    out, out_inv = bb(g), bb(inv)
    piezo = _head(EdgeTensorHead, "ijk=ikj", bb)
    e = piezo.cartesian(out, g)
    scale = float(e.detach().abs().max())
    assert scale > 1e-6  # wurtzite is polar: a non-zero prediction
    torch.testing.assert_close(piezo.cartesian(out_inv, inv), -e, atol=1e-10 * max(scale, 1.0), rtol=0)
    for formula in ("ij=ji", "ijkl=jikl=klij"):
        h = _head(EdgeTensorHead, formula, bb)
        t = h.cartesian(out, g)
        atol = 1e-10 * max(float(t.detach().abs().max()), 1.0)
        torch.testing.assert_close(h.cartesian(out_inv, inv), t, atol=atol, rtol=0)


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("bb_name", BACKBONE_NAMES)
def test_prediction_obeys_the_point_group_of_wurtzite(crystals, bb_name, formula):
    zno = crystals["zno"]
    ops = SpacegroupAnalyzer(zno).get_symmetry_operations(cartesian=True)
    rots = {tuple(np.round(op.rotation_matrix, 8).ravel()): op.rotation_matrix for op in ops}
    assert len(rots) == 12  # 6mm
    bb = _backbone(bb_name)
    g = _graph(zno, bb)
    head = _head(EdgeTensorHead, formula, bb)
    t = head.cartesian(bb(g), g)[0]
    scale = float(t.detach().abs().max())
    assert scale > 1e-6
    for r in rots.values():
        R = torch.tensor(r, dtype=torch.float64)
        err = float((_rotate(t, R, _rank(formula)) - t).detach().abs().max())
        assert err < 1e-9 * max(scale, 1.0), (formula, r, err)


def test_per_atom_tensor_is_equivariant_and_permutes_with_atoms(crystals):
    bb = _backbone("alignn")
    head = _head(EdgeAtomTensorHead, "ij", bb)
    g = _graph(crystals["skewed"], bb)
    t = head.cartesian(bb(g), g)
    assert t.shape == (g.num_nodes, 3, 3)
    # general 'ij' tensors: the antisymmetric (1e) part is reachable
    assert (t - t.transpose(-1, -2)).abs().max() > 1e-8
    for proper in (True, False):
        R = _orthogonal(21 if proper else 22, proper)
        h = _transform(g, R)
        torch.testing.assert_close(head.cartesian(bb(h), h), _rotate(t, R, 2), atol=1e-10, rtol=1e-9)
    perm = torch.tensor([2, 0, 3, 1])
    inv = torch.argsort(perm)
    p = g.clone()
    p.z, p.pos = g.z[perm], g.pos[perm]
    p.edge_index = inv[g.edge_index]
    torch.testing.assert_close(head.cartesian(bb(p), p), t[perm], atol=1e-10, rtol=1e-9)
    sym = _head(EdgeAtomTensorHead, "ij=ji", bb)
    ts = sym.cartesian(bb(g), g)
    torch.testing.assert_close(ts, ts.transpose(-1, -2), atol=1e-12, rtol=0)
    assert sym(bb(g), g).shape == (g.num_nodes, 6)


def test_per_atom_born_like_tensors_follow_the_site_symmetry(crystals):
    """NaCl: every site has m-3m symmetry, so each per-atom tensor is isotropic (a δ_ij)."""
    bb = _backbone("alignn")
    head = _head(EdgeAtomTensorHead, "ij", bb)
    g = _graph(crystals["nacl"], bb)
    t = head.cartesian(bb(g), g)
    iso = torch.einsum("nii->n", t) / 3
    torch.testing.assert_close(t, iso[:, None, None] * torch.eye(3, dtype=t.dtype), atol=1e-10, rtol=0)


def test_batch_matches_single_graphs_and_sum_reduce(crystals):
    bb = _backbone("alignn")
    graphs = [_graph(crystals[k], bb) for k in ("zno", "nacl", "batio3")]
    batch = Batch.from_data_list(graphs)
    for formula in ("ijk=ikj", "ijkl=jikl=klij"):
        head = _head(EdgeTensorHead, formula, bb)
        together = head(bb(batch), batch)
        alone = torch.cat([head(bb(g), g) for g in graphs])
        torch.testing.assert_close(together, alone, atol=1e-10, rtol=1e-10)
        summed = _head(EdgeTensorHead, formula, bb, reduce="sum")(bb(batch), batch)
        n = torch.tensor([g.num_nodes for g in graphs], dtype=torch.float64)
        torch.testing.assert_close(summed, together * n[:, None], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("gate", [True, False])
def test_gradients_reach_head_and_backbone(crystals, gate):
    bb = _backbone("alignn").train()
    head = _head(EdgeTensorHead, "ijk=ikj", bb, gate=gate).train()
    batch = Batch.from_data_list([_graph(crystals[k], bb) for k in ("zno", "batio3")])
    head(bb(batch), batch).square().sum().backward()
    for name, p in list(head.named_parameters()) + list(bb.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(float(p.grad.abs().max()) > 0 for p in bb.parameters())


# ----------------------------------------------------------------------------------------
# a tiny training run on real data
# ----------------------------------------------------------------------------------------


def _missing_pipeline_modules() -> list[str]:
    return [m for m in ("matxfer.normalize", "matxfer.train.loop", "matxfer.config")
            if importlib.util.find_spec(m) is None]


def test_tiny_training_run_on_real_dielectric_tensors_lowers_the_loss(tmp_path, data_dir):
    missing = _missing_pipeline_modules()
    if missing:
        pytest.skip(f"training pipeline not available yet: missing modules {missing}")
    import matxfer.models.backbones.alignn  # noqa: F401  (registers 'alignn')
    import matxfer.models.heads.edge_tensor  # noqa: F401  (registers the edge heads)
    from matxfer.config import config_from_dict
    from matxfer.train.loop import fit

    raw = {
        "name": "alignn-dielectric-tiny",
        "out": str(tmp_path / "run"),
        "data": {
            "datasets": ["petousis-dielectric-2017"],
            "targets": ["dielectric_total"],
            "limit": 24,
            "split": {"fractions": [0.7, 0.15, 0.15]},
        },
        "model": {"backbone": {"name": "alignn", **TINY_ALIGNN}},
        "optim": {"epochs": 4, "batch_size": 8, "patience": 0, "lr": 0.005, "warmup_epochs": 0},
        "trainer": {"progress": False},
    }
    res = fit(config_from_dict(raw))
    assert res.checkpoint.is_file()
    test_metrics = res.metrics["test"]
    assert all(np.isfinite(v) for v in _flat_numbers(test_metrics))
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    assert len(losses) >= 2
    assert losses[-1] < losses[0], losses


def _flat_numbers(d):
    if isinstance(d, dict):
        for v in d.values():
            yield from _flat_numbers(v)
    elif isinstance(d, (int, float)):
        yield float(d)


@pytest.mark.parametrize("bb_name", ["alignn", "cgcnn"])
def test_property_model_predicts_zero_piezo_for_nacl_in_physical_units(crystals, bb_name):
    """Through the registry, the irreps normaliser and ``predict`` (denormalised Cartesian)."""
    from matxfer.models.registry import build_model

    bb_cfg = {"name": "alignn", **TINY_ALIGNN} if bb_name == "alignn" else {"name": "cgcnn", "width": 8, "n_conv": 2}
    if bb_cfg["name"] not in BACKBONES:
        pytest.skip(f"backbone {bb_name!r} is not registered")
    task = make_task("piezo_tensor")
    torch.manual_seed(0)
    model = build_model({"backbone": bb_cfg, "heads": {task.name: default_head(task, False)}},
                        {task.name: task}).double().eval()
    assert isinstance(model.heads[task.name], EdgeTensorHead)
    labels = torch.randn(16, 3, 3, 3, dtype=torch.float64)
    model.normalizers[task.name].fit(0.5 * (labels + labels.transpose(-1, -2)))
    graphs = [_graph(crystals[k], model.backbone) for k in ("nacl", "zno")]
    pred = model.predict(Batch.from_data_list(graphs))[task.name]
    assert pred.shape == (2, 3, 3, 3)
    assert pred[0].abs().max() < 1e-10
    assert pred[1].abs().max() > 1e-8


def test_edge_heads_take_cutoff_and_neighbour_count_from_the_graphs():
    from matxfer.data.graphs import GraphSettings
    from matxfer.train.setup import with_graph_defaults

    cg = with_graph_defaults({"name": "edge-tensor", "formula": "ij=ji"}, GraphSettings(cutoff=8.0, max_neighbors=12))
    assert cg["cutoff"] == 8.0 and cg["avg_num_neighbors"] == 12.0
    allnb = with_graph_defaults({"name": "edge-tensor", "formula": "ij=ji"}, GraphSettings(cutoff=5.0, max_neighbors=1000))
    assert allnb["cutoff"] == 5.0 and allnb["avg_num_neighbors"] == 34.0
    mine = with_graph_defaults({"name": "edge-tensor", "cutoff": 6.0, "avg_num_neighbors": 20.0}, GraphSettings(cutoff=6.0))
    assert mine["cutoff"] == 6.0 and mine["avg_num_neighbors"] == 20.0
    # one cutoff: a head cutoff that disagrees with the graphs' is an error naming both
    with pytest.raises(ValueError, match=r"model.heads.cutoff=4.0 disagrees with the graph cutoff 6 A"):
        with_graph_defaults({"name": "edge-tensor", "cutoff": 4.0}, GraphSettings(cutoff=6.0))
    forces = with_graph_defaults({"name": "direct-forces"}, GraphSettings(cutoff=4.5))
    assert forces == {"name": "direct-forces", "cutoff": 4.5}
    assert with_graph_defaults({"name": "tensor"}, GraphSettings(cutoff=5.0)) == {"name": "tensor"}
