"""Tensor algebra: Voigt forms, irreps, rotations, point-group symmetry and derived scalars."""

from __future__ import annotations

import ast
import contextlib
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from matxfer import tensors as T
from matxfer.paths import data_dir

ELASTIC_FILE = Path("mp_elasticity_2024_mp_tests") / "mp_elasticity_conventional_4-9-24.json.gz"
PIEZO_FILE = Path("matminer_v0.4.1") / "piezoelectric_tensor.csv.gz"
EXPECTED_IRREPS = {
    "ij=ji": "1x0e+1x2e",
    "ijk=ikj": "2x1o+1x2o+1x3o",
    "ijkl=jikl=klij": "2x0e+2x2e+1x4e",
    "ij": "1x0e+1x1e+1x2e",
}
RANK = {"ij=ji": 2, "ijk=ikj": 3, "ijkl=jikl=klij": 4, "ij": 2}


@contextlib.contextmanager
def _float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _random_voigt(rank: int, rng: np.random.Generator) -> np.ndarray:
    if rank == 2:
        return rng.normal(size=6)
    if rank == 3:
        return rng.normal(size=(3, 6))
    a = rng.normal(size=(6, 6))
    return a + a.T


def _data_file(rel: Path) -> Path:
    path = data_dir() / rel
    if not path.is_file():
        pytest.skip(f"{rel} not found under {data_dir()} (set MATXFER_DATA_DIR)")
    return path


def _first_docs(path: Path, n: int) -> dict[str, dict]:
    """The first ``n`` entries of a gzip JSON object, parsed incrementally (the file is large)."""
    dec = json.JSONDecoder()
    out: dict[str, dict] = {}
    buf, pos = "", 0
    with gzip.open(path, "rt") as fh:

        def more() -> bool:
            nonlocal buf, pos
            chunk = fh.read(1 << 20)
            buf, pos = buf[pos:] + chunk, 0
            return bool(chunk)

        more()
        pos = buf.index("{") + 1
        while len(out) < n:
            try:
                while buf[pos] in " \n\r\t,":
                    pos += 1
                key, p = dec.raw_decode(buf, pos)
                p = buf.index(":", p) + 1
                while buf[p] in " \n\r\t":
                    p += 1
                doc, p = dec.raw_decode(buf, p)
            except (ValueError, IndexError):
                if not more():
                    break
                continue
            out[key], pos = doc, p
    return out


@pytest.fixture(scope="module")
def real_elastic() -> list[np.ndarray]:
    docs = _first_docs(_data_file(ELASTIC_FILE), 50)
    vs = [np.array(d["elastic_tensor"]["raw"], dtype=float) for d in docs.values()]
    return [0.5 * (v + v.T) for v in vs]


@pytest.fixture(scope="module")
def real_piezo():
    import pandas as pd

    return pd.read_csv(_data_file(PIEZO_FILE), skiprows=1, nrows=50)


# ------------------------------------------------------------------------------- Voigt


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_voigt_round_trip_and_pymatgen(rank):
    from pymatgen.core.tensors import Tensor

    rng = np.random.default_rng(rank)
    for _ in range(5):
        v = _random_voigt(rank, rng)
        full = T.voigt_to_cartesian(v)
        assert full.shape == (3,) * rank
        np.testing.assert_allclose(full, np.asarray(Tensor.from_voigt(v)), rtol=0, atol=1e-14)
        np.testing.assert_allclose(T.cartesian_to_voigt(full), v, rtol=0, atol=1e-14)
        np.testing.assert_allclose(T.cartesian_to_voigt(full), Tensor(full).voigt, atol=1e-14)
        # explicit rank gives the same; torch input stays torch
        np.testing.assert_array_equal(T.voigt_to_cartesian(v, rank=rank), full)
        ft = T.voigt_to_cartesian(torch.tensor(v), rank=rank)
        assert isinstance(ft, torch.Tensor) and ft.dtype == torch.float64
        np.testing.assert_array_equal(ft.numpy(), full)
        np.testing.assert_array_equal(T.cartesian_to_voigt(ft).numpy(), v)


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_voigt_batched(rank):
    rng = np.random.default_rng(10 + rank)
    vs = np.stack([_random_voigt(rank, rng) for _ in range(4)])
    full = T.voigt_to_cartesian(vs, rank=rank)
    assert full.shape == (4,) + (3,) * rank
    for v, f in zip(vs, full):
        np.testing.assert_array_equal(T.voigt_to_cartesian(v), f)
    np.testing.assert_allclose(T.cartesian_to_voigt(full, rank=rank), vs, atol=1e-15)


def test_voigt_convention_entries():
    c = np.arange(36, dtype=float).reshape(6, 6)
    full = T.voigt_to_cartesian(c + c.T)
    assert full[1, 2, 0, 1] == (c + c.T)[3, 5]  # 23 -> 4th, 12 -> 6th Voigt index
    e = np.zeros((3, 6))
    e[2, 4] = 1.5  # e_35 = e_zxz
    full = T.voigt_to_cartesian(e)
    assert full[2, 0, 2] == full[2, 2, 0] == 1.5 and np.abs(full).sum() == 3.0


def test_cartesian_to_voigt_takes_symmetric_part():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 3))
    v = T.cartesian_to_voigt(a)
    np.testing.assert_allclose(v[3], 0.5 * (a[1, 2] + a[2, 1]))
    np.testing.assert_allclose(T.voigt_to_cartesian(v), 0.5 * (a + a.T))


@pytest.mark.parametrize("shape", [(5,), (6, 3), (3, 3, 6), (7, 7), (2, 6)])
def test_voigt_bad_shapes(shape):
    with pytest.raises(ValueError, match="shape"):
        T.voigt_to_cartesian(np.zeros(shape))


@pytest.mark.parametrize("shape", [(3,), (3, 4), (3, 3, 2), (3, 3, 3, 3, 3)])
def test_cartesian_bad_shapes(shape):
    with pytest.raises(ValueError, match="shape"):
        T.cartesian_to_voigt(np.zeros(shape))


# ------------------------------------------------------------------------------ irreps


@pytest.mark.parametrize("formula", list(EXPECTED_IRREPS))
def test_irreps_of(formula):
    from e3nn import o3

    assert T.irreps_of(formula) == o3.Irreps(EXPECTED_IRREPS[formula])
    assert T.FORMULAS[formula] == EXPECTED_IRREPS[formula]
    assert T.cartesian_tensor(formula) is T.cartesian_tensor(formula)  # built once
    q = T.change_of_basis(formula)
    assert q is T.change_of_basis(formula, torch.float64, "cpu")
    assert q.shape == (T.irreps_of(formula).dim,) + (3,) * RANK[formula]


@pytest.mark.parametrize("formula", list(EXPECTED_IRREPS))
def test_irreps_round_trip(formula):
    torch.manual_seed(0)
    dim = T.irreps_of(formula).dim
    x = torch.randn(4, 2, dim, dtype=torch.float64)
    t = T.from_irreps(x, formula)
    assert t.shape == (4, 2) + (3,) * RANK[formula]
    torch.testing.assert_close(T.to_irreps(t, formula), x, rtol=0, atol=1e-13)
    # the Cartesian tensor has the index symmetry of the formula
    if formula == "ij=ji":
        torch.testing.assert_close(t, t.transpose(-1, -2), rtol=0, atol=1e-14)
    elif formula == "ijk=ikj":
        torch.testing.assert_close(t, t.transpose(-1, -2), rtol=0, atol=1e-14)
    elif formula == "ijkl=jikl=klij":
        torch.testing.assert_close(t, t.transpose(-3, -4), rtol=0, atol=1e-14)
        torch.testing.assert_close(t, t.permute(0, 1, 4, 5, 2, 3), rtol=0, atol=1e-14)
    # Cartesian -> irreps -> Cartesian on a tensor with the symmetry (from Voigt)
    if formula != "ij":
        rng = np.random.default_rng(1)
        full = torch.tensor(T.voigt_to_cartesian(_random_voigt(RANK[formula], rng)))
    else:
        full = torch.randn(3, 3, dtype=torch.float64)
    back = T.from_irreps(T.to_irreps(full, formula), formula)
    torch.testing.assert_close(back, full, rtol=0, atol=1e-13)


@pytest.mark.parametrize("formula", list(EXPECTED_IRREPS))
def test_irreps_agree_with_e3nn_and_float32(formula):
    torch.manual_seed(1)
    ct = T.cartesian_tensor(formula)
    t = T.from_irreps(torch.randn(3, ct.dim, dtype=torch.float64), formula).float()
    ref = ct.from_cartesian(t)  # e3nn's own (float32) conversion
    ours = T.to_irreps(t, formula)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_irreps_bad_input():
    with pytest.raises(ValueError, match="formula"):
        T.to_irreps(torch.zeros(3, 3), "ijk")
    with pytest.raises(ValueError, match="dimension"):
        T.from_irreps(torch.zeros(5), "ij=ji")
    with pytest.raises(ValueError, match="shape"):
        T.to_irreps(torch.zeros(3, 3), "ijk=ikj")


def test_irreps_differentiable():
    x = torch.randn(2, 21, dtype=torch.float64, requires_grad=True)
    f = "ijkl=jikl=klij"
    assert torch.autograd.gradcheck(lambda y: T.to_irreps(T.from_irreps(y, f) ** 2, f), (x,))


@pytest.mark.parametrize("formula", list(EXPECTED_IRREPS))
@pytest.mark.parametrize("improper", [False, True])
def test_irreps_rotation_matches_cartesian(formula, improper):
    from e3nn import o3

    torch.manual_seed(2)
    irreps = T.irreps_of(formula)
    x = torch.randn(3, irreps.dim, dtype=torch.float64)
    for _ in range(3):
        R = o3.rand_matrix(dtype=torch.float64)
        if improper:
            R = -R
        with _float64_default():  # e3nn builds the Wigner matrices in the default dtype
            D = irreps.D_from_matrix(R)
        lhs = T.from_irreps(x @ D.T, formula)
        rhs = T.rotate(T.from_irreps(x, formula), R, rank=RANK[formula])
        torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- rotations


def test_inversion_parity():
    rng = np.random.default_rng(4)
    inv = -np.eye(3)
    e = T.voigt_to_cartesian(_random_voigt(3, rng))
    np.testing.assert_allclose(T.rotate(e, inv), -e, atol=0)
    for rank in (2, 4):
        t = T.voigt_to_cartesian(_random_voigt(rank, rng))
        np.testing.assert_allclose(T.rotate(t, inv), t, atol=0)


def test_rotate_matches_pymatgen_and_batches():
    from pymatgen.core.tensors import Tensor
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(5)
    Rs = Rotation.random(4, random_state=5).as_matrix()
    C = T.voigt_to_cartesian(_random_voigt(4, rng))
    for R in Rs:
        np.testing.assert_allclose(T.rotate(C, R), np.asarray(Tensor(C).rotate(R)), atol=1e-12)
    batched = T.rotate(np.broadcast_to(C, (4, 3, 3, 3, 3)), Rs)
    np.testing.assert_allclose(batched[2], T.rotate(C, Rs[2]), atol=1e-13)
    same_R = T.rotate(np.stack([C, 2 * C]), Rs[0], rank=4)
    np.testing.assert_allclose(same_R[1], 2 * T.rotate(C, Rs[0]), atol=1e-12)
    tt = T.rotate(torch.tensor(C), Rs[0])
    assert isinstance(tt, torch.Tensor)
    np.testing.assert_allclose(tt.numpy(), T.rotate(C, Rs[0]), atol=1e-13)


def test_point_group_symmetrize(zno, nacl):
    rots = T.point_group_rotations(zno)
    assert rots.shape == (12, 3, 3)  # 6mm
    eye = np.broadcast_to(np.eye(3), rots.shape)
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", rots, rots), eye, atol=1e-8)
    rng = np.random.default_rng(6)
    for rank in (2, 3, 4):
        t = T.voigt_to_cartesian(_random_voigt(rank, rng))
        assert T.symmetry_error(t, rots) > 0.1
        s = T.symmetrize(t, rots)
        assert T.symmetry_error(s, rots) < 1e-8
        np.testing.assert_allclose(T.symmetrize(s, rots), s, atol=1e-12)  # a projection
    # 6mm piezo: only e31 = e32, e33 and e15 = e24 survive (c axis along z)
    ev = T.cartesian_to_voigt(T.symmetrize(T.voigt_to_cartesian(_random_voigt(3, rng)), rots))
    mask = np.zeros((3, 6), dtype=bool)
    mask[2, :3] = mask[0, 4] = mask[1, 3] = True
    assert np.abs(ev[~mask]).max() < 1e-10 and np.abs(ev[mask]).min() > 1e-6
    np.testing.assert_allclose([ev[2, 0], ev[0, 4]], [ev[2, 1], ev[1, 3]], atol=1e-12)
    # a centrosymmetric crystal has no piezoelectric tensor; torch input works too
    rots_nacl = T.point_group_rotations(nacl)
    assert len(rots_nacl) == 48
    e = torch.tensor(T.voigt_to_cartesian(_random_voigt(3, rng)))
    assert T.symmetrize(e, rots_nacl).abs().max() < 1e-12
    assert T.symmetry_error(np.zeros((3, 3, 3)), rots_nacl) == 0.0


# ------------------------------------------------------------------------------ elastic


PYMATGEN_KEYS = {
    "k_voigt": "k_voigt",
    "k_reuss": "k_reuss",
    "k_vrh": "k_vrh",
    "g_voigt": "g_voigt",
    "g_reuss": "g_reuss",
    "g_vrh": "g_vrh",
    "youngs_modulus": "y_mod",
    "poisson_ratio": "homogeneous_poisson",
    "universal_anisotropy": "universal_anisotropy",
}


@pytest.mark.data
def test_elastic_moduli_match_pymatgen_on_real_tensors(real_elastic):
    from pymatgen.analysis.elasticity.elastic import ElasticTensor

    assert len(real_elastic) == 50
    for v in real_elastic:
        ours = T.elastic_moduli(T.voigt_to_cartesian(v))
        et = ElasticTensor.from_voigt(v)
        for key, attr in PYMATGEN_KEYS.items():
            ref = float(getattr(et, attr))
            if attr == "y_mod":
                ref /= 1e9  # pymatgen returns Pa
            assert ours[key] == pytest.approx(ref, rel=1e-8, abs=1e-10), key
        # the Voigt matrix is accepted as well
        assert T.elastic_moduli(v)["k_vrh"] == pytest.approx(ours["k_vrh"], rel=1e-12)


@pytest.mark.data
def test_elastic_torch_matches_numpy(real_elastic):
    C = torch.tensor(np.stack([T.voigt_to_cartesian(v) for v in real_elastic]))
    k, g = T.elastic_kg_vrh_torch(C)
    assert k.shape == g.shape == (len(real_elastic),)
    for i, v in enumerate(real_elastic):
        m = T.elastic_moduli(v)
        assert float(k[i]) == pytest.approx(m["k_vrh"], rel=1e-10)
        assert float(g[i]) == pytest.approx(m["g_vrh"], rel=1e-10)


def _cubic(c11, c12, c44):
    v = np.zeros((6, 6))
    v[:3, :3] = c12
    v[np.arange(3), np.arange(3)] = c11
    v[np.arange(3, 6), np.arange(3, 6)] = c44
    return v


def test_elastic_cubic_analytic_and_singular():
    m = T.elastic_moduli(T.voigt_to_cartesian(_cubic(250.0, 110.0, 80.0)))
    assert m["k_voigt"] == pytest.approx(m["k_reuss"]) == pytest.approx((250 + 2 * 110) / 3)
    assert m["g_voigt"] == pytest.approx((250 - 110 + 3 * 80) / 5)
    sing = T.voigt_to_cartesian(_cubic(100.0, 100.0, 50.0))  # c11 = c12: singular
    ms = T.elastic_moduli(sing)
    assert np.isfinite(ms["k_voigt"]) and np.isfinite(ms["g_voigt"])
    for key in ("k_reuss", "g_reuss", "k_vrh", "g_vrh", "youngs_modulus", "universal_anisotropy"):
        assert np.isnan(ms[key]), key
    good = T.voigt_to_cartesian(_cubic(250.0, 110.0, 80.0))
    k, g = T.elastic_kg_vrh_torch(torch.tensor(np.stack([sing, good])))
    assert torch.isnan(k[0]) and torch.isnan(g[0]) and float(k[1]) == pytest.approx(m["k_vrh"])
    with pytest.raises(ValueError, match="shape"):
        T.elastic_moduli(np.zeros((3, 3, 3)))


def test_positive_definite():
    stable = T.voigt_to_cartesian(_cubic(250.0, 110.0, 80.0))  # Born: c11 > |c12|, c44 > 0
    unstable = T.voigt_to_cartesian(_cubic(100.0, 150.0, 50.0))  # c11 < c12: shear instability
    assert T.is_positive_definite(stable) and T.is_positive_definite(_cubic(250.0, 110.0, 80.0))
    assert not T.is_positive_definite(unstable)
    assert not T.is_positive_definite(T.voigt_to_cartesian(_cubic(250.0, 110.0, -1.0)))
    # Voigt and Mandel matrices agree on definiteness (congruent matrices)
    d = np.diag([1, 1, 1, 2**0.5, 2**0.5, 2**0.5])
    for v in (_cubic(250.0, 110.0, 80.0), _cubic(100.0, 150.0, 50.0)):
        assert (np.linalg.eigvalsh(d @ v @ d).min() > 0) == T.is_positive_definite(v)
    assert T.is_positive_definite(np.diag([1.0, 2.0, 3.0]))
    assert not T.is_positive_definite(np.diag([1.0, -0.1, 3.0]))
    assert not T.is_positive_definite(np.diag([1.0, 1e-3, 3.0]), tol=1e-2)
    with pytest.raises(ValueError, match="shape"):
        T.is_positive_definite(np.zeros((3, 3, 3)))


def test_mean_eigenvalue():
    from scipy.spatial.transform import Rotation

    R = Rotation.random(random_state=0).as_matrix()
    eps = R @ np.diag([2.0, 3.0, 7.0]) @ R.T
    assert T.mean_eigenvalue(eps) == pytest.approx(4.0)
    np.testing.assert_allclose(T.mean_eigenvalue(np.stack([eps, 2 * eps])), [4.0, 8.0])
    assert float(T.mean_eigenvalue(torch.tensor(eps))) == pytest.approx(4.0)


# --------------------------------------------------------------------------- piezo max


def test_eij_max_analytic():
    # -43m (zinc blende): f(n) = 3 e14 n1 n2 n3 (de Jong) and 6 e14 n1 n2 n3 (longitudinal),
    # maximal along <111>
    e14 = -0.15842
    e = np.zeros((3, 6))
    e[0, 3] = e[1, 4] = e[2, 5] = e14
    val, n = T.eij_max(e, return_direction=True)
    assert val == pytest.approx(abs(e14) / 3**0.5, rel=1e-12)
    np.testing.assert_allclose(np.abs(n), np.full(3, 3**-0.5), atol=1e-7)
    longi = T.eij_max(T.voigt_to_cartesian(e), convention="longitudinal")
    assert longi == pytest.approx(2 * abs(e14) / 3**0.5, rel=1e-12)
    # only e33: maximum along z
    e = np.zeros((3, 6))
    e[2, 2] = 1.3
    assert T.eij_max(e) == pytest.approx(1.3, rel=1e-12)
    # the longitudinal maximum is frame independent; the de Jong one is not (the half weight
    # on shear terms is no tensor contraction), so it is only defined in the stored frame
    from scipy.spatial.transform import Rotation

    R = Rotation.random(random_state=1).as_matrix()
    rotated = T.rotate(T.voigt_to_cartesian(e), R)
    assert T.eij_max(rotated, convention="longitudinal") == pytest.approx(1.3, rel=1e-10)
    assert T.eij_max(rotated) < 1.25
    assert T.eij_max(np.zeros((3, 3, 3))) == 0.0
    with pytest.raises(ValueError, match="convention"):
        T.eij_max(e, convention="nope")


def test_eij_max_beats_dense_grid():
    rng = np.random.default_rng(8)
    m = 50_000
    k = np.arange(m) + 0.5
    z = 1 - 2 * k / m
    r = np.sqrt(1 - z * z)
    phi = np.pi * (1 + 5**0.5) * k
    pts = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    for _ in range(10):
        e = rng.normal(size=(3, 6))
        for conv in ("dejong2015", "longitudinal"):
            grid_max = np.abs(T.longitudinal_piezo_modulus(e, pts, conv)).max()
            val = T.eij_max(e, convention=conv)
            assert grid_max * (1 - 1e-12) <= val <= grid_max * (1 + 5e-4)


@pytest.mark.data
def test_eij_max_matches_dejong_2015(real_piezo):
    """The stored eij_max is a maximum over a finite set of (Miller-like) directions, rounded to
    6 decimals; the benchmark (benchmarks/results/eij_max_agreement.json) finds our continuous
    maximum never below it by more than the rounding (5e-7) and at most 0.95 % above it for
    values >= 1e-3, while the modulus at the stored v_max reproduces it to 2.2e-4. Tolerances:
    [stored - 1e-6, stored * 1.01 + 1e-6], and 1e-3 relative (+1e-6) at v_max."""
    assert len(real_piezo) == 50
    for _, row in real_piezo.iterrows():
        e = np.array(ast.literal_eval(row["piezoelectric_tensor"]), dtype=float)
        stored = float(row["eij_max"])
        val = T.eij_max(e)
        assert stored - 1e-6 <= val <= stored * 1.01 + 1e-6, row["material_id"]
        v = np.array(ast.literal_eval(row["v_max"]), dtype=float)
        at_v = abs(float(T.longitudinal_piezo_modulus(e, v)))
        assert at_v == pytest.approx(stored, rel=1e-3, abs=1e-6)
