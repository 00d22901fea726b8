"""Energy and force heads for invariant (or irreps) backbones.

- ``energy`` (:class:`EnergyHead`): per-atom energies ``E_i = MLP(h_i) + e_{Z_i}`` (an
  optional learned reference energy per element), summed per crystal: ``E = sum_i E_i``.
  Works on any ``int``-width backbone and on the ``0e`` channels of an irreps backbone.
- ``direct-forces`` (:class:`DirectForceHead`): ``F_i = sum_j f_ij r̂_ij`` over the edges
  ``j -> i`` with an invariant magnitude ``f_ij`` from an MLP of the two atoms' features and
  the edge length. ``r̂_ij`` rotates with the crystal and ``f_ij`` does not, so the forces
  rotate with ``R`` (proper and improper) and do not change under translations. The MLP
  input is symmetric in ``i`` and ``j`` (``h_i + h_j``, ``h_i * h_j``, distance basis), so
  ``f_ij = f_ji`` and, with a symmetric edge list (every periodic graph without a neighbour
  cap), the forces of a crystal sum to exactly zero (Newton's third law). These forces are
  not the gradient of any energy.
- ``conservative-forces`` (:class:`ConservativeForceHead`): ``F = -dE/dpos`` of the energy
  task, computed by :class:`~matxfer.models.base.PropertyModel` (train energies and
  conservative forces together with ``matxfer train``).
- :func:`conservative_forces`: ``F = -dE/dpos`` by automatic differentiation of the energy
  of a model; ``create_graph`` in training so a force loss can be backpropagated. Stress
  (the cell gradient) is not computed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from matxfer import keys as K
from matxfer.config import Bool, ModuleConfig, PosFloat, PosInt, Str, Widths
from matxfer.models.base import Head
from matxfer.models.heads.scalar import scalar_channels
from matxfer.models.registry import register_head
from matxfer.nn.geometry import edge_vectors
from matxfer.nn.mlp import MLP, Activation
from matxfer.nn.pooling import Reduce, check_reduce, graph_index, pool
from matxfer.nn.radial import BesselBasis, PolynomialCutoff

#: label keys of the energy/force data (eV per cell, eV/Angstrom per atom)
ENERGY: str = getattr(K, "ENERGY", "energy")
FORCES: str = getattr(K, "FORCES", "forces")


def _select(x: Tensor, channels: Tensor | None) -> Tensor:
    return x if channels is None else x.index_select(1, channels)


class EnergyHeadConfig(ModuleConfig):
    """Options of the ``energy`` head (see :class:`EnergyHead`)."""

    hidden: Widths = [64]
    act: Activation = "silu"
    reduce: Reduce = "sum"
    species_offsets: Bool = True
    num_species: PosInt = 119


@register_head("energy", config=EnergyHeadConfig)
class EnergyHead(Head):
    """Sum of per-atom energies: ``E = sum_i (MLP(h_i) + e_{Z_i})`` -> ``[B]``.

    Args:
        in_spec: the backbone's ``out_spec`` (``int`` width or irreps; only ``0e`` is used).
        hidden: hidden widths of the per-atom MLP.
        act: activation name.
        reduce: ``"sum"`` (energy per cell, default) or ``"mean"`` (per atom).
        species_offsets: add a learned energy per element (initialised to zero).
        num_species: size of the per-element table.
    """

    per_atom = False
    task_kinds = ("scalar",)

    def __init__(
        self,
        in_spec,
        hidden: list[int] | tuple[int, ...] = (64,),
        act: str = "silu",
        reduce: str = "sum",
        species_offsets: bool = True,
        num_species: int = 119,
    ):
        super().__init__()
        width, idx = scalar_channels(in_spec)
        self.reduce = check_reduce(reduce)
        if num_species < 1:
            raise ValueError(f"num_species must be >= 1, got {num_species}")
        self.config = {
            "hidden": [int(h) for h in hidden],
            "act": str(act),
            "reduce": reduce,
            "species_offsets": bool(species_offsets),
            "num_species": int(num_species),
        }
        if idx is not None:
            self.register_buffer("channels", torch.tensor(idx, dtype=torch.long), persistent=False)
        else:
            self.channels = None
        self.mlp = MLP(width, list(hidden), 1, act)
        self.offsets = nn.Embedding(num_species, 1) if species_offsets else None
        if self.offsets is not None:
            nn.init.zeros_(self.offsets.weight)

    def atom_energies(self, backbone_out: dict, data) -> Tensor:
        """Per-atom energies ``[n_atoms]``."""
        e = self.mlp(_select(backbone_out[K.NODE_FEATURES], self.channels)).squeeze(-1)
        if self.offsets is not None:
            z = data[K.ATOMIC_NUMBERS]
            if z.numel() and int(z.max()) >= self.offsets.num_embeddings:
                raise ValueError(
                    f"atomic number {int(z.max())} outside the energy offsets table "
                    f"(num_species={self.offsets.num_embeddings})"
                )
            e = e + self.offsets(z).squeeze(-1).to(e.dtype)
        return e

    def forward(self, backbone_out: dict, data) -> Tensor:
        """Energy of every crystal.

        Args:
            backbone_out: ``{node_feats: [n_atoms, width or irreps.dim]}``.
            data: the (batched) graph.

        Returns:
            ``[B]`` energies (sum or mean of the per-atom energies).
        """
        e = self.atom_energies(backbone_out, data)
        batch, num_graphs = graph_index(data, e.shape[0], e.device)
        return pool(e, batch, num_graphs, self.reduce)


class DirectForceHeadConfig(ModuleConfig):
    """Options of the ``direct-forces`` head (see :class:`DirectForceHead`)."""

    hidden: Widths = [64]
    act: Activation = "silu"
    cutoff: PosFloat = 6.0
    num_radial: PosInt = 8


@register_head("direct-forces", config=DirectForceHeadConfig)
class DirectForceHead(Head):
    """Direct, strictly equivariant forces ``F_i = sum_j f_ij r̂_ij`` -> ``[n_atoms, 3]``.

    ``f_ij = c(d_ij) * MLP([h_i + h_j, h_i * h_j, rbf(d_ij)])`` with a smooth envelope ``c``
    that vanishes at ``cutoff``; ``r̂_ij`` points from atom ``i`` to its neighbour ``j``, so
    ``f_ij > 0`` pulls ``i`` towards ``j``.

    Args:
        in_spec: the backbone's ``out_spec`` (``int`` width or irreps; only ``0e`` is used).
        hidden: hidden widths of the MLP.
        act: activation name.
        cutoff: radius of the distance basis and envelope (Angstrom; edges beyond add 0).
        num_radial: distance basis functions.
    """

    per_atom = True
    task_kinds = ("forces",)
    #: shape of the prediction of one atom (the output is ``[n_atoms, *row_shape]``)
    row_shape: ClassVar[tuple[int, ...]] = (3,)

    def __init__(
        self,
        in_spec,
        hidden: list[int] | tuple[int, ...] = (64,),
        act: str = "silu",
        cutoff: float = 6.0,
        num_radial: int = 8,
    ):
        super().__init__()
        width, idx = scalar_channels(in_spec)
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        if num_radial < 1:
            raise ValueError(f"num_radial must be >= 1, got {num_radial}")
        self.config = {
            "hidden": [int(h) for h in hidden],
            "act": str(act),
            "cutoff": float(cutoff),
            "num_radial": int(num_radial),
        }
        if idx is not None:
            self.register_buffer("channels", torch.tensor(idx, dtype=torch.long), persistent=False)
        else:
            self.channels = None
        self.rbf = BesselBasis(cutoff, num_radial)
        self.envelope = PolynomialCutoff(cutoff)
        self.mlp = MLP(2 * width + num_radial, list(hidden), 1, act)

    def forward(self, backbone_out: dict, data) -> Tensor:
        """Forces on every atom.

        Args:
            backbone_out: ``{node_feats: [n_atoms, width or irreps.dim]}``.
            data: the (batched) graph with ``pos``, ``cell``, ``edge_index``, ``cell_shift``.

        Returns:
            ``[n_atoms, 3]`` forces (the units of the labels the head is trained on).
        """
        h = _select(backbone_out[K.NODE_FEATURES], self.channels)
        src, dst = data[K.EDGE_INDEX]
        vec = edge_vectors(data).to(h.dtype)
        d = vec.norm(dim=-1)
        hi, hj = h.index_select(0, dst), h.index_select(0, src)
        f = self.mlp(torch.cat([hi + hj, hi * hj, self.rbf(d)], dim=-1)).squeeze(-1)
        f = f * self.envelope(d)
        unit = vec / d.clamp_min(1e-12).unsqueeze(-1)
        return h.new_zeros((h.shape[0], 3)).index_add_(0, dst, f.unsqueeze(-1) * unit)


class ConservativeForceHeadConfig(ModuleConfig):
    """Options of the ``conservative-forces`` head (see :class:`ConservativeForceHead`)."""

    energy: Str = "energy_per_atom"
    energy_is_per_atom: Bool | None = None


@register_head("conservative-forces", config=ConservativeForceHeadConfig)
class ConservativeForceHead(Head):
    """Conservative forces ``F = -dE/dpos`` of the model's energy head -> ``[n_atoms, 3]``.

    The head has no weights of its own: :class:`~matxfer.models.base.PropertyModel` runs the
    backbone with positions that require grad, takes the energy task's prediction in
    physical units (times the atom count when the energy is per atom) and differentiates it
    (with ``create_graph`` in training, so the force loss trains the energy head and the
    backbone). Forces and energies are then consistent by construction.

    Args:
        in_spec: the backbone's ``out_spec`` (unused).
        energy: name of the energy task (``energy`` per cell or ``energy_per_atom``).
        energy_is_per_atom: whether that energy is per atom (default: its name ends in
            ``per_atom``).
    """

    per_atom = True
    conservative = True
    task_kinds = ("forces",)
    row_shape: ClassVar[tuple[int, ...]] = (3,)

    def __init__(self, in_spec, energy: str = "energy_per_atom", energy_is_per_atom: bool | None = None):
        super().__init__()
        if not isinstance(energy, str) or not energy:
            raise ValueError(f"energy must name the energy task, got {energy!r}")
        per_atom = energy.endswith("per_atom") if energy_is_per_atom is None else bool(energy_is_per_atom)
        self.energy = energy
        self.energy_is_per_atom = per_atom
        self.config = {"energy": energy, "energy_is_per_atom": per_atom}

    def forward(self, backbone_out: dict, data) -> Tensor:
        raise ValueError(
            "conservative-forces differentiates the model's energy; call it through "
            "PropertyModel (model(batch)), not on backbone outputs"
        )


def _energy_of(model, data, energy_key: str) -> Tensor:
    """Energies ``[B]`` of a model in physical units."""
    if hasattr(model, "heads") and hasattr(model, "predict"):  # PropertyModel
        if energy_key not in model.heads:
            raise ValueError(f"the model has no head {energy_key!r}; heads: {sorted(model.heads)}")
        return model.predict(data)[energy_key]
    out = model(data)
    if isinstance(out, dict):
        if energy_key not in out:
            raise ValueError(f"the model output has no {energy_key!r}; keys: {sorted(out)}")
        out = out[energy_key]
    if not torch.is_tensor(out):
        raise ValueError(f"the model returned {type(out).__name__}, expected an energy tensor")
    return out


def conservative_forces(
    model: Any,
    data,
    energy_key: str = ENERGY,
    create_graph: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Energy and conservative forces ``F = -dE/dpos``.

    Sets ``data.pos`` to a leaf copy that requires grad (``data`` is modified in place), runs
    the model and differentiates the summed energy of the batch (crystals do not share atoms,
    so each atom gets the gradient of its own crystal's energy).

    Args:
        model: a :class:`~matxfer.models.base.PropertyModel` with an energy head named
            ``energy_key`` (its de-normalised prediction is used), or any module returning
            ``[B]`` energies or a dict holding them under ``energy_key``.
        data: a (batched) crystal graph.
        energy_key: task or output name of the energy.
        create_graph: keep the graph of the gradient so a loss on the forces can be
            backpropagated (default: ``model.training``).

    Returns:
        ``(energy [B], forces [n_atoms, 3])``.
    """
    if create_graph is None:
        create_graph = bool(getattr(model, "training", False))
    pos = data[K.POSITIONS].detach().requires_grad_(True)
    data[K.POSITIONS] = pos
    with torch.enable_grad():
        energy = _energy_of(model, data, energy_key)
        (grad,) = torch.autograd.grad(
            energy.sum(), pos, create_graph=create_graph, allow_unused=True
        )
    if grad is None:  # the energy does not depend on positions (e.g. no edges)
        grad = torch.zeros_like(pos)
    return energy, -grad
