"""Target normalisers (``nn.Module`` with buffers, so they travel in the state dict).

- :class:`ScalarNormalizer`: ``(y - mean) / std``.
- :class:`IrrepsNormalizer`: a Cartesian tensor of a given index symmetry (e3nn
  ``CartesianTensor`` formula) is mapped to its irreps with an orthonormal change of basis;
  every irrep block (one ``2l+1`` vector) is divided by its training-set scale, the RMS of
  the block's norm, and ``l = 0`` blocks are centred on their training mean first. In the
  normalised space each block has unit mean-square norm, so a loss summed over components
  counts every irrep equally (the ``l = 0`` parts of elastic tensors are ~100x the ``l = 4``
  part in GPa). Scales are per block, never per component, so normalising commutes with
  rotations.
"""

from __future__ import annotations

import functools
import threading

import torch
from e3nn import o3
from torch import Tensor, nn

_BASIS_LOCK = threading.Lock()


@functools.cache
def _basis(formula: str) -> tuple[str, Tensor]:
    from e3nn.io import CartesianTensor

    old = torch.get_default_dtype()
    with _BASIS_LOCK:
        try:
            torch.set_default_dtype(torch.float64)
            ct = CartesianTensor(formula)
            q = ct.reduced_tensor_products().change_of_basis.detach().to(torch.float64)
        finally:
            torch.set_default_dtype(old)
    return str(ct), q.reshape(q.shape[0], -1).clone()


def cartesian_basis(formula: str) -> tuple[o3.Irreps, Tensor]:
    """Irreps and orthonormal change of basis of a Cartesian tensor formula (cached).

    Args:
        formula: e3nn ``CartesianTensor`` index formula, e.g. ``"ij=ji"``, ``"ijk=ikj"``,
            ``"ijkl=jikl=klij"`` or ``"ij"``.

    Returns:
        ``(irreps, Q)`` with ``Q: [irreps.dim, 3**rank]`` float64 and orthonormal rows:
        ``irreps = T.flatten() @ Q.T`` and ``T.flatten() = irreps @ Q`` (for tensors with
        the formula's symmetry). The returned tensor is a copy.

    Raises:
        ValueError: the formula is not a valid ``CartesianTensor`` formula.
    """
    if not isinstance(formula, str) or not formula:
        raise ValueError(f"tensor formula must be a non-empty string, got {formula!r}")
    try:
        irreps, q = _basis(formula)
    except Exception as exc:  # e3nn raises assorted errors for malformed formulas
        raise ValueError(f"invalid tensor formula {formula!r}: {exc}") from exc
    return o3.Irreps(irreps), q.clone()


def refresh_basis(module: nn.Module, formula: str, name: str = "Q") -> None:
    """Rebuild a module's change-of-basis buffer from the float64 original in its current
    dtype and device (called after casts: up-casting a float32 copy keeps its rounding)."""
    q = getattr(module, name, None)
    if isinstance(q, Tensor) and q.is_floating_point():
        exact = cartesian_basis(formula)[1].to(dtype=q.dtype, device=q.device)
        setattr(module, name, exact.reshape(q.shape))


def formula_rank(formula: str) -> int:
    """Return the number of indices of a formula (``"ijk=ikj"`` -> 3)."""
    return len(formula.split("=")[0])


class ScalarNormalizer(nn.Module):
    """``(y - mean) / std`` with ``mean`` and ``std`` fitted on training labels.

    Buffers: ``mean []``, ``std []`` (1 before fitting, or if the labels are constant) and
    ``count []`` (number of labels fitted on; 0 = not fitted).
    """

    mean: Tensor
    std: Tensor
    count: Tensor

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        dt = torch.get_default_dtype()
        self.register_buffer("mean", torch.tensor(float(mean), dtype=dt))
        self.register_buffer("std", torch.tensor(float(std), dtype=dt))
        self.register_buffer("count", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def fit(self, values: Tensor) -> ScalarNormalizer:
        """Set mean and (population) standard deviation from ``values [N]``."""
        v = torch.as_tensor(values).detach().reshape(-1).to(torch.float64)
        if v.numel() == 0:
            raise ValueError("cannot fit a normaliser on zero values")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("cannot fit a normaliser on non-finite values")
        mean = v.mean()
        std = v.std(unbiased=False) if v.numel() > 1 else torch.tensor(0.0, dtype=v.dtype)
        self.mean.fill_(float(mean))
        self.std.fill_(float(std) if float(std) > 1e-12 * max(1.0, abs(float(mean))) else 1.0)
        self.count.fill_(v.numel())
        return self

    def normalize(self, y: Tensor) -> Tensor:
        """Physical ``[...]`` -> normalised ``[...]``."""
        return (y - self.mean.to(y.dtype)) / self.std.to(y.dtype)

    def denormalize(self, y: Tensor) -> Tensor:
        """Normalised ``[...]`` -> physical ``[...]``."""
        return y * self.std.to(y.dtype) + self.mean.to(y.dtype)

    def extra_repr(self) -> str:
        """Show the fitted mean and std."""
        return f"mean={float(self.mean):.6g}, std={float(self.std):.6g}"


class IrrepsNormalizer(nn.Module):
    """Normaliser of a Cartesian tensor target in irreps space (see the module docstring).

    Args:
        formula: e3nn ``CartesianTensor`` formula of the target's index symmetry.

    Buffers: ``mean [dim]`` (non-zero on ``l = 0`` components only), ``scale [dim]`` (one
    value per irrep block, repeated over its components), ``count []``; the change of basis
    ``Q [dim, 3**rank]`` is a non-persistent buffer rebuilt from the formula.
    """

    Q: Tensor
    mean: Tensor
    scale: Tensor
    count: Tensor

    def __init__(self, formula: str):
        super().__init__()
        self.formula = formula
        self.irreps, q = cartesian_basis(formula)
        self.rank = formula_rank(formula)
        dt = torch.get_default_dtype()
        self.register_buffer("Q", q.to(dt), persistent=False)
        self.register_buffer("mean", torch.zeros(self.irreps.dim, dtype=dt))
        self.register_buffer("scale", torch.ones(self.irreps.dim, dtype=dt))
        self.register_buffer("count", torch.tensor(0, dtype=torch.long))

    @property
    def dim(self) -> int:
        """Size of the irreps vector."""
        return self.irreps.dim

    def _apply(self, fn, recurse=True):
        # a cast (``.double()``) rebuilds the change of basis from its float64 original, so a
        # model built in float32 and cast to float64 is exact to ~1e-15, not ~1e-8
        out = super()._apply(fn, recurse)
        refresh_basis(self, self.formula)
        return out

    def from_cartesian(self, t: Tensor) -> Tensor:
        """Cartesian ``[..., 3, ..., 3]`` (rank indices) -> irreps ``[..., dim]``.

        A tensor without the formula's symmetry is projected onto it (symmetrised).
        """
        if tuple(t.shape[-self.rank :]) != (3,) * self.rank:
            dims = ", ".join(["3"] * self.rank)
            raise ValueError(
                f"expected a rank-{self.rank} Cartesian tensor [..., {dims}] for "
                f"{self.formula!r}, got shape {tuple(t.shape)}"
            )
        flat = t.reshape(*t.shape[: t.dim() - self.rank], 3**self.rank)
        return flat @ self.Q.to(t.dtype).T

    def to_cartesian(self, x: Tensor) -> Tensor:
        """Irreps ``[..., dim]`` -> Cartesian ``[..., 3, ..., 3]``."""
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"expected irreps of size {self.dim} for {self.formula!r}, got {tuple(x.shape)}"
            )
        return (x @ self.Q.to(x.dtype)).reshape(*x.shape[:-1], *([3] * self.rank))

    @torch.no_grad()
    def fit(self, cartesian: Tensor) -> IrrepsNormalizer:
        """Fit block means (``l = 0``) and block scales on ``[N, 3, ..., 3]`` tensors."""
        t = torch.as_tensor(cartesian).detach().to(torch.float64)
        bad_shape = t.dim() < self.rank + 1 or tuple(t.shape[-self.rank :]) != (3,) * self.rank
        if bad_shape or t.shape[0] == 0:
            raise ValueError(
                f"fit needs [N, {', '.join(['3'] * self.rank)}] tensors with N >= 1, "
                f"got shape {tuple(t.shape)}"
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError("cannot fit a normaliser on non-finite tensors")
        _, q64 = _basis(self.formula)
        return self._fit_blocks((t.reshape(-1, 3**self.rank) @ q64.T).reshape(-1, self.dim))

    def _fit_blocks(self, x: Tensor) -> IrrepsNormalizer:
        """Block means (``l = 0``) and RMS block scales of coordinates ``x [N, dim]``."""
        mean = torch.zeros(self.dim, dtype=torch.float64)
        scale = torch.ones(self.dim, dtype=torch.float64)
        typical = float(x.abs().max()) if x.numel() else 0.0
        for sl, (_, ir) in zip(self._block_slices(), self._blocks()):
            block = x[:, sl]
            if ir.l == 0:
                mean[sl] = block.mean()
                block = block - mean[sl]
            rms = float(block.pow(2).sum(-1).mean().sqrt())
            # a block that is (numerically) zero in every label keeps scale 1
            scale[sl] = rms if rms > 1e-12 * typical and rms > 0 else 1.0
        self.mean.copy_(mean.to(self.mean.dtype))
        self.scale.copy_(scale.to(self.scale.dtype))
        self.count.fill_(x.shape[0])
        return self

    def _blocks(self) -> list[tuple[int, o3.Irrep]]:
        """One ``(1, irrep)`` entry per irrep block (multiplicities expanded)."""
        return [(1, ir) for mul, ir in self.irreps for _ in range(mul)]

    def _block_slices(self) -> list[slice]:
        out, i = [], 0
        for _, ir in self._blocks():
            out.append(slice(i, i + ir.dim))
            i += ir.dim
        return out

    def normalize(self, x: Tensor) -> Tensor:
        """Physical irreps ``[..., dim]`` -> normalised irreps."""
        return (x - self.mean.to(x.dtype)) / self.scale.to(x.dtype)

    def denormalize(self, x: Tensor) -> Tensor:
        """Normalised irreps ``[..., dim]`` -> physical irreps."""
        return x * self.scale.to(x.dtype) + self.mean.to(x.dtype)

    def extra_repr(self) -> str:
        """Show the formula and irreps."""
        return f"formula={self.formula!r}, irreps={self.irreps}"


class VectorNormalizer(nn.Module):
    """Normaliser of per-atom Cartesian vectors (forces): ``F / scale``, no shift.

    ``scale`` is the RMS of the training vectors' components. A single scale for the three
    components (and no mean) keeps the normalised vectors rotating with the crystal.

    Buffers: ``scale []`` (1 before fitting), ``count []`` (vectors fitted on).
    """

    scale: Tensor
    count: Tensor

    def __init__(self):
        super().__init__()
        dt = torch.get_default_dtype()
        self.register_buffer("scale", torch.tensor(1.0, dtype=dt))
        self.register_buffer("count", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def fit(self, values: Tensor) -> VectorNormalizer:
        """Set ``scale`` from ``values [N, 3]``."""
        v = torch.as_tensor(values).detach().to(torch.float64)
        if v.ndim != 2 or v.shape[-1] != 3 or v.shape[0] == 0:
            raise ValueError(f"fit needs [N, 3] vectors with N >= 1, got shape {tuple(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("cannot fit a normaliser on non-finite vectors")
        rms = float(v.pow(2).mean().sqrt())
        self.scale.fill_(rms if rms > 1e-12 else 1.0)
        self.count.fill_(v.shape[0])
        return self

    def normalize(self, y: Tensor) -> Tensor:
        """Physical ``[..., 3]`` -> normalised."""
        return y / self.scale.to(y.dtype)

    def denormalize(self, y: Tensor) -> Tensor:
        """Normalised ``[..., 3]`` -> physical."""
        return y * self.scale.to(y.dtype)

    def extra_repr(self) -> str:
        """Show the fitted scale."""
        return f"scale={float(self.scale):.6g}"


def _isotropic_basis(formula: str) -> Tensor:
    """Cartesian basis tensors ``[n_moduli, 3**rank]`` of the isotropic part of a formula.

    Dielectric (``ij=ji``): the identity, whose coefficient is the mean eigenvalue.
    Elastic (``ijkl=jikl=klij``): ``d_ij d_kl`` and ``d_ik d_jl + d_il d_jk - 2/3 d_ij d_kl``,
    whose coefficients are the Voigt bulk and shear moduli ``K_V`` and ``G_V``.
    """
    d = torch.eye(3, dtype=torch.float64)
    if formula == "ij=ji":
        return d.reshape(1, 9)
    if formula == "ijkl=jikl=klij":
        jj = torch.einsum("ij,kl->ijkl", d, d)
        sym = torch.einsum("ik,jl->ijkl", d, d) + torch.einsum("il,jk->ijkl", d, d)
        return torch.stack([jj, sym - 2.0 / 3.0 * jj]).reshape(2, 81)
    raise ValueError(
        f"log_isotropic parameterisation is defined for 'ij=ji' and 'ijkl=jikl=klij', "
        f"not {formula!r}"
    )


class LogIsotropicNormalizer(IrrepsNormalizer):
    """Scale-aware irreps normaliser for tensors with a positive isotropic part.

    A dielectric tensor is written ``eps = e (I + A)`` with ``e`` the mean eigenvalue and
    ``A`` the traceless anisotropy *relative* to it; an elastic tensor as its isotropic part
    (``K_V``, ``G_V``) plus the anisotropic rest divided by ``(K_V + G_V) / 2``. The model
    predicts ``log`` of the isotropic moduli and the relative anisotropy (each block
    normalised as in :class:`IrrepsNormalizer`), so that heavy-tailed labels (dielectric
    constants from 2 to several hundred) are fitted in relative error. The map is
    rotation-equivariant: the moduli are invariants and the anisotropy is scaled by an
    invariant. Moduli are floored at ``floor`` before the logarithm.
    """

    iso_to_x: Tensor
    x_to_iso: Tensor

    def __init__(self, formula: str, floor: float | None = None):
        super().__init__(formula)
        iso = _isotropic_basis(formula)  # [m, 3**rank]
        # irreps coordinates of each isotropic basis tensor: only the 0e components are non-zero
        _, q = cartesian_basis(formula)
        coords = iso @ q.T  # [m, dim]
        zero_idx = [i for i, (s, ir) in enumerate(self._component_irreps()) if ir.l == 0]
        m = coords[:, zero_idx]  # [m, n0]: moduli -> 0e coordinates
        if m.shape[0] != m.shape[1]:
            raise ValueError(f"{formula!r}: {m.shape[1]} scalar components for {m.shape[0]} moduli")
        dt = torch.get_default_dtype()
        self.register_buffer("iso_to_x", m.to(dt), persistent=False)
        self.register_buffer("x_to_iso", torch.linalg.inv(m).to(dt), persistent=False)
        self.zero_idx = zero_idx
        self.rest_idx = [i for i in range(self.dim) if i not in zero_idx]
        self.floor = float(floor if floor is not None else (1e-3 if formula == "ij=ji" else 1.0))

    def _component_irreps(self):
        out = []
        for mul, ir in self.irreps:
            for k in range(mul):
                out.extend([(k, ir)] * ir.dim)
        return out

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[..., self.zero_idx], x[..., self.rest_idx]

    def _scale_of(self, moduli: Tensor) -> Tensor:
        return moduli.mean(-1, keepdim=True)

    def from_cartesian(self, t: Tensor) -> Tensor:
        x = super().from_cartesian(t)
        x0, rest = self._split(x)
        moduli = (x0 @ self.x_to_iso.to(x.dtype)).clamp_min(self.floor)
        out = torch.empty_like(x)
        out[..., self.zero_idx] = torch.log(moduli)
        out[..., self.rest_idx] = rest / self._scale_of(moduli)
        return out

    def to_cartesian(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"expected irreps of size {self.dim} for {self.formula!r}, got {tuple(x.shape)}"
            )
        u0, rest = self._split(x)
        moduli = torch.exp(u0.clamp(max=30.0))
        lin = torch.empty_like(x)
        lin[..., self.zero_idx] = moduli @ self.iso_to_x.to(x.dtype)
        lin[..., self.rest_idx] = rest * self._scale_of(moduli)
        return super().to_cartesian(lin)

    @torch.no_grad()
    def fit(self, cartesian: Tensor) -> LogIsotropicNormalizer:
        """Fit means and block scales in the log-isotropic coordinates."""
        t = torch.as_tensor(cartesian).detach().to(torch.float64)
        if t.dim() < self.rank + 1 or t.shape[0] == 0:
            raise ValueError(f"fit needs [N, 3, ...] tensors with N >= 1, got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("cannot fit a normaliser on non-finite tensors")
        keep = self.Q, self.iso_to_x, self.x_to_iso
        self.Q, self.iso_to_x, self.x_to_iso = (b.double() for b in keep)
        try:
            x = self.from_cartesian(t)
        finally:
            self.Q, self.iso_to_x, self.x_to_iso = keep
        self._fit_blocks(x)
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + ", parameterization='log_isotropic'"
