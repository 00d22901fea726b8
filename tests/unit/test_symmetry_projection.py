"""Exact crystal symmetry: point groups, the Reynolds projection, forbidden components, and
graphs whose neighbour cut keeps the point group."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp
from scipy.spatial.transform import Rotation

from matxfer.data.graphs import GraphSettings, structure_to_graph
from matxfer.data.records import symmetrize_indices
from matxfer.metrics import stored_layout, tensor_metrics
from matxfer.symmetry import (
    forbidden_mask,
    graph_point_group,
    project,
    project_predictions,
    structure_point_group,
)
from matxfer.tensors import rotate, symmetry_error

FORMULAS = {2: "ij=ji", 3: "ijk=ikj", 4: "ijkl=jikl=klij"}


def _generic(formula: str, seed: int = 0) -> np.ndarray:
    rank = len(formula.split("=")[0])
    t = np.random.default_rng(seed).standard_normal((3,) * rank)
    return symmetrize_indices(t, formula)


def _crystals() -> dict[str, Structure]:
    """One crystal of every crystal system, built in code."""
    return {
        "cubic (m-3m)": Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
        ),
        "cubic (-43m)": Structure.from_spacegroup(
            "F-43m", Lattice.cubic(5.65), ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]]
        ),
        "hexagonal (6mm)": Structure.from_spacegroup(
            "P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
        ),
        "trigonal (3m)": Structure.from_spacegroup(
            "R3c", Lattice.hexagonal(5.15, 13.86), ["Li", "Nb", "O"],
            [[0, 0, 0.2829], [0, 0, 0], [0.0492, 0.3446, 0.0647]],
        ),
        "tetragonal (4mm)": Structure(
            Lattice.tetragonal(3.99, 4.03), ["Ba", "Ti", "O", "O", "O"],
            [[0, 0, 0], [0.5, 0.5, 0.515], [0.5, 0.5, 0.986], [0.5, 0, 0.486], [0, 0.5, 0.486]],
        ),
        "orthorhombic (mm2)": Structure.from_spacegroup(
            "Pmn2_1", Lattice.orthorhombic(4.1, 5.3, 6.2), ["Zn", "S"], [[0, 0.1, 0.0], [0, 0.35, 0.38]]
        ),
        "monoclinic (2)": Structure.from_spacegroup(
            "P2_1", Lattice.monoclinic(4.1, 5.3, 6.2, 103), ["Li", "O"], [[0.1, 0.2, 0.3], [0.37, 0.61, 0.12]]
        ),
        "triclinic (1)": Structure(
            Lattice.from_parameters(4.1, 5.3, 6.2, 71, 97, 112), ["Li", "Fe", "O", "O"],
            np.random.default_rng(7).random((4, 3)),
        ),
    }


CRYSTALS = _crystals()
EXPECTED_SYMBOLS = {
    "cubic (m-3m)": "m-3m", "cubic (-43m)": "-43m", "hexagonal (6mm)": "6mm", "trigonal (3m)": "3m",
    "tetragonal (4mm)": "4mm", "orthorhombic (mm2)": "mm2", "monoclinic (2)": "2", "triclinic (1)": "1",
}


def _rotated(structure: Structure, q: np.ndarray) -> Structure:
    s = structure.copy()
    s.apply_operation(SymmOp.from_rotation_and_translation(q, [0, 0, 0]))
    return s


@pytest.mark.parametrize("name", list(CRYSTALS))
def test_point_group_of_every_crystal_system(name):
    pg = structure_point_group(CRYSTALS[name])
    assert pg.symbol == EXPECTED_SYMBOLS[name]
    for r in pg.rotations:  # orthogonal, and the set is closed under products
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-10)
    for a in pg.rotations:
        for b in pg.rotations:
            assert min(np.abs(a @ b - c).max() for c in pg.rotations) < 1e-8
    assert pg.centrosymmetric == (name == "cubic (m-3m)")


@pytest.mark.parametrize("name", list(CRYSTALS))
@pytest.mark.parametrize("improper", [False, True])
def test_projection_is_equivariant_under_rotations_of_the_crystal(name, improper):
    """Rotating the crystal by Q (proper or improper) rotates the projected tensor by Q."""
    s = CRYSTALS[name]
    q = Rotation.random(random_state=3).as_matrix()
    if improper:
        q = -q
    g0 = structure_point_group(s).rotations
    g1 = structure_point_group(_rotated(s, q)).rotations
    assert len(g0) == len(g1)
    for rank, formula in FORMULAS.items():
        t = _generic(formula, seed=rank)
        a = rotate(project(t, g0), q)
        b = project(rotate(t, q), g1)
        np.testing.assert_allclose(a, b, atol=1e-9 * np.abs(t).max())


@pytest.mark.parametrize("name", list(CRYSTALS))
def test_projection_is_idempotent_invariant_and_keeps_symmetric_tensors(name):
    g = structure_point_group(CRYSTALS[name]).rotations
    for formula in FORMULAS.values():
        t = _generic(formula)
        p = project(t, g)
        np.testing.assert_array_equal(project(p, g) == 0, p == 0)
        np.testing.assert_allclose(project(p, g), p, atol=1e-12)
        assert symmetry_error(p, g) < 1e-12
        # the index symmetry of the formula is kept
        np.testing.assert_allclose(symmetrize_indices(p, formula), p, atol=1e-12)


def test_forbidden_components_are_exactly_zero():
    # wurtzite 6mm: e15 = e24, e31 = e32, e33 are the only non-zero Voigt piezo components
    g = structure_point_group(CRYSTALS["hexagonal (6mm)"]).rotations
    p = stored_layout(project(_generic("ijk=ikj"), g)[None], "ijk=ikj")[0]
    allowed = {(0, 4), (1, 3), (2, 0), (2, 1), (2, 2)}
    for i in range(3):
        for j in range(6):
            assert (p[i, j] != 0) == ((i, j) in allowed), (i, j, p[i, j])
    assert p[0, 4] == pytest.approx(p[1, 3]) and p[2, 0] == pytest.approx(p[2, 1])
    np.testing.assert_array_equal(forbidden_mask(g, "ijk=ikj"), p == 0)
    # zinc blende -43m: only e14 = e25 = e36
    g = structure_point_group(CRYSTALS["cubic (-43m)"]).rotations
    p = stored_layout(project(_generic("ijk=ikj"), g)[None], "ijk=ikj")[0]
    assert {(i, j) for i, j in zip(*np.nonzero(p))} == {(0, 3), (1, 4), (2, 5)}
    # cubic dielectric tensor: isotropic, off-diagonals exactly zero
    eps = project(_generic("ij=ji"), g)
    assert (eps[~np.eye(3, dtype=bool)] == 0).all()
    np.testing.assert_allclose(np.diag(eps), np.diag(eps)[0])


def test_centrosymmetric_crystal_has_exactly_zero_piezo_tensor():
    g = structure_point_group(CRYSTALS["cubic (m-3m)"]).rotations
    for seed in range(5):
        p = project(_generic("ijk=ikj", seed), g)
        assert (p == 0).all()
    assert forbidden_mask(g, "ijk=ikj").all()


def test_graph_point_group_matches_structure():
    s = _rotated(CRYSTALS["trigonal (3m)"], Rotation.random(random_state=5).as_matrix())
    g = structure_to_graph(s, GraphSettings(cutoff=5.0))
    a, b = graph_point_group(g), structure_point_group(s)
    assert a.symbol == b.symbol == "3m"
    np.testing.assert_allclose(np.sort(a.rotations.reshape(len(a.rotations), -1), 0),
                               np.sort(b.rotations.reshape(len(b.rotations), -1), 0), atol=1e-5)


def test_project_predictions_in_place_and_metrics_count_exact_zeros():
    s = CRYSTALS["cubic (m-3m)"]
    z = CRYSTALS["hexagonal (6mm)"]
    graphs = [structure_to_graph(x, GraphSettings(cutoff=5.0)) for x in (s, z)]
    preds = [{"piezo_tensor": _generic("ijk=ikj", i), "band_gap": np.array([1.0])} for i in range(2)]
    groups = project_predictions(preds, graphs, {"piezo_tensor": "ijk=ikj"})
    assert [pg.centrosymmetric for pg in groups] == [True, False]
    assert (preds[0]["piezo_tensor"] == 0).all() and preds[0]["band_gap"][0] == 1.0
    true = np.stack([np.zeros((3, 3, 3)), project(_generic("ijk=ikj", 9), groups[1].rotations)])
    pred = np.stack([p["piezo_tensor"] for p in preds])
    fb = np.stack([forbidden_mask(pg.rotations, "ijk=ikj") for pg in groups])
    m = tensor_metrics(pred, true, "ijk=ikj", np.array([True, False]), fb)
    assert m["forbidden_exact_zero"] == 1.0 and m["n_forbidden"] == 18 + 13
    assert m["cs_exact_zero"] == 1.0 and m["ncs_n"] == 1 and m["nz_n"] == 1


# --- graphs that keep the point group ---------------------------------------------------------


def _edge_vectors(g) -> dict[int, np.ndarray]:
    pos = g.pos.double().numpy()
    cell = g.cell.double().numpy()[0]
    src, dst = g.edge_index.numpy()
    vec = pos[src] + g.cell_shift.double().numpy() @ cell - pos[dst]
    return {i: vec[dst == i] for i in range(len(pos))}


def _vector_set_invariant(vecs: np.ndarray, r: np.ndarray) -> bool:
    rv = vecs @ r.T
    return all(np.abs(rv - v).max(axis=1).min() < 1e-6 for v in vecs) and len(rv) == len(vecs)


def test_max_neighbors_cut_keeps_whole_shells_and_the_point_group():
    # rock salt with 12 neighbours: 6 Cl at a/2, then 12 Na at a/sqrt(2): a cut at 12 splits
    # the second shell; keep_shell keeps all 18
    s = CRYSTALS["cubic (m-3m)"].get_primitive_structure()
    old = structure_to_graph(s, GraphSettings(cutoff=8.0, max_neighbors=12, keep_shell=False))
    new = structure_to_graph(s, GraphSettings(cutoff=8.0, max_neighbors=12))
    assert old.edge_index.shape[1] == 24 and new.edge_index.shape[1] == 36
    pg = structure_point_group(s).rotations
    # each atom sits on an m-3m site: its neighbour set must be invariant under all 48 ops
    v_old, v_new = _edge_vectors(old), _edge_vectors(new)
    assert all(_vector_set_invariant(v_new[i], r) for i in v_new for r in pg)
    assert not all(_vector_set_invariant(v_old[i], r) for i in v_old for r in pg)


def test_equivariant_model_output_obeys_point_group_with_whole_shells():
    """With whole shells, the raw output of an equivariant model already obeys the point group
    to float precision (float64), so the projection changes it only at rounding level."""
    from matxfer.models.registry import build_model
    from matxfer.tasks import make_task

    torch.manual_seed(0)
    s = CRYSTALS["hexagonal (6mm)"]
    settings = GraphSettings(cutoff=4.0, max_neighbors=8)
    task = make_task("piezo_tensor")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = build_model(
            {"backbone": {"name": "equivariant", "n_layers": 1, "cutoff": 4.0,
                          "hidden_irreps": "4x0e+4x0o+2x1o+2x1e+1x2e+1x2o+1x3o+1x3e"},
             "heads": {"piezo_tensor": {"name": "tensor", "formula": "ijk=ikj"}}},
            {"piezo_tensor": task},
        )
        model.eval()
        from torch_geometric.data import Batch

        def raw(st):
            g = structure_to_graph(s, st)
            return model.predict(Batch.from_data_list([g]))["piezo_tensor"][0].detach().numpy()

        out = raw(settings)
        cut = raw(GraphSettings(cutoff=4.0, max_neighbors=8, keep_shell=False))
    finally:
        torch.set_default_dtype(old)
    rots = structure_point_group(s).rotations
    assert np.abs(out).max() > 1e-6  # a polar crystal: not forced to zero
    assert symmetry_error(out, rots) < 1e-9
    # a cut by atom index through a shell breaks the point group of the same model's output
    assert symmetry_error(cut, rots) > 1e-4
