"""Local-frame backbone: frames, invariances (proper/improper), degenerate frames, contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp
from torch_geometric.data import Batch

from matxfer import keys as K
from matxfer.data.graphs import GraphSettings, structure_to_graph
from matxfer.models.backbones.local_frame import (
    LocalFrameBackbone,
    build_frames,
    frame_pairs,
    rank_neighbors,
)
from matxfer.models.registry import BACKBONES, build_backbone

TINY = {"width": 12, "n_layers": 2, "num_radial": 6, "cutoff": 5.0}
SETTINGS = GraphSettings(cutoff=5.0)
TOL = 1e-10  # float64, outputs of order one


def _graph(structure, settings=SETTINGS):
    """Float64 graph of ``structure``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return structure_to_graph(structure, settings)
    finally:
        torch.set_default_dtype(old)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return LocalFrameBackbone(**{**TINY, **kw}).double().eval()


def _feats(model, g):
    with torch.no_grad():
        return model(g)[K.NODE_FEATURES]


def _orthogonal(seed: int, proper: bool) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return torch.tensor(q, dtype=torch.float64)


def _rotated(g, R):
    h = g.clone()
    h.pos = g.pos @ R.T
    h.cell = g.cell @ R.T
    return h


@pytest.fixture(scope="module")
def generic():
    """Low-symmetry cell with three species and no equidistant neighbours."""
    rng = np.random.default_rng(3)
    lat = Lattice.from_parameters(4.3, 5.1, 5.9, 78, 95, 107)
    return Structure(lat, ["Li", "Fe", "O", "O", "O"], rng.random((5, 3)))


@pytest.fixture(scope="module")
def chain():
    """A straight 4-atom molecule in a 30 A box: every atom's neighbours are collinear."""
    lat = Lattice.cubic(30.0)
    xs = np.array([0.0, 1.2, 2.5, 3.9])
    return Structure(lat, ["C", "C", "N", "O"], np.c_[xs, np.zeros(4), np.zeros(4)],
                     coords_are_cartesian=True)


@pytest.fixture(scope="module")
def bent():
    """A bent triatomic (every atom has exactly two, non-collinear neighbours) + a dimer
    far away (each dimer atom has exactly one neighbour)."""
    lat = Lattice.cubic(40.0)
    xyz = [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [20, 20, 20], [21.1, 20, 20]]
    return Structure(lat, ["O", "H", "H", "N", "N"], xyz, coords_are_cartesian=True)


# --------------------------------------------------------------------------------------
# registry, configuration, contract
# --------------------------------------------------------------------------------------


def test_registered_with_defaults():
    assert BACKBONES["local-frame"] is LocalFrameBackbone
    assert LocalFrameBackbone.graph_defaults == {"cutoff": 6.0, "max_neighbors": None}
    bb = build_backbone({"name": "local-frame"})
    assert bb.config["n_frames"] == 5 and bb.config["l_max"] == 3
    assert bb.config["parity_invariant"] is True
    assert bb.out_spec == 64
    assert bb.layer_groups() == ["embedding", "edge_embedding", "layers.0", "layers.1", "layers.2"]
    names = [n for n, _ in bb.named_parameters()]
    assert all(any(n.startswith(g + ".") for g in bb.layer_groups()) for n in names)
    rebuilt = LocalFrameBackbone(**bb.config)
    assert rebuilt.state_dict().keys() == bb.state_dict().keys()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"n_frames": 0}, "n_frames"),
        ({"n_frames": 7, "frame_neighbors": 4}, "n_frames=7"),
        ({"width": 0}, "width"),
        ({"collinear_tol": 1.5}, "1.5"),
        ({"l_max": 9}, "9"),
        ({"cutoff": -1.0}, "-1.0"),
    ],
)
def test_bad_config_raises_naming_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        LocalFrameBackbone(**kw)


def test_frame_pair_order():
    assert frame_pairs(4) == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    assert len(frame_pairs(8)) == 28


def test_frames_are_right_handed_orthonormal(generic):
    g = _graph(generic)
    src, dst = g.edge_index
    vec = g.pos[src] + g.cell_shift @ g.cell[0] - g.pos[dst]
    fr = build_frames(vec, dst, g.num_nodes, n_frames=8, z_src=g.z[src])
    assert bool(fr.valid.all())
    eye = torch.eye(3, dtype=torch.float64).expand_as(fr.rot)
    torch.testing.assert_close(fr.rot @ fr.rot.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(fr.rot), torch.ones(fr.rot.shape[:2], dtype=torch.float64))
    # frame 1 of every atom: e1 along the nearest neighbour, e2 in the plane of the 2nd
    order, _ = rank_neighbors(vec.norm(dim=-1), dst, g.z[src], g.num_nodes)
    for i in range(g.num_nodes):
        mine = order[dst[order] == i]
        r1, r2 = vec[mine[0]], vec[mine[1]]
        torch.testing.assert_close(fr.rot[i, 0, 0], r1 / r1.norm())
        assert abs(float(fr.rot[i, 0, 2] @ r2)) < 1e-12
        assert float(fr.rot[i, 0, 1] @ r2) > 0


def test_rank_neighbors_breaks_near_ties_by_species_then_edge_order():
    dist = torch.tensor([2.0, 1.0, 1.0 + 1e-9, 1.0 - 1e-9, 3.0], dtype=torch.float64)
    dst = torch.zeros(5, dtype=torch.long)
    z = torch.tensor([1, 8, 8, 26, 1])
    order, rank = rank_neighbors(dist, dst, z, n_atoms=1)
    assert order.tolist() == [1, 2, 3, 0, 4]  # 1, 2, 3 tied; Z=8 before Z=26; then order
    assert rank.tolist() == [0, 1, 2, 3, 4]


def test_contract_output_shape_and_stats(generic):
    bb = _model()
    out = _feats(bb, _graph(generic))
    assert out.shape == (len(generic), 12) and out.dtype == torch.float64
    assert torch.isfinite(out).all()
    st = bb.frame_stats
    assert st["atoms"] == 5 and st["frames"] == 25 and st["fallback_frames"] == 0


@pytest.mark.parametrize("t", [1, 2, 5, 8])
def test_any_number_of_frames(generic, t):
    g = _graph(generic)
    bb = _model(n_frames=t)
    out = _feats(bb, g)
    assert torch.isfinite(out).all() and bb.frame_stats["frames"] == t * len(generic)


# --------------------------------------------------------------------------------------
# invariances
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("proper", [True, False])
def test_rotation_invariance_parity_invariant(generic, seed, proper):
    g = _graph(generic)
    bb = _model()
    ref = _feats(bb, g)
    out = _feats(bb, _rotated(g, _orthogonal(seed, proper)))
    assert (out - ref).abs().max() < TOL


def test_without_parity_symmetrisation_proper_invariant_improper_not(generic):
    g = _graph(generic)
    bb = _model(parity_invariant=False)
    ref = _feats(bb, g)
    for seed in range(3):
        out = _feats(bb, _rotated(g, _orthogonal(seed, True)))
        assert (out - ref).abs().max() < TOL
    # mirror images differ (the frames' e3 flips relative to the crystal) ...
    mirror = _feats(bb, _rotated(g, _orthogonal(0, False)))
    assert (mirror - ref).abs().max() > 1e-6
    # ... and every improper rotation gives the same mirror-image features
    other = _feats(bb, _rotated(g, -torch.eye(3, dtype=torch.float64)))
    assert (other - mirror).abs().max() < TOL


def test_translation_and_wrapping(generic):
    g = _graph(generic)
    bb = _model()
    ref = _feats(bb, g)
    h = g.clone()
    h.pos = g.pos + torch.tensor([0.3, -1.7, 2.2], dtype=torch.float64)
    assert (_feats(bb, h) - ref).abs().max() < TOL
    moved = generic.copy()
    moved.translate_sites(list(range(len(moved))), [0.37, 0.61, -0.45], to_unit_cell=True)
    assert (_feats(bb, _graph(moved)) - ref).abs().max() < TOL


def test_permutation_equivariance(generic):
    bb = _model()
    ref = _feats(bb, _graph(generic))
    perm = [3, 0, 4, 2, 1]
    permuted = Structure.from_sites([generic[i] for i in perm])
    out = _feats(bb, _graph(permuted))
    assert (out - ref[perm]).abs().max() < TOL


@pytest.mark.parametrize("name", ["si", "nacl"])
def test_rebuilt_graph_of_rotated_high_symmetry_crystal(name, request):
    """Equidistant neighbours (4 in Si, 6 in NaCl): ranking is immune to rounding noise."""
    s = request.getfixturevalue(name)
    bb = _model()
    ref = _feats(bb, _graph(s))
    R = _orthogonal(5, True).numpy()
    rotated = s.copy()
    rotated.apply_operation(SymmOp.from_rotation_and_translation(R, [0, 0, 0]))
    out = _feats(bb, _graph(rotated))
    assert (out - ref).abs().max() < 1e-9


def test_batching_matches_single_graphs(generic, si):
    bb = _model()
    a, b = _graph(generic), _graph(si)
    both = _feats(bb, Batch.from_data_list([a, b]))
    torch.testing.assert_close(both, torch.cat([_feats(bb, a), _feats(bb, b)]))


# --------------------------------------------------------------------------------------
# degenerate frames
# --------------------------------------------------------------------------------------


def test_collinear_chain_uses_the_invariant_fallback(chain):
    g = _graph(chain, GraphSettings(cutoff=6.0))
    bb = _model(n_frames=3)
    out1 = _feats(bb, g)
    st = dict(bb.frame_stats)
    out2 = _feats(bb, g)
    assert torch.isfinite(out1).all()
    assert torch.equal(out1, out2)  # deterministic
    assert st["frames"] == 0 and st["atoms_without_frame"] == 4
    assert st["fallback_frames"] == 12
    assert st["skipped_collinear_pairs"] == 4 * 3  # 3 neighbours each: 3 collinear pairs
    # the fallback is invariant under improper rotations as well
    for proper in (True, False):
        out = _feats(bb, _rotated(g, _orthogonal(1, proper)))
        assert (out - out1).abs().max() < TOL
    # finite gradients through the degenerate frames
    g2 = g.clone()
    g2.pos = g.pos.clone().requires_grad_(True)
    bb(g2)[K.NODE_FEATURES].square().sum().backward()
    assert torch.isfinite(g2.pos.grad).all()


def test_few_neighbours_bent_molecule_and_dimer(bent):
    g = _graph(bent, GraphSettings(cutoff=3.0))
    bb = _model(n_frames=4, cutoff=3.0)
    out = _feats(bb, g)
    st = bb.frame_stats
    assert torch.isfinite(out).all()
    # triatomic: one valid pair per atom; dimer atoms: a single neighbour, no pair at all
    assert st["frames"] == 3 and st["fallback_frames"] == 3 * 3 + 2 * 4
    assert st["atoms_without_frame"] == 2 and st["skipped_collinear_pairs"] == 0
    assert torch.equal(out, _feats(bb, g))
    for proper in (True, False):
        assert (_feats(bb, _rotated(g, _orthogonal(2, proper))) - out).abs().max() < TOL
    g2 = g.clone()
    g2.pos = g.pos.clone().requires_grad_(True)
    bb(g2)[K.NODE_FEATURES].sum().backward()
    assert torch.isfinite(g2.pos.grad).all()


def test_atom_without_edges(si):
    g = _graph(si)
    keep = g.edge_index[1] != 0
    g.edge_index = g.edge_index[:, keep]
    g.cell_shift = g.cell_shift[keep]
    bb = _model()
    out = _feats(bb, g)
    assert torch.isfinite(out).all() and bb.frame_stats["atoms_without_frame"] == 1
