"""Backbone and head base classes, and :class:`PropertyModel` (one backbone, many heads).

Contracts (every registered class keeps them):

- a **backbone** is built from keyword config only (``Backbone(**cfg)``, every argument has a
  default), keeps ``self.config`` (a plain dict that rebuilds it), declares ``out_spec``
  (``int`` width, or an ``e3nn.o3.Irreps``) and the ``graph_defaults`` it expects, and
  returns ``{keys.NODE_FEATURES: [n_atoms, width or irreps.dim]}`` from ``forward(data)``.
  It never pools and knows nothing about targets. ``layer_groups()`` names its parameter
  prefixes from input to output (for freezing the first k layers and layer-wise LR decay).
- a **head** is built as ``Head(in_spec, **cfg)`` from the backbone's ``out_spec`` only,
  keeps ``self.config``, pools if it predicts per crystal, and returns its prediction in
  normalised units: ``[B]`` (scalar), ``[B, irreps.dim]`` (tensor) or ``[n_atoms, 9]``
  (per-atom tensor).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from torch import Tensor, nn

from matxfer import keys as K
from matxfer.config import ModuleConfig, PosInt, Str
from matxfer.interfaces import BackboneOutput, OutSpec, Predictions

if TYPE_CHECKING:
    from torch_geometric.data import Data


class Backbone(nn.Module):
    """Base class of the representation networks.

    Attributes:
        config: keyword arguments that rebuild the backbone (plain data).
        out_spec: node-feature width (``int``) or irreps (``e3nn.o3.Irreps``).
        graph_defaults: graph settings (cutoff, max_neighbors, atom_features) it expects.
        equivariant: True when the node features are irreps with ``l > 0`` parts.
        respects_inversion: False when the features follow proper rotations only (not the
            inversion), e.g. a chiral model; :mod:`matxfer.testing` then skips the
            improper-rotation check.
        registry_name: name under which the class is registered (set by the registry).
    """

    graph_defaults: ClassVar[dict[str, Any]] = {}
    equivariant: ClassVar[bool] = False
    respects_inversion: bool = True
    registry_name: ClassVar[str] = ""
    config: dict[str, Any]
    out_spec: OutSpec
    num_species: int = 119
    #: the input layer (``nn.Embedding`` by atomic number or ``nn.Linear`` of features)
    embedding: nn.Module

    def forward(self, data: Data) -> BackboneOutput:  # pragma: no cover - the contract
        """``{keys.NODE_FEATURES: [n_atoms, width or irreps.dim]}`` (see the module docstring)."""
        raise NotImplementedError

    def layer_groups(self) -> list[str]:
        """Ordered parameter-name prefixes from input to output."""
        raise NotImplementedError

    def check_graph_settings(self, settings: Any) -> None:
        """Raise ValueError when graphs built with ``settings`` cannot feed this backbone.

        Called when a run's model is built; the default accepts any settings. A backbone
        that reads the graph's edges as a fixed part of a pretrained model (e.g. the
        ``sevennet`` cutoff) overrides it.
        """

    def embed(self, data: Data) -> Tensor:
        """Embed atoms: ``self.embedding`` of ``z`` or of tabulated ``x``.

        Args:
            data: graph with ``z [n]`` and, for a linear embedding, ``x [n, F]``.

        Returns:
            ``[n, width]``.
        """
        emb = self.embedding
        if isinstance(emb, nn.Embedding):
            z = data[K.ATOMIC_NUMBERS]
            if z.numel() and (int(z.max()) >= emb.num_embeddings or int(z.min()) < 0):
                raise ValueError(
                    f"atomic number {int(z.max())} outside the embedding table "
                    f"(num_species={emb.num_embeddings})"
                )
            return emb(z)
        if not isinstance(emb, nn.Linear):
            raise TypeError(f"embedding must be nn.Embedding or nn.Linear, got {type(emb).__name__}")
        x = data[K.ATOM_FEATURES] if K.ATOM_FEATURES in data else None
        if x is None:
            raise ValueError(
                "this backbone embeds tabulated atom features (atom_feature_dim="
                f"{emb.in_features}) but the graph has no 'x'; build graphs with atom_features"
            )
        if x.shape[-1] != emb.in_features:
            raise ValueError(
                f"graph atom features have {x.shape[-1]} columns, the backbone expects "
                f"atom_feature_dim={emb.in_features}"
            )
        return emb(x.to(emb.weight.dtype))


class Head(nn.Module):
    """Base class of the prediction heads.

    Attributes:
        config: keyword arguments (without ``in_spec``) that rebuild the head.
        per_atom: True when the head predicts one value per atom (no pooling).
        registry_name: name under which the class is registered (set by the registry).
    """

    per_atom: ClassVar[bool] = False
    registry_name: ClassVar[str] = ""
    config: dict[str, Any]

    def forward(self, backbone_out: BackboneOutput, data: Data) -> Tensor:  # pragma: no cover
        """The prediction in normalised units (see the module docstring)."""
        raise NotImplementedError

    @property
    def extensive(self) -> bool:
        """True when a per-crystal prediction grows with the crystal (sum pooling): a
        supercell of ``n`` cells predicts ``n`` times the value. Heads with a ``reduce``
        option read it; others override this."""
        return getattr(self, "reduce", "mean") == "sum"


class PropertyModel(nn.Module):
    """One backbone shared by one head per task, with the tasks' normalisers.

    Args:
        backbone: a :class:`Backbone`.
        heads: task name -> :class:`Head`.
        normalizers: task name -> ``ScalarNormalizer`` or ``IrrepsNormalizer`` (their
            buffers travel in the state dict).
        tasks: task name -> :class:`matxfer.tasks.Task` (kept as plain attribute).
    """

    backbone: Backbone
    heads: nn.ModuleDict
    normalizers: nn.ModuleDict
    tasks: dict[str, Any]

    def __init__(
        self,
        backbone: Backbone,
        heads: nn.ModuleDict | dict[str, nn.Module],
        normalizers: nn.ModuleDict | dict[str, nn.Module],
        tasks: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not isinstance(heads, nn.ModuleDict):
            heads = nn.ModuleDict(heads)
        if not isinstance(normalizers, nn.ModuleDict):
            normalizers = nn.ModuleDict(normalizers)
        missing = sorted(set(heads) - set(normalizers))
        if missing:
            raise ValueError(f"heads {missing} have no normaliser")
        for name, head in heads.items():
            if getattr(head, "conservative", False) and cast(Any, head).energy not in heads:
                raise ValueError(
                    f"head {name!r} differentiates energy task {head.energy!r}, which has no head; "
                    f"heads: {sorted(heads)}"
                )
        self.backbone = backbone
        self.heads = heads
        self.normalizers = normalizers
        self.tasks = dict(tasks or {})

    def forward(self, data: Data) -> Predictions:
        """Normalised predictions of every head.

        Args:
            data: a (batched) crystal graph.

        Returns:
            task -> ``[B]`` (scalar), ``[B, irreps.dim]`` (tensor, normalised irreps) or
            ``[n_atoms, irreps.dim]`` (per-atom tensor).
        """
        conservative = {n: h for n, h in self.heads.items() if getattr(h, "conservative", False)}
        if conservative:
            return self._forward_with_position_gradients(data, conservative)
        out = self.backbone(data)
        return {name: head(out, data) for name, head in self.heads.items()}

    def _forward_with_position_gradients(self, data: Data, conservative: dict[str, Any]) -> Predictions:
        """Outputs when some heads are ``-dE/dpos`` of an energy head (see
        :class:`~matxfer.models.heads.energy_forces.ConservativeForceHead`)."""
        import torch

        pos = data[K.POSITIONS]
        if not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
            data[K.POSITIONS] = pos
        with torch.enable_grad():
            out = self.backbone(data)
            preds = {n: h(out, data) for n, h in self.heads.items() if n not in conservative}
            for name, head in conservative.items():
                energy_norm: Any = self.normalizers[head.energy]
                energy = energy_norm.denormalize(preds[head.energy])
                if head.energy_is_per_atom:
                    counts = torch.bincount(data[K.BATCH], minlength=energy.shape[0]) if K.BATCH in data \
                        else torch.full_like(energy, pos.shape[0])
                    energy = energy * counts.to(energy.dtype)
                (grad,) = torch.autograd.grad(
                    energy.sum(), pos, create_graph=self.training, allow_unused=True
                )
                forces = -grad if grad is not None else torch.zeros_like(pos)
                force_norm: Any = self.normalizers[name]
                preds[name] = force_norm.normalize(forces)
        if not torch.is_grad_enabled():
            preds = {k: v.detach() for k, v in preds.items()}
        return preds

    def predict(self, data: Data) -> Predictions:
        """Predictions in physical units.

        Returns:
            task -> ``[B]`` (scalar), ``[B, 3, 3(, 3(, 3))]`` (Cartesian tensor) or
            ``[n_atoms, 3, 3]`` (per-atom tensor).
        """
        return self.to_physical(self(data))

    def to_physical(self, raw: Predictions) -> Predictions:
        """Normalised head outputs (what :meth:`forward` returns) -> physical units
        (Cartesian tensors), for the tasks in ``raw``."""
        result = {}
        for name, y in raw.items():
            norm: Any = self.normalizers[name]
            y = norm.denormalize(y)
            if hasattr(norm, "to_cartesian"):
                y = norm.to_cartesian(y)
            result[name] = y
        return result

    def model_config(self) -> dict[str, Any]:
        """``{"backbone": {"name", ...}, "heads": {task: {"name", ...}}}`` (plain data)."""
        bb = {"name": type(self.backbone).registry_name, **self.backbone.config}
        heads = {
            t: {"name": getattr(type(h), "registry_name", ""), **getattr(h, "config", {})}
            for t, h in self.heads.items()
        }
        return {"backbone": bb, "heads": heads}


def feature_dim_of(atom_features: str, atom_feature_dim: int | None) -> int | None:
    """Input width of a tabulated-feature embedding (``None`` for a table by Z)."""
    if not isinstance(atom_features, str):
        raise ValueError(f"atom_features must be a string, got {atom_features!r}")
    if atom_feature_dim is not None:
        if int(atom_feature_dim) < 1:
            raise ValueError(f"atom_feature_dim must be >= 1, got {atom_feature_dim}")
        return int(atom_feature_dim)
    if atom_features == "none":
        return None
    if atom_features == "cgcnn":
        return 92
    raise ValueError(
        f"atom_features={atom_features!r} needs atom_feature_dim (the number of feature columns)"
    )


class EmbeddingOptions(ModuleConfig):
    """The atom-embedding options of the built-in backbones' option schemas (see
    :func:`make_embedding` and :func:`feature_dim_of`)."""

    num_species: PosInt = 119
    atom_feature_dim: PosInt | None = None
    atom_features: Str = "none"


def make_embedding(num_species: int, atom_feature_dim: int | None, width: int) -> nn.Module:
    """``nn.Embedding(num_species, width)`` by atomic number, or ``Linear(F_in, width)``."""
    if atom_feature_dim is None:
        if num_species < 2:
            raise ValueError(f"num_species must be >= 2, got {num_species}")
        return nn.Embedding(num_species, width)
    return nn.Linear(atom_feature_dim, width)
