"""Radial bases of edge lengths and smooth cutoff envelopes."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GaussianBasis(nn.Module):
    """CGCNN's Gaussian expansion of edge lengths.

    ``u_k(d) = exp(-(d - mu_k)^2 / width^2)`` with centres ``mu_k = start, start + step, ...,
    stop`` (41 centres for the defaults 0..8 A in steps of 0.2 A) and ``width = step`` unless
    given. This is exactly the expansion of the original CGCNN code, so its checkpoints see
    the features they were trained with.

    Args:
        start: first centre (Angstrom).
        stop: last centre (Angstrom), included.
        step: spacing of the centres (Angstrom).
        width: Gaussian width (Angstrom); ``None`` uses ``step``.
    """

    centres: Tensor

    def __init__(self, start: float = 0.0, stop: float = 8.0, step: float = 0.2, width=None):
        super().__init__()
        if not step > 0:
            raise ValueError(f"Gaussian basis step must be > 0, got {step}")
        if not stop > start:
            raise ValueError(f"Gaussian basis stop ({stop}) must exceed start ({start})")
        width = step if width is None else width
        if not width > 0:
            raise ValueError(f"Gaussian basis width must be > 0, got {width}")
        n = int(math.floor((stop - start) / step + 1e-6)) + 1
        centres = start + step * torch.arange(n, dtype=torch.float64)
        self.register_buffer("centres", centres.to(torch.get_default_dtype()), persistent=False)
        self.width = float(width)

    @property
    def num_basis(self) -> int:
        """Number of Gaussians (41 for the defaults)."""
        return int(self.centres.numel())

    def forward(self, d: Tensor) -> Tensor:
        """Expand lengths.

        Args:
            d: ``[E]`` edge lengths.

        Returns:
            ``[E, num_basis]`` features.
        """
        diff = d.unsqueeze(-1) - self.centres.to(d.dtype)
        return torch.exp(-(diff**2) / self.width**2)


class BesselBasis(nn.Module):
    """Zeroth-order spherical Bessel (sine) basis, n = 1..num_basis.

    ``normalized=True`` (default): the dimensionless ``sin(n pi x) / x`` with ``x = d / rc``,
    of order one for typical bond lengths (good input for a radial MLP).
    ``normalized=False``: ``sqrt(2/rc) sin(n pi d / rc) / d`` (units 1/Angstrom^1.5).

    Args:
        cutoff: radius ``rc`` in Angstrom.
        num_basis: number of functions.
        trainable: learn the frequencies ``n pi``.
        normalized: see above.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        num_basis: int = 8,
        trainable: bool = False,
        normalized: bool = True,
    ):
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"Bessel basis cutoff must be > 0, got {cutoff}")
        if num_basis < 1:
            raise ValueError(f"Bessel basis needs num_basis >= 1, got {num_basis}")
        self.cutoff = float(cutoff)
        freqs = math.pi * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.freqs = nn.Parameter(freqs)
        else:
            self.register_buffer("freqs", freqs, persistent=False)
        self.num_basis = num_basis
        self.normalized = bool(normalized)

    def forward(self, d: Tensor) -> Tensor:
        """Expand lengths.

        Args:
            d: ``[E]`` edge lengths (> 0).

        Returns:
            ``[E, num_basis]`` features.
        """
        x = d.unsqueeze(-1) / self.cutoff
        out = torch.sin(self.freqs.to(d.dtype) * x) / x
        if not self.normalized:
            out = out * (math.sqrt(2.0 / self.cutoff) / self.cutoff)
        return out


class PolynomialCutoff(nn.Module):
    """Smooth envelope that goes to zero at the cutoff with ``p`` continuous derivatives.

    ``f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for ``x = d/rc < 1``,
    0 beyond.

    Args:
        cutoff: radius ``rc`` in Angstrom.
        p: polynomial order (6 is the usual choice).
    """

    def __init__(self, cutoff: float = 5.0, p: int = 6):
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        if p < 1:
            raise ValueError(f"envelope order p must be >= 1, got {p}")
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, d: Tensor) -> Tensor:
        """Envelope values.

        Args:
            d: ``[E]`` edge lengths.

        Returns:
            ``[E]`` values in [0, 1].
        """
        p = self.p
        x = d / self.cutoff
        out = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * x**p
            + p * (p + 2.0) * x ** (p + 1)
            - p * (p + 1.0) / 2.0 * x ** (p + 2)
        )
        return out * (x < 1.0).to(d.dtype)
