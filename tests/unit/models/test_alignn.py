"""ALIGNN backbone: invariance, batching with line-graph offsets, contract, configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from matxfer import keys as K
from matxfer.data.graphs import GraphSettings, structure_to_graph
from matxfer.models.backbones.alignn import ALIGNN
from matxfer.models.registry import BACKBONES, build_backbone

TINY = {"width": 12, "n_alignn": 2, "n_gcn": 1, "num_rbf": 20, "num_angle_rbf": 10, "embedding_dim": 8}
SETTINGS = GraphSettings(cutoff=5.0, max_neighbors=12, line_graph=True)


def _graph(structure, settings=SETTINGS, dtype=torch.float64):
    """Graph with positions and cell taken from the structure at ``dtype`` precision."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        g = structure_to_graph(structure, settings)
    finally:
        torch.set_default_dtype(old)
    g.pos = g.pos.to(dtype)
    g.cell = g.cell.to(dtype)
    g.cell_shift = g.cell_shift.to(dtype)
    return g


def _model(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return ALIGNN(**{**TINY, **kw}).to(dtype).eval()


def _random_orthogonal(seed: int, proper: bool) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return torch.tensor(q, dtype=torch.float64)


def _transformed(g, R=None, t=None):
    h = g.clone()
    if R is not None:
        h.pos = g.pos @ R.T
        h.cell = g.cell @ R.T
    if t is not None:
        h.pos = h.pos + t
    return h


def _permuted(g, seed: int):
    """Same crystal with atoms and edges renumbered (line graph remapped accordingly)."""
    gen = torch.Generator().manual_seed(seed)
    n, e = g.num_nodes, g.edge_index.shape[1]
    perm = torch.randperm(n, generator=gen)  # new atom k is old atom perm[k]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    eperm = torch.randperm(e, generator=gen)  # new edge k is old edge eperm[k]
    einv = torch.empty_like(eperm)
    einv[eperm] = torch.arange(e)
    h = g.clone()
    h.z = g.z[perm]
    h.pos = g.pos[perm]
    h.edge_index = inv[g.edge_index[:, eperm]]
    h.cell_shift = g.cell_shift[eperm]
    h.line_index = einv[g.line_index]
    return h, perm, eperm


@pytest.fixture(scope="module")
def structures(zno, nacl, skewed):
    return {"zno": zno, "nacl": nacl, "skewed": skewed}


def test_registered_and_defaults():
    assert BACKBONES["alignn"] is ALIGNN
    assert ALIGNN.graph_defaults == {
        "cutoff": 8.0,
        "max_neighbors": 12,
        "line_graph": True,
        "atom_features": "none",
    }
    m = ALIGNN()
    assert m.out_spec == 256 and not m.equivariant
    assert len(m.alignn_layers) == 4 and len(m.gcn_layers) == 4
    assert 3.5e6 < sum(p.numel() for p in m.parameters()) < 4.5e6


def test_layer_groups_cover_every_parameter():
    m = ALIGNN(**TINY)
    groups = m.layer_groups()
    assert groups == ["embedding", "alignn_layers.0", "alignn_layers.1", "gcn_layers.0"]
    names = [n for n, _ in m.named_parameters()]
    for g in groups:
        assert any(n.startswith(g + ".") for n in names), g
    for n in names:
        assert sum(n.startswith(g + ".") for g in groups) == 1, n


def test_config_rebuilds_the_same_architecture():
    m = build_backbone({"name": "alignn", **TINY, "norm": "layer"})
    m2 = ALIGNN(**m.config)
    assert m2.config == m.config
    assert {k: v.shape for k, v in m.state_dict().items()} == {
        k: v.shape for k, v in m2.state_dict().items()
    }
    m2.load_state_dict(m.state_dict(), strict=True)


@pytest.mark.parametrize(
    "bad",
    [
        {"width": 0},
        {"n_alignn": 0, "n_gcn": 0},
        {"n_gcn": -1},
        {"norm": "group"},
        {"num_rbf": 1},
        {"cutoff": 0.0},
        {"atom_feature_dim": 0},
    ],
)
def test_bad_options_raise_value_error(bad):
    key, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=str(value) if key != "n_alignn" else "n_alignn"):
        ALIGNN(**{**TINY, **bad})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_contract(zno, dtype):
    g = _graph(zno, dtype=dtype)
    out = _model(dtype)(g)
    assert set(out) == {K.NODE_FEATURES, K.EDGE_FEATURES}
    assert out[K.NODE_FEATURES].shape == (g.num_nodes, TINY["width"])
    assert out[K.EDGE_FEATURES].shape == (g.edge_index.shape[1], TINY["width"])
    assert all(v.dtype == dtype for v in out.values())
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("proper", [True, False])
@pytest.mark.parametrize("name", ["zno", "skewed"])
def test_invariant_under_rotation_and_translation(structures, name, proper):
    g = _graph(structures[name])
    m = _model()
    ref = m(g)
    R = _random_orthogonal(3 if proper else 4, proper)
    out = m(_transformed(g, R, torch.tensor([0.3, -1.7, 2.2], dtype=torch.float64)))
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], atol=1e-10, rtol=1e-10)


def test_permutation_equivariant(skewed):
    g = _graph(skewed)
    m = _model()
    ref = m(g)
    h, perm, eperm = _permuted(g, 5)
    out = m(h)
    torch.testing.assert_close(out[K.NODE_FEATURES], ref[K.NODE_FEATURES][perm], atol=1e-10, rtol=0)
    torch.testing.assert_close(out[K.EDGE_FEATURES], ref[K.EDGE_FEATURES][eperm], atol=1e-10, rtol=0)


def test_line_graph_changes_the_output(zno):
    """The ALIGNN layers really use the bond angles (a scrambled line graph changes things)."""
    g = _graph(zno)
    m = _model()
    ref = m(g)[K.NODE_FEATURES]
    h = g.clone()
    gen = torch.Generator().manual_seed(0)
    h.line_index = torch.randint(0, g.edge_index.shape[1], g.line_index.shape, generator=gen)
    assert (m(h)[K.NODE_FEATURES] - ref).abs().max() > 1e-6


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_batch_matches_single_graphs(structures, norm):
    graphs = [_graph(structures[k]) for k in ("zno", "nacl", "skewed")]
    batch = Batch.from_data_list(graphs)
    # line-graph indices are offset by the number of edges of the previous graphs
    e0, t0 = graphs[0].edge_index.shape[1], graphs[0].line_index.shape[1]
    torch.testing.assert_close(batch.line_index[:, t0 : t0 + graphs[1].line_index.shape[1]] - e0,
                               graphs[1].line_index)
    m = _model(norm=norm)
    if norm == "layer":
        m.train()  # layer norm works per row: even training mode must not mix graphs
    out = m(batch)
    n_off = e_off = 0
    for g in graphs:
        single = m(g)
        n, e = g.num_nodes, g.edge_index.shape[1]
        torch.testing.assert_close(out[K.NODE_FEATURES][n_off : n_off + n], single[K.NODE_FEATURES],
                                   atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(out[K.EDGE_FEATURES][e_off : e_off + e], single[K.EDGE_FEATURES],
                                   atol=1e-10, rtol=1e-10)
        n_off, e_off = n_off + n, e_off + e


def test_missing_line_graph_raises(zno):
    g = _graph(zno, GraphSettings(cutoff=5.0, max_neighbors=12, line_graph=False))
    with pytest.raises(ValueError, match="line_graph=True"):
        _model()(g)
    # without ALIGNN layers the line graph is not needed
    out = _model(n_alignn=0, n_gcn=2)(g)
    assert out[K.NODE_FEATURES].shape == (g.num_nodes, TINY["width"])


def test_atom_feature_embedding(zno):
    from matxfer.data.atom_features import AtomFeaturizer

    feat = AtomFeaturizer.cgcnn()
    g = structure_to_graph(zno, GraphSettings(cutoff=5.0, max_neighbors=12, line_graph=True,
                                              atom_features="cgcnn"), featurizer=feat)
    m = ALIGNN(**TINY, atom_features="cgcnn").eval()
    assert isinstance(m.embedding.atom, torch.nn.Linear)
    assert m.embedding.atom.in_features == int(feat.dim) == m.config["atom_feature_dim"]
    assert m(g)[K.NODE_FEATURES].shape == (g.num_nodes, TINY["width"])
    g.x = g.x[:, :5]
    with pytest.raises(ValueError, match="atom_feature_dim"):
        m(g)


def test_atomic_number_out_of_table_raises(zno):
    g = _graph(zno, dtype=torch.float32)
    m = ALIGNN(**TINY, num_species=20).eval()
    with pytest.raises(ValueError, match="atomic number 30"):
        m(g)


def test_gradients_reach_positions_and_every_parameter(zno):
    g = _graph(zno)
    g.pos.requires_grad_(True)
    m = _model()
    m.train()
    out = m(Batch.from_data_list([g, _graph(zno)]))
    (out[K.NODE_FEATURES].square().sum() + out[K.EDGE_FEATURES].square().sum()).backward()
    assert g.pos.grad is not None and torch.isfinite(g.pos.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_cubic_crystal_single_atom():
    """Po (one atom, simple cubic): many image edges of the same pair, collinear bond pairs."""
    po = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])
    g = _graph(po, GraphSettings(cutoff=4.0, max_neighbors=None, line_graph=True))
    assert g.edge_index.shape[1] == 6
    out = _model()(g)
    assert torch.isfinite(out[K.NODE_FEATURES]).all()
