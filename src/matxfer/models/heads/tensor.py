"""Equivariant tensor heads for irreps backbones.

``tensor``: pool the node irreps per crystal, then e3nn layers (a gated hidden layer and a
linear map) to the irreps of the target's ``CartesianTensor(formula)``; returns the irreps
``[B, irreps.dim]`` in normalised units. ``born``: the same map applied per atom without
pooling (Born effective charges, formula ``ij`` = ``0e + 1e + 2e``) -> ``[n_atoms, 9]``.
Both keep the change of basis to Cartesian tensors as a non-persistent buffer
(:meth:`to_cartesian`); de-normalisation and conversion for predictions happen in the
task's :class:`~matxfer.normalize.IrrepsNormalizer`, which uses the same basis.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from e3nn import o3
from torch import Tensor, nn

from matxfer import keys as K
from matxfer.config import Bool, ModuleConfig, PosInt, Str
from matxfer.interfaces import OutSpec
from matxfer.models.base import Head
from matxfer.models.registry import register_head
from matxfer.nn.e3 import Gate, reset_e3nn_parameters
from matxfer.nn.pooling import Reduce, check_reduce, graph_index, pool
from matxfer.normalize import cartesian_basis, formula_rank, refresh_basis

#: formulas of per-crystal tensor targets (dielectric, piezoelectric, elastic)
TensorFormula = Literal["ij=ji", "ijk=ikj", "ijkl=jikl=klij"]
TENSOR_FORMULAS: tuple[str, ...] = get_args(TensorFormula)


def _irreps_in(in_spec, head: str) -> o3.Irreps:
    if isinstance(in_spec, (int, bool)) or in_spec is None:
        raise ValueError(
            f"the {head!r} head needs an equivariant (irreps) backbone, got in_spec={in_spec!r}; "
            "use the 'edge-tensor' / 'edge-atom-tensor' heads for invariant backbones"
        )
    try:
        return o3.Irreps(in_spec)
    except Exception as exc:
        raise ValueError(f"in_spec {in_spec!r} is not an irreps specification: {exc}") from exc


class IrrepsMap(nn.Module):
    """Equivariant map ``irreps_in -> irreps_out``: optional gated hidden layer + linear.

    Args:
        irreps_in: input irreps.
        irreps_out: output irreps.
        hidden_irreps: irreps of the gated hidden layer (``None``: a single linear map).
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, hidden_irreps=None):
        super().__init__()
        irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        if hidden_irreps is None:
            self.hidden = None
            self.gate = None
            self.out = o3.Linear(irreps_in, irreps_out, biases=True)
        else:
            self.gate = Gate(o3.Irreps(hidden_irreps))
            self.hidden = o3.Linear(irreps_in, self.gate.irreps_in, biases=True)
            self.out = o3.Linear(self.gate.irreps_out, irreps_out, biases=True)
        missing = sorted({str(ir) for _, ir in irreps_out} - {str(ir) for _, ir in irreps_in})
        if missing:
            raise ValueError(
                f"backbone irreps {irreps_in} lack {missing} needed for the target irreps "
                f"{irreps_out} (an equivariant map cannot create them)"
            )

    def reset_parameters(self) -> None:
        """Re-initialise the e3nn weights (they have no ``reset_parameters`` of their own)."""
        reset_e3nn_parameters(self)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., irreps_in.dim]`` -> ``[..., irreps_out.dim]``."""
        if self.hidden is not None and self.gate is not None:
            x = self.gate(self.hidden(x))
        return self.out(x)


def default_hidden(irreps_out: o3.Irreps, mul: int = 8, n_scalars: int = 16) -> str:
    """Gated hidden irreps for a target: ``n_scalars x 0e`` + ``mul`` of each ``l > 0`` irrep."""
    types = sorted({ir for _, ir in irreps_out if ir.l > 0}, key=lambda ir: (ir.l, -ir.p))
    parts = [f"{n_scalars}x0e"] + [f"{mul}x{ir}" for ir in types]
    return "+".join(parts)


class _CartesianHead(Head):
    """Shared parts of the tensor heads: formula, target irreps, change of basis."""

    Q: Tensor

    def _setup(self, in_spec: OutSpec, formula: str, hidden_irreps: str | None) -> str | None:
        irreps_in = _irreps_in(in_spec, self.registry_name or type(self).__name__)
        self.formula = formula
        self.irreps_out, q = cartesian_basis(formula)
        self.rank = formula_rank(formula)
        self.register_buffer("Q", q.to(torch.get_default_dtype()), persistent=False)
        if hidden_irreps == "auto":
            hidden_irreps = default_hidden(self.irreps_out)
        elif hidden_irreps is not None:
            try:
                hidden_irreps = str(o3.Irreps(hidden_irreps))
            except Exception as exc:
                raise ValueError(f"invalid hidden_irreps {hidden_irreps!r}: {exc}") from exc
        self.map = IrrepsMap(irreps_in, self.irreps_out, hidden_irreps)
        return hidden_irreps

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        refresh_basis(self, self.formula)  # exact basis in the new dtype (see normalize)
        return out

    @property
    def out_dim(self) -> int:
        return self.irreps_out.dim

    def to_cartesian(self, x: Tensor) -> Tensor:
        """Irreps ``[..., dim]`` -> Cartesian ``[..., 3, ..., 3]``."""
        return (x @ self.Q.to(x.dtype)).reshape(*x.shape[:-1], *([3] * self.rank))


class TensorHeadConfig(ModuleConfig):
    """Options of the ``tensor`` head (see :class:`TensorHead`)."""

    formula: TensorFormula = "ijkl=jikl=klij"
    hidden_irreps: Str | None = "auto"
    reduce: Reduce = "mean"


@register_head("tensor", config=TensorHeadConfig)
class TensorHead(_CartesianHead):
    """Per-crystal Cartesian tensor from an irreps backbone -> ``[B, irreps.dim]``.

    Args:
        in_spec: the backbone's ``out_spec`` (``e3nn.o3.Irreps``).
        formula: ``"ij=ji"`` (dielectric), ``"ijk=ikj"`` (piezoelectric) or
            ``"ijkl=jikl=klij"`` (elastic).
        hidden_irreps: irreps of the gated hidden layer after pooling (``"auto"``:
            ``16x0e`` + ``8x`` each ``l > 0`` target irrep; ``None``: linear map only).
        reduce: ``"mean"`` (intensive, default) or ``"sum"``.
    """

    per_atom = False
    task_kinds = ("tensor",)

    def __init__(
        self,
        in_spec,
        formula: str = "ijkl=jikl=klij",
        hidden_irreps: str | None = "auto",
        reduce: str = "mean",
    ):
        super().__init__()
        if formula not in TENSOR_FORMULAS:
            raise ValueError(f"unknown tensor formula {formula!r}; valid: {list(TENSOR_FORMULAS)}")
        self.reduce = check_reduce(reduce)
        hidden = self._setup(in_spec, formula, hidden_irreps)
        self.config = {"formula": formula, "hidden_irreps": hidden, "reduce": reduce}

    def forward(self, backbone_out: dict, data) -> Tensor:
        """Prediction in normalised irreps.

        Args:
            backbone_out: ``{node_feats: [n_atoms, in_spec.dim]}``.
            data: the (batched) graph.

        Returns:
            ``[B, irreps.dim]``.
        """
        x = backbone_out[K.NODE_FEATURES]
        batch, num_graphs = graph_index(data, x.shape[0], x.device)
        return self.map(pool(x, batch, num_graphs, self.reduce))


class BornHeadConfig(ModuleConfig):
    """Options of the ``born`` head (see :class:`BornHead`)."""

    formula: Literal["ij"] = "ij"
    hidden_irreps: Str | None = "auto"
    charge_neutral: Bool = False


@register_head("born", config=BornHeadConfig)
class BornHead(_CartesianHead):
    """Per-atom tensor (Born effective charges, ``Z*_i,ab``) -> ``[n_atoms, 9]``.

    Args:
        in_spec: the backbone's ``out_spec`` (``e3nn.o3.Irreps``).
        formula: ``"ij"`` (no index symmetry: ``0e + 1e + 2e``).
        hidden_irreps: gated hidden layer (``"auto"``, irreps, or ``None``).
        charge_neutral: subtract each crystal's mean prediction (in normalised units) so
            the charges of a crystal sum to zero when the normaliser's mean is zero (the
            acoustic sum rule; the mean of Born charges over all atoms of a training set
            is zero up to DFT noise).
    """

    per_atom = True
    task_kinds = ("atom_tensor",)

    def __init__(
        self,
        in_spec,
        formula: str = "ij",
        hidden_irreps: str | None = "auto",
        charge_neutral: bool = False,
    ):
        super().__init__()
        if formula != "ij":
            raise ValueError(f"the born head predicts formula 'ij', got {formula!r}")
        hidden = self._setup(in_spec, formula, hidden_irreps)
        self.charge_neutral = bool(charge_neutral)
        self.config = {
            "formula": formula,
            "hidden_irreps": hidden,
            "charge_neutral": self.charge_neutral,
        }

    def forward(self, backbone_out: dict, data) -> Tensor:
        """Prediction in normalised irreps.

        Args:
            backbone_out: ``{node_feats: [n_atoms, in_spec.dim]}``.
            data: the (batched) graph.

        Returns:
            ``[n_atoms, 9]``.
        """
        x = self.map(backbone_out[K.NODE_FEATURES])
        if self.charge_neutral:
            batch, num_graphs = graph_index(data, x.shape[0], x.device)
            x = x - pool(x, batch, num_graphs, "mean").index_select(0, batch)
        return x


def _product_irreps(irreps: o3.Irreps, mul: int) -> o3.Irreps:
    """``mul`` copies of each irrep type of ``irreps`` (l <= 2 kept), for the product input."""
    types = sorted({ir for _, ir in irreps if ir.l <= 2}, key=lambda ir: (ir.l, -ir.p))
    return o3.Irreps([(mul, ir) for ir in types])


class ProductTensorHeadConfig(ModuleConfig):
    """Options of the ``tensor-product`` head (see :class:`ProductTensorHead`)."""

    formula: TensorFormula = "ijk=ikj"
    mul: PosInt = 8
    product_mul: PosInt = 8
    hidden_irreps: Str | None = "auto"
    reduce: Reduce = "mean"


@register_head("tensor-product", config=ProductTensorHeadConfig)
class ProductTensorHead(_CartesianHead):
    """Per-crystal tensor from irreps features through per-atom tensor products.

    A linear map of the node features cannot create an irrep the backbone lacks (a 3o
    from SevenNet-0's ``0e + 1o + 2e`` features, say). This head first projects each
    atom's features to ``mul`` channels of every irrep type (l <= 2), forms their
    fully connected tensor product with itself (``1o x 2e -> 1o + 2o + 3o``,
    ``2e x 2e -> 0e + 2e + 4e``...), keeps the products of the target's irrep types beside
    a linear path of the features, pools over atoms and maps the result to the target
    irreps through a gated hidden layer.

    Args:
        in_spec: the backbone's ``out_spec`` (``e3nn.o3.Irreps``).
        formula: ``"ij=ji"``, ``"ijk=ikj"`` or ``"ijkl=jikl=klij"``.
        mul: channels of each irrep type entering the product.
        product_mul: channels of each target irrep type produced by the product.
        hidden_irreps: the gated hidden layer after pooling (``"auto"`` or irreps).
        reduce: ``"mean"`` (intensive, default) or ``"sum"``.
    """

    per_atom = False
    task_kinds = ("tensor",)

    def __init__(
        self,
        in_spec,
        formula: str = "ijk=ikj",
        mul: int = 8,
        product_mul: int = 8,
        hidden_irreps: str | None = "auto",
        reduce: str = "mean",
    ):
        super().__init__()
        if formula not in TENSOR_FORMULAS:
            raise ValueError(f"unknown tensor formula {formula!r}; valid: {list(TENSOR_FORMULAS)}")
        if mul < 1 or product_mul < 1:
            raise ValueError(f"mul and product_mul must be >= 1, got {mul}, {product_mul}")
        irreps_in = _irreps_in(in_spec, "tensor-product")
        self.reduce = check_reduce(reduce)
        target, _ = cartesian_basis(formula)
        small = _product_irreps(irreps_in, mul)
        # the target's irrep types, and scalars that gate the hidden layer after pooling
        wanted = sorted({ir for _, ir in target} | {o3.Irrep("0e")}, key=lambda ir: (ir.l, -ir.p))
        reachable = {ir_out for _, a in small for _, b in small for ir_out in a * b}
        missing = [str(ir) for ir in wanted if ir not in reachable]
        if missing:
            raise ValueError(
                f"the product of the backbone irreps {irreps_in} cannot make {missing} for "
                f"{formula!r}"
            )
        prod_out = o3.Irreps([(product_mul, ir) for ir in wanted])
        self.pre = o3.Linear(irreps_in, small, biases=True)
        self.tp = o3.FullyConnectedTensorProduct(small, small, prod_out)
        lin_types = [ir for ir in wanted if any(ir == i for _, i in irreps_in)]
        self.lin_out = o3.Irreps([(mul, ir) for ir in lin_types])
        self.lin = o3.Linear(irreps_in, self.lin_out, biases=True) if lin_types else None
        pooled = prod_out + self.lin_out if lin_types else prod_out
        self._pooled_irreps = pooled
        hidden_irreps = self._setup(pooled, formula, hidden_irreps)
        self.config = {"formula": formula, "mul": mul, "product_mul": product_mul,
                       "hidden_irreps": hidden_irreps, "reduce": reduce}

    def forward(self, backbone_out: dict, data) -> Tensor:
        """Prediction in normalised irreps ``[B, irreps.dim]``."""
        x = backbone_out[K.NODE_FEATURES]
        s = self.pre(x)
        parts = [self.tp(s, s)]
        if self.lin is not None:
            parts.append(self.lin(x))
        y = torch.cat(parts, dim=-1)
        batch, num_graphs = graph_index(data, x.shape[0], x.device)
        return self.map(pool(y, batch, num_graphs, self.reduce))

