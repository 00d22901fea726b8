"""Tensor algebra for the tensorial targets: Voigt, irreps, rotations, symmetry, derived scalars.

Conventions (the same as pymatgen and the data README, section 6):

- Voigt order is 11, 22, 33, 23, 13, 12. Voigt arrays carry **no** factor 2 on the shear
  entries: a rank-2 Voigt vector is ``(t11, t22, t33, t23, t13, t12)``, the piezoelectric
  matrix is ``e_iJ = e_ijk`` with ``J <-> (jk)``, and the elastic matrix is
  ``C_IJ = C_ijkl`` with ``I <-> (ij)``, ``J <-> (kl)`` (pymatgen ``Tensor.from_voigt``).
- Cartesian tensors are polar: a rotation ``R`` (proper or improper) acts with ``R`` on every
  index, ``T'_{ab...} = R_ai R_bj ... T_{ij...}``. Under the inversion ``R = -I`` odd-rank
  tensors change sign and even-rank tensors are unchanged.
- Irreps follow ``e3nn.io.CartesianTensor`` with every index a ``1o`` vector:

  ============================  ====================  ==========================
  formula                       target                irreps
  ============================  ====================  ==========================
  ``ij=ji``                     dielectric            ``1x0e+1x2e``
  ``ijk=ikj``                   piezoelectric (e)     ``2x1o+1x2o+1x3o``
  ``ijkl=jikl=klij``            elastic               ``2x0e+2x2e+1x4e``
  ``ij``                        Born charges          ``1x0e+1x1e+1x2e``
  ============================  ====================  ==========================

Units: elastic tensors and moduli in GPa, piezoelectric tensors in C/m^2.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Literal, overload

import numpy as np
import torch

__all__ = [
    "FORMULAS",
    "VOIGT_PAIRS",
    "cartesian_tensor",
    "cartesian_to_voigt",
    "change_of_basis",
    "eij_max",
    "elastic_kg_vrh_torch",
    "elastic_moduli",
    "from_irreps",
    "irreps_of",
    "is_positive_definite",
    "longitudinal_piezo_modulus",
    "mean_eigenvalue",
    "point_group_rotations",
    "rotate",
    "symmetrize",
    "symmetry_error",
    "to_irreps",
    "voigt_to_cartesian",
]

#: Index symmetry formula -> irreps of the symmetric subspace (``e3nn`` notation).
FORMULAS: dict[str, str] = {
    "ij=ji": "1x0e+1x2e",
    "ijk=ikj": "2x1o+1x2o+1x3o",
    "ijkl=jikl=klij": "2x0e+2x2e+1x4e",
    "ij": "1x0e+1x1e+1x2e",
}

#: Cartesian index pair of each Voigt index (order 11, 22, 33, 23, 13, 12; zero based).
VOIGT_PAIRS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))

#: ``_VOIGT_INDEX[i, j]`` is the Voigt index of the Cartesian pair ``(i, j)``.
_VOIGT_INDEX = np.array([[0, 5, 4], [5, 1, 3], [4, 3, 2]], dtype=np.int64)
_PAIR_I = np.array([p[0] for p in VOIGT_PAIRS], dtype=np.int64)
_PAIR_J = np.array([p[1] for p in VOIGT_PAIRS], dtype=np.int64)

_VOIGT_SHAPE_OF_RANK = {2: (6,), 3: (3, 6), 4: (6, 6)}
_RANK_OF_VOIGT_SHAPE = {v: k for k, v in _VOIGT_SHAPE_OF_RANK.items()}

#: Voigt matrices whose condition number exceeds this are treated as singular.
_SINGULAR_COND = 1e13


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _as_array(x: Any) -> np.ndarray | torch.Tensor:
    """Torch tensors pass through; anything else becomes a float numpy array."""
    if _is_torch(x):
        return x
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.inexact):
        arr = arr.astype(np.float64)
    return arr


def _index_like(idx: np.ndarray, like: Any) -> np.ndarray | torch.Tensor:
    if _is_torch(like):
        return torch.as_tensor(idx, device=like.device)
    return idx


def _einsum(expr: str, *ops: Any) -> Any:
    if any(_is_torch(o) for o in ops):
        return torch.einsum(expr, *ops)
    return np.einsum(expr, *ops)


def _check_trailing(t: Any, shape: tuple[int, ...], what: str) -> None:
    if tuple(t.shape[len(t.shape) - len(shape):]) != shape or t.ndim < len(shape):
        raise ValueError(f"{what}: expected an array of shape (..., {', '.join(map(str, shape))}), "
                         f"got shape {tuple(t.shape)}")


# --------------------------------------------------------------------------------------
# Voigt <-> Cartesian
# --------------------------------------------------------------------------------------


def voigt_to_cartesian(arr: Any, rank: int | None = None) -> Any:
    """Full Cartesian tensor from its Voigt form (pymatgen convention, no shear factors).

    Args:
        arr: Voigt array. Without ``rank`` the shape decides: ``(6,)`` is a symmetric rank-2
            tensor ``(t11, t22, t33, t23, t13, t12)``, ``(3, 6)`` a piezoelectric ``e_iJ`` and
            ``(6, 6)`` an elastic ``C_IJ``. With ``rank`` given, leading batch dimensions are
            allowed: ``[..., 6]`` (rank 2), ``[..., 3, 6]`` (rank 3), ``[..., 6, 6]`` (rank 4).
            numpy arrays (or nested lists) and torch tensors are accepted.
        rank: Cartesian rank of the result (2, 3 or 4).

    Returns:
        The Cartesian tensor ``[..., 3, 3]``, ``[..., 3, 3, 3]`` or ``[..., 3, 3, 3, 3]``, of
        the same array type (numpy or torch) as the input.

    Raises:
        ValueError: on a shape that is no Voigt form (of the requested rank).
    """
    a = _as_array(arr)
    shape = tuple(a.shape)
    if rank is None:
        if shape not in _RANK_OF_VOIGT_SHAPE:
            raise ValueError(
                f"cannot tell the rank of a Voigt array of shape {shape}: expected (6,), (3, 6) "
                "or (6, 6), or pass rank= for batched input"
            )
        rank = _RANK_OF_VOIGT_SHAPE[shape]
    if rank not in _VOIGT_SHAPE_OF_RANK:
        raise ValueError(f"rank must be 2, 3 or 4, got {rank}")
    _check_trailing(a, _VOIGT_SHAPE_OF_RANK[rank], f"Voigt array of a rank-{rank} tensor")
    v = _index_like(_VOIGT_INDEX, a)
    if rank == 2:
        return a[..., v]
    if rank == 3:
        return a[..., :, v]
    return a[..., v[:, :, None, None], v[None, None, :, :]]


def cartesian_to_voigt(t: Any, rank: int | None = None) -> Any:
    """Voigt form of a Cartesian tensor (pymatgen convention, no shear factors).

    Entries that the Voigt form merges (e.g. ``t_23`` and ``t_32``) are averaged, so a tensor
    with the index symmetry gives exactly pymatgen's ``Tensor.voigt`` and a slightly
    asymmetric one gives its symmetric part.

    Args:
        t: Cartesian tensor ``(3, 3)``, ``(3, 3, 3)`` (``e_ijk = e_ikj``) or ``(3, 3, 3, 3)``
            (``C_ijkl`` with minor symmetries). With ``rank`` given, leading batch dimensions
            are allowed. numpy arrays and torch tensors are accepted.
        rank: Cartesian rank (2, 3 or 4); inferred from ``t.ndim`` when omitted.

    Returns:
        ``[..., 6]`` (rank 2), ``[..., 3, 6]`` (rank 3) or ``[..., 6, 6]`` (rank 4), of the same
        array type as the input.

    Raises:
        ValueError: on a shape that is not ``(..., 3, ..., 3)`` of rank 2, 3 or 4.
    """
    a = _as_array(t)
    if rank is None:
        rank = a.ndim
    if rank not in (2, 3, 4):
        raise ValueError(
            f"expected a Cartesian tensor of shape (3, 3), (3, 3, 3) or (3, 3, 3, 3), "
            f"got shape {tuple(a.shape)}"
        )
    _check_trailing(a, (3,) * rank, f"Cartesian rank-{rank} tensor")
    pi = _index_like(_PAIR_I, a)
    pj = _index_like(_PAIR_J, a)
    if rank == 2:
        return 0.5 * (a[..., pi, pj] + a[..., pj, pi])
    if rank == 3:
        return 0.5 * (a[..., :, pi, pj] + a[..., :, pj, pi])
    ii, jj = pi[:, None], pj[:, None]
    kk, ll = pi[None, :], pj[None, :]
    return 0.25 * (
        a[..., ii, jj, kk, ll]
        + a[..., jj, ii, kk, ll]
        + a[..., ii, jj, ll, kk]
        + a[..., jj, ii, ll, kk]
    )


# --------------------------------------------------------------------------------------
# irreps (e3nn)
# --------------------------------------------------------------------------------------


def _check_formula(formula: str) -> str:
    if formula not in FORMULAS:
        raise ValueError(f"unknown tensor formula {formula!r}; known: {sorted(FORMULAS)}")
    return formula


def _rank_of_formula(formula: str) -> int:
    return len(formula.split("=")[0])


@functools.cache
def cartesian_tensor(formula: str):
    """The ``e3nn.io.CartesianTensor`` of a formula, built once per process.

    Args:
        formula: one of :data:`FORMULAS` (``ij=ji``, ``ijk=ikj``, ``ijkl=jikl=klij``, ``ij``).

    Returns:
        ``e3nn.io.CartesianTensor`` (an ``e3nn.o3.Irreps``).
    """
    from e3nn.io import CartesianTensor

    return CartesianTensor(_check_formula(formula))


def irreps_of(formula: str):
    """Irreps of the symmetric subspace of a formula, e.g. ``1x0e+1x2e`` for ``ij=ji``.

    Args:
        formula: one of :data:`FORMULAS`.

    Returns:
        ``e3nn.o3.Irreps``.
    """
    from e3nn import o3

    return o3.Irreps(cartesian_tensor(formula))


_BUILD_LOCK = threading.Lock()


@functools.cache
def _change_of_basis_f64(formula: str) -> torch.Tensor:
    """Change of basis ``Q [irreps.dim, 3, ..., 3]`` in float64, built once per formula.

    e3nn builds the reduced tensor products in torch's default dtype, so the default is
    switched to float64 for the build (exact to ~1e-15) and restored afterwards.
    """
    ct = cartesian_tensor(formula)
    with _BUILD_LOCK:
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            with torch.no_grad():
                q = ct.reduced_tensor_products().change_of_basis.detach().clone()
        finally:
            torch.set_default_dtype(old)
    return q.to(torch.float64)


@functools.cache
def _change_of_basis_cached(formula: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _change_of_basis_f64(formula).to(dtype=dtype, device=device)


def change_of_basis(
    formula: str, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Cached change-of-basis matrix from Cartesian to irreps.

    The rows are orthonormal: ``x = Q.flatten(1) @ T.flatten()`` and
    ``T = (x @ Q.flatten(1)).reshape(3, ..., 3)``.

    Args:
        formula: one of :data:`FORMULAS`.
        dtype: torch dtype of the result.
        device: torch device of the result.

    Returns:
        ``Q`` of shape ``[irreps.dim, 3, ..., 3]`` (do not modify it in place; it is shared).
    """
    return _change_of_basis_cached(_check_formula(formula), dtype, torch.device(device))


def to_irreps(t: torch.Tensor, formula: str) -> torch.Tensor:
    """Cartesian tensor(s) to irreps coordinates (differentiable).

    A tensor without the formula's index symmetry is projected onto its symmetric part.

    Args:
        t: ``[..., 3, ..., 3]`` with as many trailing 3-axes as the formula has indices.
            Non-torch input is converted to a float64 tensor.
        formula: one of :data:`FORMULAS`.

    Returns:
        ``[..., irreps.dim]`` in the dtype and device of ``t``.

    Raises:
        ValueError: on an unknown formula or a shape that does not match it.
    """
    rank = _rank_of_formula(_check_formula(formula))
    if not _is_torch(t):
        t = torch.as_tensor(np.asarray(t, dtype=np.float64))
    _check_trailing(t, (3,) * rank, f"Cartesian tensor of formula {formula!r}")
    q = change_of_basis(formula, t.dtype, t.device).reshape(-1, 3**rank)
    flat = t.reshape(*t.shape[: t.ndim - rank], 3**rank)
    return flat @ q.T


def from_irreps(x: torch.Tensor, formula: str) -> torch.Tensor:
    """Irreps coordinates to Cartesian tensor(s) (differentiable).

    Args:
        x: ``[..., irreps.dim]``. Non-torch input is converted to a float64 tensor.
        formula: one of :data:`FORMULAS`.

    Returns:
        ``[..., 3, 3]``, ``[..., 3, 3, 3]`` or ``[..., 3, 3, 3, 3]`` (dtype/device of ``x``).

    Raises:
        ValueError: on an unknown formula or a last dimension that is not ``irreps.dim``.
    """
    rank = _rank_of_formula(_check_formula(formula))
    if not _is_torch(x):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    q = change_of_basis(formula, x.dtype, x.device)
    dim = q.shape[0]
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(
            f"irreps of formula {formula!r} have dimension {dim}; got shape {tuple(x.shape)}"
        )
    out = x @ q.reshape(dim, 3**rank)
    return out.reshape(*x.shape[:-1], *(3,) * rank)


# --------------------------------------------------------------------------------------
# rotations and symmetry
# --------------------------------------------------------------------------------------

_OUT_LETTERS = "abcdef"
_IN_LETTERS = "ijklmn"


def rotate(t: Any, R: Any, rank: int | None = None) -> Any:
    """Rotate a Cartesian tensor on every index: ``T'_{ab..} = R_ai R_bj .. T_{ij..}``.

    Improper matrices (``det R = -1``) are applied the same way, which is the transformation
    of a polar tensor: the inversion ``-I`` flips the sign of odd-rank tensors.

    Args:
        t: ``[..., 3, ..., 3]`` tensor (numpy or torch).
        R: rotation ``(3, 3)`` or a batch ``[..., 3, 3]`` that broadcasts against the batch
            dimensions of ``t``.
        rank: number of trailing Cartesian indices of ``t``; default ``t.ndim - (R.ndim - 2)``
            (so pass it when ``t`` is batched and ``R`` is a single matrix).

    Returns:
        The rotated tensor, shape of ``t`` (broadcast with the batch of ``R``); torch if either
        input is torch.

    Raises:
        ValueError: on shapes that do not fit.
    """
    if _is_torch(t) or _is_torch(R):
        ref = t if _is_torch(t) else R
        t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
        R = torch.as_tensor(R, dtype=t.dtype, device=t.device)
    else:
        t = _as_array(t)
        R = _as_array(R)
    if R.ndim < 2 or tuple(R.shape[-2:]) != (3, 3):
        raise ValueError(f"R must have shape (..., 3, 3), got {tuple(R.shape)}")
    if rank is None:
        rank = t.ndim - (R.ndim - 2)
    if not 0 <= rank <= len(_IN_LETTERS) or t.ndim < rank:
        raise ValueError(f"cannot rotate a tensor of shape {tuple(t.shape)} with rank {rank}")
    if rank == 0:
        return t
    _check_trailing(t, (3,) * rank, f"rank-{rank} Cartesian tensor")
    outs, ins = _OUT_LETTERS[:rank], _IN_LETTERS[:rank]
    expr = ",".join(f"...{o}{i}" for o, i in zip(outs, ins)) + f",...{ins}->...{outs}"
    return _einsum(expr, *([R] * rank), t)


def point_group_rotations(structure: Any, symprec: float = 0.01) -> np.ndarray:
    """Cartesian rotation matrices of a crystal's point group.

    Args:
        structure: ``pymatgen.core.Structure``.
        symprec: symmetry tolerance (Å) for spglib.

    Returns:
        ``[n_ops, 3, 3]`` float64, the distinct rotational parts (proper and improper) of the
        space-group operations, identity included, in the Cartesian frame of ``structure``
        (see :func:`matxfer.symmetry.structure_point_group`).
    """
    from matxfer.symmetry import structure_point_group

    return structure_point_group(structure, symprec).rotations


def symmetrize(t: Any, rotations: Any) -> np.ndarray | torch.Tensor:
    """Group average ``(1/|G|) sum_R R·t``: the projection onto the invariant tensors.

    Args:
        t: ``(3, ..., 3)`` Cartesian tensor (numpy or torch), any rank.
        rotations: ``[n_ops, 3, 3]`` matrices forming a group (see
            :func:`point_group_rotations`).

    Returns:
        The symmetrised tensor, shape of ``t``.
    """
    rots = _as_array(rotations)
    if rots.ndim != 3 or tuple(rots.shape[1:]) != (3, 3):
        raise ValueError(f"rotations must have shape (n_ops, 3, 3), got {tuple(rots.shape)}")
    a = _as_array(t)
    rotated = rotate(a[None], rots, rank=a.ndim)
    return rotated.mean(0) if _is_torch(rotated) else np.mean(rotated, axis=0)


def symmetry_error(t: Any, rotations: Any) -> float:
    """Largest relative change of a tensor under the operations: ``max_R ||R·t - t|| / ||t||``.

    Args:
        t: ``(3, ..., 3)`` Cartesian tensor, any rank.
        rotations: ``[n_ops, 3, 3]`` matrices.

    Returns:
        ``max_R ||R·t - t||_F / max(||t||_F, tiny)``; 0 for an invariant (or zero) tensor.
    """
    a = np.asarray(t.detach().cpu() if _is_torch(t) else t, dtype=np.float64)
    rots = np.asarray(rotations, dtype=np.float64)
    if rots.ndim != 3 or rots.shape[1:] != (3, 3):
        raise ValueError(f"rotations must have shape (n_ops, 3, 3), got {rots.shape}")
    if a.ndim and a.shape != (3,) * a.ndim:
        raise ValueError(f"expected a Cartesian tensor (3, ..., 3), got shape {a.shape}")
    diff = rotate(a[None], rots, rank=a.ndim) - a[None]
    num = np.sqrt((diff.reshape(len(rots), -1) ** 2).sum(axis=1)).max(initial=0.0)
    den = max(float(np.sqrt((a**2).sum())), np.finfo(np.float64).tiny)
    return float(num / den)


# --------------------------------------------------------------------------------------
# elastic tensors
# --------------------------------------------------------------------------------------


def _elastic_voigt(C: Any) -> np.ndarray:
    c = np.asarray(C, dtype=np.float64)
    if c.shape == (3, 3, 3, 3):
        return cartesian_to_voigt(c, rank=4)
    if c.shape == (6, 6):
        return c
    raise ValueError(
        f"expected an elastic tensor of shape (3, 3, 3, 3) or Voigt (6, 6), got {c.shape}"
    )


def _voigt_averages(c: np.ndarray) -> tuple[float, float]:
    """Voigt bounds of K and G from the 6x6 stiffness (upper triangle for G, as pymatgen)."""
    k_v = c[:3, :3].sum() / 9.0
    g_v = (2.0 * np.trace(c[:3, :3]) - np.triu(c[:3, :3]).sum() + 3.0 * np.trace(c[3:, 3:])) / 15.0
    return float(k_v), float(g_v)


def elastic_moduli(C: Any) -> dict[str, float]:
    """Voigt-Reuss-Hill moduli and related scalars of an elastic tensor (GPa).

    The Reuss bounds use the compliance ``S = inv(C_Voigt)`` (the inverse of the Voigt
    stiffness already carries the factors 2 and 4 of the engineering shear strains):
    ``K_R = 1 / sum_{i,j<=3} S_ij`` and
    ``G_R = 15 / (8 tr S_[:3,:3] - 4 sum_{i<=j<=3} S_ij + 3 tr S_[3:,3:])``. The numbers equal
    pymatgen ``ElasticTensor`` (``y_mod`` there is in Pa; here GPa).

    Args:
        C: full Cartesian ``(3, 3, 3, 3)`` (or Voigt ``(6, 6)``) elastic tensor in GPa.

    Returns:
        dict with ``k_voigt``, ``k_reuss``, ``k_vrh``, ``g_voigt``, ``g_reuss``, ``g_vrh``,
        ``youngs_modulus`` (from K_VRH and G_VRH, GPa), ``poisson_ratio`` (homogeneous, from
        K_VRH and G_VRH) and ``universal_anisotropy`` (``5 G_V/G_R + K_V/K_R - 6``). Reuss
        values and everything derived from them are NaN when the Voigt matrix is singular
        (or not finite).
    """
    c = _elastic_voigt(C)
    nan = float("nan")
    if not np.all(np.isfinite(c)):
        return {k: nan for k in ("k_voigt", "k_reuss", "k_vrh", "g_voigt", "g_reuss", "g_vrh",
                                 "youngs_modulus", "poisson_ratio", "universal_anisotropy")}
    k_v, g_v = _voigt_averages(c)
    k_r = g_r = nan
    try:
        if np.linalg.cond(c) < _SINGULAR_COND:
            s = np.linalg.inv(c)
            with np.errstate(divide="ignore", invalid="ignore"):
                k_r = float(1.0 / s[:3, :3].sum())
                g_r = float(
                    15.0
                    / (8.0 * np.trace(s[:3, :3]) - 4.0 * np.triu(s[:3, :3]).sum()
                       + 3.0 * np.trace(s[3:, 3:]))
                )
    except np.linalg.LinAlgError:
        pass
    k_vrh = 0.5 * (k_v + k_r)
    g_vrh = 0.5 * (g_v + g_r)
    with np.errstate(divide="ignore", invalid="ignore"):
        youngs = 9.0 * k_vrh * g_vrh / (3.0 * k_vrh + g_vrh)
        ratio = g_vrh / k_vrh
        poisson = (1.0 - 2.0 / 3.0 * ratio) / (2.0 + 2.0 / 3.0 * ratio)
        aniso = 5.0 * g_v / g_r + k_v / k_r - 6.0
    return {
        "k_voigt": k_v,
        "k_reuss": k_r,
        "k_vrh": float(k_vrh),
        "g_voigt": g_v,
        "g_reuss": g_r,
        "g_vrh": float(g_vrh),
        "youngs_modulus": float(youngs),
        "poisson_ratio": float(poisson),
        "universal_anisotropy": float(aniso),
    }


def elastic_kg_vrh_torch(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched K_VRH and G_VRH (GPa) of Cartesian elastic tensors, in torch.

    Same numbers as :func:`elastic_moduli`; NaN where the Voigt matrix is singular.

    Args:
        C: ``[..., 3, 3, 3, 3]`` elastic tensors in GPa.

    Returns:
        ``(K_vrh, G_vrh)``, each of shape ``[...]``.
    """
    if not _is_torch(C):
        C = torch.as_tensor(np.asarray(C, dtype=np.float64))
    _check_trailing(C, (3, 3, 3, 3), "elastic tensor")
    c = cartesian_to_voigt(C, rank=4)
    a = c[..., :3, :3]
    tr_a = torch.diagonal(a, dim1=-2, dim2=-1).sum(-1)
    tr_b = torch.diagonal(c[..., 3:, 3:], dim1=-2, dim2=-1).sum(-1)
    k_v = a.sum((-2, -1)) / 9.0
    g_v = (2.0 * tr_a - torch.triu(a).sum((-2, -1)) + 3.0 * tr_b) / 15.0
    s, info = torch.linalg.inv_ex(c)
    sa = s[..., :3, :3]
    k_r = 1.0 / sa.sum((-2, -1))
    g_r = 15.0 / (
        8.0 * torch.diagonal(sa, dim1=-2, dim2=-1).sum(-1)
        - 4.0 * torch.triu(sa).sum((-2, -1))
        + 3.0 * torch.diagonal(s[..., 3:, 3:], dim1=-2, dim2=-1).sum(-1)
    )
    with torch.no_grad():
        finite = torch.isfinite(c).all(-1).all(-1)
        eye = torch.eye(6, dtype=c.dtype, device=c.device)
        cond = torch.linalg.cond(torch.where(finite[..., None, None], c, eye))
        # float32 inverses lose ~cond * eps relative accuracy: keep them within ~1 %
        limit = min(_SINGULAR_COND, 0.01 / torch.finfo(c.dtype).eps)
        bad = (info != 0) | ~finite | ~(cond < limit)
    nan = torch.full_like(k_r, float("nan"))
    k_r = torch.where(bad, nan, k_r)
    g_r = torch.where(bad, nan, g_r)
    return 0.5 * (k_v + k_r), 0.5 * (g_v + g_r)


def is_positive_definite(t: Any, tol: float = 0.0) -> bool:
    """Whether an elastic tensor (mechanical stability) or a rank-2 tensor is positive definite.

    Elastic tensors are tested on the eigenvalues of their 6x6 Voigt matrix. The Mandel
    matrix (the one with orthonormal basis, ``M = D C_V D`` with
    ``D = diag(1, 1, 1, √2, √2, √2)``) has other eigenvalues, but it is congruent to the Voigt
    matrix, and congruence preserves the signs of the eigenvalues (Sylvester's law of inertia),
    so both are positive definite or neither is.

    Args:
        t: ``(3, 3, 3, 3)`` or Voigt ``(6, 6)`` elastic tensor, or a ``(3, 3)`` tensor (only its
            symmetric part counts).
        tol: relative tolerance: positive definite means
            ``min eigenvalue > tol * max |eigenvalue|``.

    Returns:
        ``True`` when positive definite (``False`` for non-finite input).
    """
    a = np.asarray(t.detach().cpu() if _is_torch(t) else t, dtype=np.float64)
    if a.shape in ((3, 3, 3, 3), (6, 6)):
        m = _elastic_voigt(a)
    elif a.shape == (3, 3):
        m = a
    else:
        raise ValueError(f"expected a (3, 3), (6, 6) or (3, 3, 3, 3) tensor, got shape {a.shape}")
    if not np.all(np.isfinite(m)):
        return False
    ev = np.linalg.eigvalsh(0.5 * (m + m.T))
    return bool(ev.min() > tol * np.abs(ev).max() and ev.max() > 0)


def mean_eigenvalue(eps: Any) -> float | np.ndarray | torch.Tensor:
    """Mean eigenvalue of a symmetric 3x3 tensor, i.e. ``trace / 3``.

    Args:
        eps: ``(3, 3)`` or batched ``[..., 3, 3]`` (numpy or torch).

    Returns:
        float for one tensor, else ``[...]`` (torch for torch input).
    """
    a = _as_array(eps)
    _check_trailing(a, (3, 3), "rank-2 tensor")
    if isinstance(a, torch.Tensor):
        return torch.diagonal(a, dim1=-2, dim2=-1).sum(-1) / 3.0
    out = np.trace(a, axis1=-2, axis2=-1) / 3.0
    return float(out) if a.ndim == 2 else out


# --------------------------------------------------------------------------------------
# piezoelectric modulus
# --------------------------------------------------------------------------------------


def _piezo_full(e: Any) -> np.ndarray:
    a = np.asarray(e.detach().cpu() if _is_torch(e) else e, dtype=np.float64)
    if a.shape == (3, 6):
        return voigt_to_cartesian(a, rank=3)
    if a.shape == (3, 3, 3):
        return 0.5 * (a + a.transpose(0, 2, 1))
    raise ValueError(
        f"expected a piezoelectric tensor (3, 3, 3) or Voigt (3, 6), got shape {a.shape}"
    )


def _cubic_form(e: np.ndarray, convention: str) -> np.ndarray:
    """Fully symmetric ``s_ijk`` with ``f(n) = s_ijk n_i n_j n_k`` the directional modulus."""
    if convention == "dejong2015":
        w = np.where(np.eye(3, dtype=bool), 1.0, 0.5)
    elif convention == "longitudinal":
        w = np.ones((3, 3))
    else:
        raise ValueError(f"convention must be 'dejong2015' or 'longitudinal', got {convention!r}")
    a = e * w[None]
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    return sum(a.transpose(p) for p in perms) / 6.0


def longitudinal_piezo_modulus(e: Any, n: Any, convention: str = "dejong2015") -> np.ndarray:
    """Directional piezoelectric modulus ``f(n)`` (C/m^2) for unit directions ``n``.

    ``convention="longitudinal"``: ``f(n) = e_ijk n_i n_j n_k``, the polarisation along ``n``
    per unit uniaxial strain along ``n``. ``convention="dejong2015"``:
    ``f(n) = sum_iJ e_iJ n_i v_J(n)`` with ``v(n) = (n1², n2², n3², n2 n3, n1 n3, n1 n2)``, the
    Voigt vector of ``n n`` without the engineering factor 2 on the shear entries; this is the
    quantity maximised for the ``eij_max`` column of the de Jong et al. (2015) piezoelectric
    data set (it reproduces the stored ``eij_max`` at the stored ``v_max``).

    Args:
        e: ``(3, 3, 3)`` or Voigt ``(3, 6)`` piezoelectric stress tensor.
        n: ``(3,)`` or ``[m, 3]`` directions (normalised here).
        convention: ``"dejong2015"`` or ``"longitudinal"``.

    Returns:
        ``f(n)``, a float array of shape ``()`` or ``[m]``.
    """
    s = _cubic_form(_piezo_full(e), convention)
    v = np.asarray(n, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return np.einsum("ijk,...i,...j,...k->...", s, v, v, v)


@functools.lru_cache(maxsize=4)
def _fibonacci_sphere(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` nearly uniform unit vectors (golden-angle spiral) and their products ``n_j n_k``.

    Returns:
        ``(points [n, 3], outer [n, 9])``, read-only.
    """
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = np.pi * (1.0 + 5.0**0.5) * k
    pts = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    outer = (pts[:, :, None] * pts[:, None, :]).reshape(n, 9)
    pts.setflags(write=False)
    outer.setflags(write=False)
    return pts, outer


def _tangent_basis(n: np.ndarray) -> np.ndarray:
    """Orthonormal ``(3, 2)`` basis of the plane orthogonal to the unit vector ``n``."""
    a = np.eye(3)[int(np.argmin(np.abs(n)))]
    u = a - (a @ n) * n
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(n, u)], axis=1)


def _maximize_cubic_on_sphere(
    s: np.ndarray, n0: np.ndarray, max_iter: int = 100
) -> tuple[float, np.ndarray]:
    """Local maximum of ``f(n) = s_ijk n_i n_j n_k`` on the unit sphere from ``n0``.

    Modified Newton ascent in the tangent plane: along directions of negative Riemannian
    curvature a Newton step, elsewhere a gradient step scaled by a curvature bound, then a
    backtracking line search, so ``f`` never decreases. Quadratic convergence at a regular
    maximum; flat directions (e.g. a circle of maxima) are harmless.
    """
    s9 = s.reshape(3, 9)
    bound = 9.0 * float(np.sqrt((s**2).sum())) + 1e-300  # >= |Riemannian Hessian| on the sphere

    def value(v: np.ndarray) -> float:
        return float(v @ s9 @ np.outer(v, v).ravel())

    n = n0 / np.linalg.norm(n0)
    f = value(n)
    for _ in range(max_iter):
        sv = s9 @ np.outer(n, n).ravel()  # s_ijk n_j n_k
        g = 3.0 * sv
        h = 6.0 * np.einsum("ijk,k->ij", s, n)
        b = _tangent_basis(n)
        gt = b.T @ g
        if np.linalg.norm(gt) <= 1e-14 * bound:
            break
        ht = b.T @ h @ b - 3.0 * f * np.eye(2)
        lam, vec = np.linalg.eigh(0.5 * (ht + ht.T))
        coef = vec.T @ gt
        step_c = np.where(lam < -1e-9 * bound, -coef / np.minimum(lam, -1e-300), coef / bound)
        step = b @ (vec @ step_c)
        t = 1.0
        improved = False
        for _ls in range(40):
            cand = n + t * step
            cand /= np.linalg.norm(cand)
            fc = value(cand)
            if fc >= f:
                improved = fc > f or t * np.linalg.norm(step) < 1e-15
                n, f = cand, fc
                break
            t *= 0.5
        if not improved or t * np.linalg.norm(step) < 1e-15:
            break
    return f, n


@overload
def eij_max(
    e: Any,
    convention: str = ...,
    return_direction: Literal[False] = ...,
    n_grid: int = ...,
    n_refine: int = ...,
) -> float: ...


@overload
def eij_max(
    e: Any,
    convention: str = ...,
    *,
    return_direction: Literal[True],
    n_grid: int = ...,
    n_refine: int = ...,
) -> tuple[float, np.ndarray]: ...


def eij_max(
    e: Any,
    convention: str = "dejong2015",
    return_direction: bool = False,
    n_grid: int = 2000,
    n_refine: int = 4,
) -> float | tuple[float, np.ndarray]:
    """Maximum directional piezoelectric modulus ``max_n |f(n)|`` over unit directions (C/m^2).

    The default convention is the one of the ``eij_max`` column of the de Jong et al. 2015
    piezoelectric data set (see :func:`longitudinal_piezo_modulus`); ``"longitudinal"`` gives
    the textbook ``max_n |e_ijk n_i n_j n_k|``. ``f`` is a cubic form, odd in ``n``, so
    ``max |f| = max f``. It is evaluated on a Fibonacci grid of ``n_grid`` directions and the
    ``n_refine`` best grid points are refined by a safeguarded Newton ascent on the sphere, so
    the result is the continuous maximum (to ~1e-12 relative), not the best of a finite set of
    directions.

    The ``dejong2015`` quantity is not a tensor invariant: the half weight on the shear terms
    is no contraction, so its value depends on the Cartesian frame (the de Jong tensors are in
    the IEEE frame). The ``longitudinal`` maximum is the same in every frame.

    Args:
        e: ``(3, 3, 3)`` piezoelectric stress tensor ``e_ijk`` (``e_ijk = e_ikj``) or its Voigt
            ``(3, 6)`` form.
        convention: ``"dejong2015"`` (default) or ``"longitudinal"``.
        return_direction: also return the unit direction that reaches the maximum.
        n_grid: number of grid directions for the global search.
        n_refine: number of best grid points refined locally.

    Returns:
        The maximum (float), or ``(maximum, direction [3])`` with ``return_direction``.

    Raises:
        ValueError: on a bad shape, an unknown convention or non-finite entries.
    """
    s = _cubic_form(_piezo_full(e), convention)
    scale = float(np.abs(s).max())
    if not np.isfinite(scale):
        raise ValueError("piezoelectric tensor contains NaN or inf")
    if scale == 0.0:
        return (0.0, np.array([0.0, 0.0, 1.0])) if return_direction else 0.0
    sn = s / scale  # work with O(1) numbers

    grid, outer = _fibonacci_sphere(int(n_grid))
    vals = ((grid @ sn.reshape(3, 9)) * outer).sum(axis=1)
    order = np.argsort(-vals)[: max(int(n_refine), 1)]
    best_f, best_n = float(vals[order[0]]), grid[order[0]].copy()
    for idx in order:
        f, n = _maximize_cubic_on_sphere(sn, grid[idx])
        if f > best_f:
            best_f, best_n = f, n
    value = best_f * scale
    if return_direction:
        return value, best_n
    return value
