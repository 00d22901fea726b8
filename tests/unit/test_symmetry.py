"""Physical symmetries of every backbone x head combination (float64).

A reusable suite: :data:`COMBOS` lists (backbone, task) pairs; each test is parametrised over
them and checks, on predictions in physical units (Cartesian tensors):

- rotations, proper and improper (``R = -R_proper``), of positions and cell: scalars are
  invariant, a rank-n tensor transforms with ``R`` on every index, per-atom tensors
  transform per atom; piezoelectric tensors flip sign under the inversion;
- translations and atom permutations;
- a 2x1x1 supercell leaves intensive (mean-pooled) outputs unchanged (BatchNorm in eval mode);
- index symmetries of the outputs (``C_ijkl = C_jikl = C_klij``, ``e_ijk = e_ikj``,
  ``eps_ij = eps_ji``);
- centrosymmetric crystals get an exactly zero piezoelectric tensor (<= 1e-10);
- predicted tensors obey the point group of real low-symmetry crystals.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from torch_geometric.loader import DataLoader

from matxfer import keys as K
from matxfer.data.graphs import GraphSettings, structure_to_graph
from matxfer.models.registry import BACKBONES, build_model
from matxfer.tasks import make_task

# --------------------------------------------------------------------------------------
# models under test (tiny configs, built once in float64)
# --------------------------------------------------------------------------------------

TINY_BACKBONES = {
    "cgcnn": {"name": "cgcnn", "width": 16, "n_conv": 2},
    "cgcnn-attention": {"name": "cgcnn-attention", "width": 16, "n_conv": 2},
    "equivariant": {
        "name": "equivariant",
        "hidden_irreps": "4x0e+4x0o+2x1o+2x1e+2x2e+2x2o+1x3o+1x3e+1x4e",
        "n_layers": 2,
        "radial_hidden": [16],
    },
}

#: tasks each backbone is tested with (target key -> head config)
TASK_HEADS = {
    "cgcnn": {K.BAND_GAP: {"name": "scalar", "hidden": [8]}},
    "cgcnn-attention": {K.BAND_GAP: {"name": "scalar", "hidden": [8]}},
    "equivariant": {
        K.BAND_GAP: {"name": "scalar", "hidden": [8]},
        K.DIELECTRIC_TOTAL: {"name": "tensor", "hidden_irreps": "4x0e+2x2e"},
        K.PIEZO_TENSOR: {"name": "tensor", "hidden_irreps": "4x0e+2x1o+2x2o+2x3o"},
        K.ELASTIC_TENSOR: {"name": "tensor", "hidden_irreps": "4x0e+2x2e+2x4e"},
        K.BORN_CHARGES: {"name": "born", "hidden_irreps": "4x0e+2x1e+2x2e"},
    },
}

COMBOS = [(bb, task) for bb, heads in TASK_HEADS.items() for task in heads]
TENSOR_COMBOS = [(bb, t) for bb, t in COMBOS if make_task(t).kind == "tensor"]
RANK = {K.BAND_GAP: 0, K.DIELECTRIC_TOTAL: 2, K.PIEZO_TENSOR: 3, K.ELASTIC_TENSOR: 4}
LETTERS = "abcd"

ATOL = 1e-9  # float64 tolerance relative to O(1) outputs



def _fit_normalizers(model, seed: int = 0) -> None:
    """Non-trivial normalisers (random means/scales) so de-normalisation is tested too."""
    g = torch.Generator().manual_seed(seed)
    for name, norm in model.normalizers.items():
        task = make_task(name)
        if task.kind == "scalar":
            norm.fit(torch.randn(20, generator=g, dtype=torch.float64) * 3 + 1)
        else:
            t = torch.randn(40, *([3] * task.rank), generator=g, dtype=torch.float64)
            if task.rank in (2, 4):  # give the l = 0 parts a non-zero mean
                eye = torch.eye(3, dtype=torch.float64)
                t = t + 2.0 * (eye if task.rank == 2 else torch.einsum("ij,kl->ijkl", eye, eye))
            norm.fit(t)


@pytest.fixture(scope="module")
def models():
    """One PropertyModel per backbone (all its test heads), built in float64, eval mode."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = {}
        for bb, cfg in TINY_BACKBONES.items():
            torch.manual_seed(0)
            heads = TASK_HEADS[bb]
            tasks = {t: make_task(t) for t in heads}
            model = build_model({"backbone": cfg, "heads": heads}, tasks)
            _fit_normalizers(model)
            model.eval()
            out[bb] = model
    finally:
        torch.set_default_dtype(old)
    return out


def _settings(bb: str) -> GraphSettings:
    d = dict(BACKBONES[bb].graph_defaults)
    return GraphSettings(**{k: v for k, v in d.items() if k in GraphSettings.__dataclass_fields__})


def _batch(graphs):
    return next(iter(DataLoader(list(graphs), batch_size=len(graphs), shuffle=False)))


def _graph(bb: str, s: Structure):
    return structure_to_graph(s, _settings(bb))


@torch.no_grad()
def _predict(model, graphs) -> dict[str, torch.Tensor]:
    return model.predict(_batch(graphs))


def _transform_graph(g, rot: torch.Tensor):
    """Rotate positions and cell rows by ``rot`` (edges and image shifts unchanged)."""
    g = g.clone()
    g.pos = g.pos @ rot.T
    g.cell = g.cell @ rot.T
    return g


def _rotate_tensor(t: torch.Tensor, rot: torch.Tensor, rank: int) -> torch.Tensor:
    """Apply ``rot`` on each of the last ``rank`` indices of ``t [..., 3, ..., 3]``."""
    if rank == 0:
        return t
    src = LETTERS[:rank]
    dst = "".join(c.upper() for c in src)
    rots = ",".join(f"{d}{s}" for d, s in zip(dst, src))
    return torch.einsum(f"{rots},...{src}->...{dst}", *([rot] * rank), t)


def _random_rotation(seed: int) -> torch.Tensor:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return torch.tensor(q, dtype=torch.float64)


# --------------------------------------------------------------------------------------
# structures
# --------------------------------------------------------------------------------------


def _srtio3() -> Structure:
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def _distorted_centrosymmetric(seed: int = 3) -> Structure:
    """Triclinic P-1 crystal: random atoms plus their inversion images (generic positions)."""
    rng = np.random.default_rng(seed)
    lat = Lattice.from_parameters(5.1, 5.7, 6.3, 78, 101, 113)
    half = rng.random((3, 3))
    frac = np.concatenate([half, -half]) % 1.0
    return Structure(lat, ["Li", "O", "Fe"] * 2, frac)


def _orthorhombic() -> Structure:
    """Polar orthorhombic crystal (Pmm2, point group mm2), coordinates exact in binary."""
    return Structure(
        Lattice.orthorhombic(4.3, 5.1, 5.6),
        ["Zn", "O", "S", "O"],
        [[0, 0, 0.0625], [0.5, 0.5, 0.3125], [0, 0.5, 0.625], [0.5, 0, 0.8125]],
    )


def _wurtzite() -> Structure:
    """Wurtzite ZnO (P6_3mc) from its exact Wyckoff positions.

    (``Structure.from_spacegroup`` leaves ~1e-10 A noise on the coordinates, enough to
    break the point group at the 1e-9 level this suite checks.)
    """
    u = 0.382
    return Structure(
        Lattice.hexagonal(3.25, 5.21),
        ["Zn", "Zn", "O", "O"],
        [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, u], [2 / 3, 1 / 3, 0.5 + u]],
    )


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bb,task", COMBOS)
@pytest.mark.parametrize("improper", [False, True], ids=["proper", "improper"])
def test_rotation_equivariance(models, f64, skewed, batio3, bb, task, improper):
    model = models[bb]
    graphs = [_graph(bb, skewed), _graph(bb, batio3)]
    before = _predict(model, graphs)[task]
    for seed in (1, 2):
        rot = _random_rotation(seed)
        if improper:
            rot = -rot
        after = _predict(model, [_transform_graph(g, rot) for g in graphs])[task]
        if task == K.BORN_CHARGES:
            expected = _rotate_tensor(before, rot, 2)
        else:
            expected = _rotate_tensor(before, rot, RANK[task])
        scale = float(before.abs().max())
        assert scale > 1e-6, "degenerate (all-zero) output makes the test vacuous"
        torch.testing.assert_close(after, expected, atol=ATOL * max(1.0, scale), rtol=1e-9)


@pytest.mark.parametrize("bb,task", [c for c in COMBOS if c[1] == K.PIEZO_TENSOR])
def test_inversion_flips_piezo(models, f64, zno, bb, task):
    model = models[bb]
    g = _graph(bb, zno)
    before = _predict(model, [g])[task]
    after = _predict(model, [_transform_graph(g, -torch.eye(3))])[task]
    assert float(before.abs().max()) > 1e-6
    torch.testing.assert_close(after, -before, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("bb,task", COMBOS)
def test_translation_invariance(models, f64, skewed, zno, bb, task):
    model = models[bb]
    shifted = []
    for s, vec in ((skewed, [0.7, -1.3, 2.9]), (zno, [0.31, 0.12, -0.45])):
        t = s.copy()
        t.translate_sites(list(range(len(t))), vec, frac_coords=False, to_unit_cell=True)
        shifted.append(t)
    a = _predict(model, [_graph(bb, skewed), _graph(bb, zno)])[task]
    b = _predict(model, [_graph(bb, s) for s in shifted])[task]
    torch.testing.assert_close(a, b, atol=ATOL * max(1.0, float(a.abs().max())), rtol=1e-9)


@pytest.mark.parametrize("bb,task", COMBOS)
def test_permutation_invariance(models, f64, batio3, bb, task):
    model = models[bb]
    perm = [3, 0, 4, 2, 1]
    permuted = Structure.from_sites([batio3[i] for i in perm])
    a = _predict(model, [_graph(bb, batio3)])[task]
    b = _predict(model, [_graph(bb, permuted)])[task]
    if task == K.BORN_CHARGES:
        a = a[perm]  # per-atom outputs follow the atoms
    torch.testing.assert_close(a, b, atol=ATOL * max(1.0, float(a.abs().max())), rtol=1e-9)


@pytest.mark.parametrize("bb,task", COMBOS)
def test_supercell_invariance(models, f64, skewed, batio3, bb, task):
    model = models[bb]
    for s in (skewed, batio3):
        sc = s.copy()
        sc.make_supercell([2, 1, 1])
        a = _predict(model, [_graph(bb, s)])[task]
        b = _predict(model, [_graph(bb, sc)])[task]
        if task == K.BORN_CHARGES:
            # supercell sites are the original sites, each repeated twice in a row
            a = a.repeat_interleave(2, dim=0)
        tol = ATOL * max(1.0, float(a.abs().max()))
        torch.testing.assert_close(a, b, atol=tol, rtol=1e-8)


@pytest.mark.parametrize("bb,task", TENSOR_COMBOS)
def test_index_symmetries(models, f64, skewed, zno, bb, task):
    t = _predict(models[bb], [_graph(bb, skewed), _graph(bb, zno)])[task]
    perms = {
        K.DIELECTRIC_TOTAL: [(0, 2, 1)],
        K.PIEZO_TENSOR: [(0, 1, 3, 2)],
        K.ELASTIC_TENSOR: [(0, 2, 1, 3, 4), (0, 3, 4, 1, 2), (0, 1, 2, 4, 3)],
    }[task]
    assert float(t.abs().max()) > 1e-6
    for p in perms:
        torch.testing.assert_close(t.permute(*p), t, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "make",
    [lambda nacl: nacl, lambda nacl: _srtio3(), lambda nacl: _distorted_centrosymmetric()],
    ids=["rocksalt-NaCl", "cubic-SrTiO3", "triclinic-P-1"],
)
def test_centrosymmetric_zero_piezo(models, f64, nacl, zno, make):
    s = make(nacl)
    assert SpacegroupAnalyzer(s, symprec=1e-3).is_laue()
    model = models["equivariant"]
    out = _predict(model, [_graph("equivariant", s), _graph("equivariant", zno)])
    piezo = out[K.PIEZO_TENSOR]
    assert float(piezo[0].abs().max()) <= 1e-10
    assert float(piezo[1].abs().max()) > 1e-6  # the polar crystal in the same batch is not zero


@pytest.mark.parametrize("bb,task", TENSOR_COMBOS + [c for c in COMBOS if c[1] == K.BORN_CHARGES])
@pytest.mark.parametrize("which", ["wurtzite-ZnO", "tetragonal-BaTiO3", "orthorhombic"])
def test_point_group(models, f64, batio3, bb, task, which):
    structures = {
        "wurtzite-ZnO": _wurtzite(),
        "tetragonal-BaTiO3": batio3,
        "orthorhombic": _orthorhombic(),
    }
    s = structures[which]
    sga = SpacegroupAnalyzer(s, symprec=1e-3)
    ops = sga.get_symmetry_operations(cartesian=True)
    expected_group = {"wurtzite-ZnO": "6mm", "tetragonal-BaTiO3": "4mm", "orthorhombic": "mm2"}
    assert sga.get_point_group_symbol() == expected_group[which]
    pred = _predict(models[bb], [_graph(bb, s)])[task]
    scale = max(1.0, float(pred.abs().max()))
    if task == K.BORN_CHARGES:
        frac = s.frac_coords
        for op in ops:
            rot = torch.tensor(op.rotation_matrix, dtype=torch.float64)
            # atom i is mapped onto atom j; Z*_j = R Z*_i R^T
            moved = s.lattice.get_fractional_coords(op.operate_multi(s.cart_coords))
            for i in range(len(s)):
                d = frac - moved[i]
                d -= np.round(d)
                j = int(np.argmin(np.linalg.norm(d @ s.lattice.matrix, axis=1)))
                expected = _rotate_tensor(pred[i], rot, 2)
                torch.testing.assert_close(pred[j], expected, atol=1e-9 * scale, rtol=1e-8)
        return
    t = pred[0]
    assert float(t.abs().max()) > 1e-6
    for op in ops:
        rot = torch.tensor(op.rotation_matrix, dtype=torch.float64)
        torch.testing.assert_close(
            _rotate_tensor(t, rot, RANK[task]), t, atol=1e-9 * scale, rtol=1e-8
        )


def test_attention_stable_for_huge_logits(f64):
    from matxfer.models.backbones.cgcnn import AttentionConv

    torch.manual_seed(0)
    conv = AttentionConv(width=4, edge_dim=3)
    n = 5
    src = torch.tensor([1, 2, 3, 4, 0, 0, 2])
    dst = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    v = torch.randn(n, 4) * 100.0  # <v_i, v_j> ~ 1e4
    u = torch.rand(len(src), 3) + 0.5
    logits = (v[dst] * v[src]).sum(-1) * (u * u).sum(-1)
    assert float(logits.abs().max()) > 1e4
    c = conv.attention(v, src, dst, u)
    assert torch.isfinite(c).all()
    sums = torch.zeros(n).index_add_(0, dst, c)
    torch.testing.assert_close(sums[[0, 1, 2]], torch.ones(3))
    # the reference softmax over atom 0's edges, computed in a stable way by hand
    ref = torch.softmax(logits[:4], dim=0)
    torch.testing.assert_close(c[:4], ref)
    out = conv(v, src, dst, u)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[3], v[3])  # an atom without incoming edges is unchanged
