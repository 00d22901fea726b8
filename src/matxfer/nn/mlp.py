"""Multi-layer perceptrons and activation look-up."""

from __future__ import annotations

import math
from typing import Literal, get_args

from torch import Tensor, nn
from torch.nn import functional as F


class ShiftedSoftplus(nn.Module):
    """``softplus(x) - log 2`` (zero at zero)."""

    def forward(self, x: Tensor) -> Tensor:
        """Elementwise ``[...]`` -> ``[...]``."""
        return F.softplus(x) - math.log(2.0)


_ACTIVATIONS = {
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "ssp": ShiftedSoftplus,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

#: names accepted by :func:`activation` (as a type for option schemas, and as a tuple)
Activation = Literal["gelu", "relu", "sigmoid", "silu", "softplus", "ssp", "tanh"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
assert set(ACTIVATIONS) == set(_ACTIVATIONS)


def activation(name: str) -> nn.Module:
    """Return a fresh activation module by name (``silu``, ``softplus``, ``ssp``, ``relu``, ...)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {list(ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class MLP(nn.Module):
    """Linear layers with an activation between them (none after the last).

    ``x -> [act] -> Linear -> act -> Linear -> ... -> Linear``. The linear layers are
    ``self.linears[0..]`` (stable names for checkpoint mapping: the original CGCNN head
    ``conv_to_fc``/``fc_out`` are ``linears.0``/``linears.1`` of
    ``MLP(64, [32], 1, "softplus", input_activation=True)``).

    Args:
        in_dim: input width.
        hidden: widths of the hidden layers (may be empty: a single linear map).
        out_dim: output width.
        act: activation name (see :data:`ACTIVATIONS`).
        input_activation: apply the activation to the input first.
        bias: use biases in every layer (``False`` keeps ``f(0) = 0`` for zero-preserving
            activations, used by radial networks that must vanish at the cutoff).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int] | tuple[int, ...] = (),
        out_dim: int = 1,
        act: str = "silu",
        input_activation: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        dims = [int(in_dim), *[int(h) for h in hidden], int(out_dim)]
        if any(d < 1 for d in dims):
            raise ValueError(f"MLP widths must be >= 1, got {dims}")
        self.linears = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:])
        )
        self.act = activation(act)
        self.input_activation = bool(input_activation)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the network.

        Args:
            x: ``[..., in_dim]``.

        Returns:
            ``[..., out_dim]``.
        """
        if self.input_activation:
            x = self.act(x)
        n = len(self.linears)
        for k, lin in enumerate(self.linears):
            x = lin(x)
            if k < n - 1:
                x = self.act(x)
        return x
