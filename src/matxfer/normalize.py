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


def formula_rank(formula: str) -> int:
    """Return the number of indices of a formula (``"ijk=ikj"`` -> 3)."""
    return len(formula.split("=")[0])


class ScalarNormalizer(nn.Module):
    """``(y - mean) / std`` with ``mean`` and ``std`` fitted on training labels.

    Buffers: ``mean []``, ``std []`` (1 before fitting, or if the labels are constant) and
    ``count []`` (number of labels fitted on; 0 = not fitted).
    """

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
        x = (t.reshape(-1, 3**self.rank) @ q64.T).reshape(-1, self.dim)
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
