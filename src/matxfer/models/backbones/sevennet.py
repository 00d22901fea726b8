"""SevenNet-0 (Park et al., J. Chem. Theory Comput. 20, 4857 (2024)) as a matxfer backbone.

:class:`SevenNetBackbone` (registry name ``"sevennet"``) wraps the interaction blocks of a
pretrained SevenNet potential from the ``sevenn`` wheel (``7net-0``, the 11 July 2024
SevenNet-0; ``7net-l3i5`` works the same way) and returns equivariant per-atom features:
the node features after **every** interaction block, concatenated, with their irreps
declared in ``out_spec`` (an ``e3nn.o3.Irreps``). SevenNet-0 has 5 NequIP-type blocks
(842,623 parameters in all); blocks 0-3 output ``128x0 + 64x1 + 32x2`` and the last block
scalars only (``128x0``), so the default features are 2048 numbers per atom:
``4 x (128x0e + 64x1o + 32x2e) + 128x0e``. The energy read-out and the per-species
shift/scale are not part of the features; with ``readout=True`` they are kept so that
:meth:`SevenNetBackbone.energy` gives the potential's own energy (a check that the blocks
are run exactly as ``sevenn`` runs them).

Parity. SevenNet-0 is trained with ``is_parity=False``: it is equivariant under proper
rotations only, and ``sevenn`` labels every irrep ``le``. Its edge spherical harmonics are
nevertheless ordinary ``Y_l`` of the bond vector (``(-1)^l`` under inversion), so the
first block's features are exactly ``0e + 1o + 2e``; later blocks mix in parity-violating
paths (e.g. the cross product ``1 x 1 -> 1``), which make them only approximately
``0e / 1o / 2e``. Measured in float64 by comparing the features of a crystal and of its
image under inversion (negated positions and lattice), relative deviation from the
declared parity:

=============  =======  ===========  ===========  ===========  =========
block, irrep   ZnO      BaTiO3 P4mm  rutile TiO2  triclinic    NaCl
=============  =======  ===========  ===========  ===========  =========
0: 0e, 1o, 2e  1e-14    3e-15        2e-15        8e-16        exact
1: 0e          6e-16    5e-16        4e-16        2e-16        exact
1: 1o          1e-10    3e-15        3e-15        4e-3         exact (0)
1: 2e          4e-10    6e-3         4e-3         4e-3         exact (0)
2-3: 0e        1e-15    6e-16        7e-16        2e-4, 7e-4   exact
2-3: 1o        1e-10    3e-15        3e-15        2e-2, 1e-2   exact (0)
2-3: 2e        3e-10    1e-2, 3e-2   6e-3, 1e-2   2e-2, 2e-2   exact (0)
4: 0e          1e-15    6e-16        7e-16        9e-4         exact
=============  =======  ===========  ===========  ===========  =========

(rock salt: every atom sits on an inversion centre with cubic site symmetry, so its l > 0
features vanish and the scalars are trivially even; a deviation near 1e-15 is exact in
float64; the l = 1 channels never keep ``sevenn``'s label ``1e``: they flip sign.) The
``parity`` option says what the backbone returns:

- ``"natural"`` (default): SevenNet's features as they are, labelled with the parity they
  (approximately) have, ``(-1)^l``. Exactly rotation-equivariant; exact under inversion
  for block 0 and for the scalars of block 1, approximate for the rest (table above).
- ``"project"``: the crystal and its inversion image are both run (twice the cost) and
  each irrep block is projected onto its declared parity, ``(f(S) + p f(PS)) / 2``: the
  same irreps, exactly O(3)-equivariant (the small parity-violating part is dropped).
- ``"split"``: both parity parts are kept, ``le`` from ``(f(S) + f(PS)) / 2`` and ``lo`` from
  ``(f(S) - f(PS)) / 2`` for every block: exactly O(3)-equivariant, twice the width (the odd
  part also provides ``2o`` and ``0o`` channels).

Graphs. The backbone uses the edges of the matxfer graph (``edge_index``, ``cell_shift``),
which must hold every neighbour within SevenNet's cutoff (5 A for SevenNet-0): graph
settings ``cutoff: 5.0, max_neighbors: null`` (the ``graph_defaults``; see
:meth:`SevenNetBackbone.check_graph_settings`, which training calls). Edges beyond the
cutoff are an error, except the k-nearest fallback edges of atoms with no neighbour (they
are dropped, as SevenNet's own neighbour list would not have them). Edge vectors are
computed from ``pos`` and ``cell`` inside ``forward``, so features are differentiable with
respect to both.

The ``sevenn`` package (``pip install matxfer[sevennet]``) is imported only when a backbone
is built. Its checkpoint file brings the architecture and the weights; the recorded
``config`` names the model and says ``pretrained: False`` (the weights travel in the
matxfer checkpoint's state dict), so rebuilding from a checkpoint never re-reads the
pretrained weights and a ``scratch`` run starts from a random SevenNet architecture.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import torch
from e3nn import o3
from torch import Tensor, nn

from matxfer import keys as K
from matxfer.config import Bool, Int, ModuleConfig, Str
from matxfer.errors import MissingDependencyError
from matxfer.models.base import Backbone
from matxfer.models.registry import register_backbone
from matxfer.nn.pooling import graph_index

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install matxfer[sevennet]"

#: pretrained models of the sevenn wheel this backbone supports (name -> description)
MODELS = {
    "7net-0": "SevenNet-0 (11Jul2024): 5 blocks, lmax 2, 0.84M parameters, cutoff 5 A",
    "7net-0_22may2024": "SevenNet-0 (22May2024)",
    "7net-l3i5": "SevenNet-l3i5: 5 blocks, lmax 3, cutoff 5 A",
}

ParityMode = Literal["natural", "project", "split"]
PARITY_MODES: tuple[str, ...] = get_args(ParityMode)

#: module names of one interaction block in a SevenNet model, in order (prefixed "<t>_")
_BLOCK_PARTS = (
    "self_connection_intro",
    "self_interaction_1",
    "convolution",
    "self_interaction_2",
    "self_connection_outro",
    "equivariant_gate",
)
_READOUT_PARTS = ("reduce_input_to_hidden", "reduce_hidden_to_energy", "rescale_atomic_energy")


def import_sevenn():
    """Import the ``sevenn`` modules the backbone uses: ``(sevenn.util, sevenn._keys)``.

    Raises:
        MissingDependencyError: ``sevenn`` is not installed (the message says how to get it).
    """
    try:
        import sevenn._keys as sevenn_keys
        import sevenn.util as sevenn_util
    except ImportError as exc:
        raise MissingDependencyError(
            f"the 'sevennet' backbone needs the sevenn package, which is not installed: "
            f"{INSTALL_HINT} (or pip install sevenn==0.13.0); import failed with: {exc}"
        ) from exc
    return sevenn_util, sevenn_keys


def sevennet_checkpoint_path(model: str) -> Path:
    """Path of a SevenNet checkpoint: a file path, or a model name shipped in the wheel.

    Raises:
        ValueError: an unknown name that is not a file either.
    """
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if model not in MODELS:
        raise ValueError(
            f"unknown SevenNet model {model!r}; valid: {sorted(MODELS)} or a checkpoint path"
        )
    util, _ = import_sevenn()
    found = Path(util.pretrained_name_to_path(model))
    if not found.is_file():
        raise FileNotFoundError(f"SevenNet checkpoint {model!r} not found at {found}")
    return found


def _build_sevennet(model: str, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
    """(``AtomGraphSequential`` in float32, its config) from a SevenNet checkpoint."""
    util, _ = import_sevenn()
    path = sevennet_checkpoint_path(model)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # sevenn builds (and patches) its weights in float32
    try:
        cp = util.load_checkpoint(str(path))
        if pretrained:
            net = cp.build_model()
        else:
            from sevenn.model_build import build_E3_equivariant_model

            net = build_E3_equivariant_model(dict(cp.config))
        config = dict(cp.config)
    finally:
        torch.set_default_dtype(old)
    return net, config


class _Embedding(nn.Module):
    """SevenNet's input layers: edge embedding (Bessel basis x cutoff, spherical harmonics)
    and the linear map from the one-hot species to the first node features."""

    def __init__(self, edge: nn.Module, species: nn.Module):
        super().__init__()
        self.edge = edge
        self.species = species
        self._bessel_n = None
        basis = getattr(edge, "basis_function", None)
        if basis is not None and isinstance(getattr(basis, "coeffs", None), nn.Parameter):
            self._bessel_n = int(basis.coeffs.numel())

    def reset_parameters(self) -> None:
        from matxfer.nn.e3 import reset_e3nn_parameters

        reset_e3nn_parameters(self.species)
        basis = self.edge.basis_function
        if self._bessel_n is not None:
            with torch.no_grad():
                n = torch.arange(1, self._bessel_n + 1, dtype=basis.coeffs.dtype)
                basis.coeffs.copy_(n * math.pi * basis.prefactor / 2.0)


class _Block(nn.Module):
    """One SevenNet interaction block (its ``sevenn`` modules, run in order)."""

    def __init__(self, parts: dict[str, nn.Module]):
        super().__init__()
        self.parts = nn.ModuleDict(parts)

    def reset_parameters(self) -> None:
        from matxfer.nn.e3 import reset_e3nn_parameters

        reset_e3nn_parameters(self)

    def forward(self, d: dict) -> dict:
        for module in self.parts.values():
            d = module(d)
        return d


def _refresh_after_load(module, _incompatible_keys) -> None:
    module.refresh_wigner_3j()


class SevenNetConfig(ModuleConfig):
    """Options of the ``sevennet`` backbone (see :class:`SevenNetBackbone`)."""

    model: Str = "7net-0"
    pretrained: Bool = True
    layers: Str | list[Int] = "all"
    parity: ParityMode = "natural"
    readout: Bool = False
    initialized_from: Str | None = None


@register_backbone("sevennet", config=SevenNetConfig)
class SevenNetBackbone(Backbone):
    """Pretrained SevenNet interaction blocks returning the per-atom irreps of every block.

    Args:
        model: ``"7net-0"`` (SevenNet-0, default), ``"7net-l3i5"``, ``"7net-0_22may2024"``
            or the path of a SevenNet ``.pth`` checkpoint (NequIP-type, not multi-fidelity).
        pretrained: load the checkpoint's weights (``False``: the same architecture with
            random weights; recorded configs say ``False``, the weights travel in the state
            dict).
        layers: which blocks' outputs are concatenated: ``"all"`` or a list of block
            indices (blocks after the last one listed are not built).
        parity: ``"natural"``, ``"project"`` or ``"split"`` (see the module docstring).
        readout: keep SevenNet's energy read-out (for :meth:`energy`; not used by
            ``forward``).
        initialized_from: informational (the recorded source of the weights).

    Raises:
        MissingDependencyError: ``sevenn`` is missing.
        ValueError: unknown model or option, or an unsupported checkpoint.
    """

    graph_defaults: ClassVar[dict[str, Any]] = {
        "cutoff": 5.0,
        "max_neighbors": None,
        "line_graph": False,
        "atom_features": "none",
    }
    equivariant: ClassVar[bool] = True

    def __init__(
        self,
        model: str = "7net-0",
        pretrained: bool = True,
        layers: str | list[int] = "all",
        parity: str = "natural",
        readout: bool = False,
        initialized_from: str | None = None,
    ):
        super().__init__()
        import_sevenn()
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a SevenNet model name or path, got {model!r}")
        if parity not in PARITY_MODES:
            raise ValueError(f"parity must be one of {list(PARITY_MODES)}, got {parity!r}")
        net, cfg = _build_sevennet(model, bool(pretrained))
        if cfg.get("interaction_type", "nequip") != "nequip" or cfg.get("use_modality", False):
            raise ValueError(f"SevenNet model {model!r} is not a single-fidelity NequIP-type model")
        n_blocks = int(cfg["num_convolution_layer"])
        if layers == "all":
            used = list(range(n_blocks))
        elif (
            isinstance(layers, (list, tuple))
            and layers
            and all(isinstance(k, int) and not isinstance(k, bool) for k in layers)
        ):
            used = sorted({int(k) for k in layers})
            if used[0] < 0 or used[-1] >= n_blocks:
                raise ValueError(
                    f"layers {list(layers)} out of range: {model!r} has {n_blocks} blocks"
                )
        else:
            raise ValueError(
                f"layers must be 'all' or a non-empty list of block indices, got {layers!r}"
            )
        if readout:
            used_blocks = n_blocks  # the read-out needs the last block
        else:
            used_blocks = used[-1] + 1
        if pretrained and initialized_from is None:
            initialized_from = model
        self.config = {
            "model": model,
            "pretrained": False,
            "layers": "all" if layers == "all" else used,
            "parity": parity,
            "readout": bool(readout),
            "initialized_from": initialized_from,
        }
        self.cutoff = float(cfg["cutoff"])
        #: a model trained with parity has true labels; SevenNet-0 and l3i5 are not
        self.trained_with_parity = bool(cfg.get("is_parity", False))
        self.num_species = int(cfg["_number_of_species"])
        self.n_blocks = n_blocks
        self.used_layers = used
        self.parity = parity
        #: "natural" features of a model trained without parity are only approximately
        #: equivariant under the inversion (see the module docstring)
        self.respects_inversion = parity != "natural" or self.trained_with_parity
        z_to_type = torch.full((120,), -1, dtype=torch.long)
        for z, idx in cfg["_type_map"].items():
            z_to_type[int(z)] = int(idx)
        self.register_buffer("z_to_type", z_to_type, persistent=False)

        mods = net._modules
        self.embedding = _Embedding(mods["edge_embedding"], mods["onehot_to_feature_x"])
        blocks = []
        block_irreps = []
        for t in range(used_blocks):
            parts = {p: mods[f"{t}_{p}"] for p in _BLOCK_PARTS}
            blocks.append(_Block(parts))
            block_irreps.append(o3.Irreps(parts["equivariant_gate"].gate.irreps_out))
        self.interactions = nn.ModuleList(blocks)
        self.readout = nn.ModuleDict({p: mods[p] for p in _READOUT_PARTS}) if readout else None
        self.sevennet_irreps = [block_irreps[t] for t in used]
        self.out_spec = self._declared_irreps()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    # ----------------------------------------------------------------------------------
    def refresh_wigner_3j(self) -> int:
        """Recompute the Wigner 3j buffers of the tensor products in their current dtype.

        e3nn keeps them as buffers computed when the layer is built (SevenNet is built in
        float32); a model cast to float64 would otherwise keep float32-rounded coupling
        coefficients and be rotation-equivariant only to ~1e-8. Called after every cast
        and state-dict load; returns the number of buffers refreshed.
        """
        n = 0
        with torch.no_grad():
            for module in self.modules():
                for name, buf in module._buffers.items():
                    if buf is None or not name.startswith("_w3j_"):
                        continue
                    l1, l2, l3 = (int(x) for x in name[len("_w3j_") :].split("_"))
                    buf.copy_(o3.wigner_3j(l1, l2, l3, dtype=buf.dtype, device=buf.device))
                    n += 1
        return n

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "sevennet_irreps"):
            self.refresh_wigner_3j()
        return out

    # ----------------------------------------------------------------------------------
    def _parity_of(self, ir: o3.Irrep) -> int:
        """Declared parity of a SevenNet irrep: ``(-1)^l`` (measured) unless the model was
        trained with parity, whose labels are then true."""
        return int(ir.p) if self.trained_with_parity else (-1) ** ir.l

    def _declared_irreps(self) -> o3.Irreps:
        parts = []
        for irreps in self.sevennet_irreps:
            for mul, ir in irreps:
                natural = self._parity_of(ir)
                if self.parity == "split":
                    parts.append((mul, (ir.l, 1)))
                    parts.append((mul, (ir.l, -1)))
                else:
                    parts.append((mul, (ir.l, natural)))
        return o3.Irreps(parts)

    def layer_groups(self) -> list[str]:
        """``["embedding", "interactions.0", ..., "interactions.<last>"(, "readout")]``."""
        groups = ["embedding"] + [f"interactions.{k}" for k in range(len(self.interactions))]
        if self.readout is not None:
            groups.append("readout")
        return groups

    def check_graph_settings(self, settings) -> None:
        """Raise unless graphs hold every neighbour within SevenNet's cutoff.

        Raises:
            ValueError: ``settings.cutoff`` differs from the model's cutoff or
                ``max_neighbors`` is set.
        """
        cutoff = getattr(settings, "cutoff", None)
        cap = getattr(settings, "max_neighbors", None)
        if cutoff is None or abs(float(cutoff) - self.cutoff) > 1e-9 or cap is not None:
            raise ValueError(
                f"the sevennet backbone ({self.config['model']}) needs graphs with every "
                f"neighbour within its {self.cutoff:g} A cutoff (graph.cutoff: {self.cutoff:g}, "
                f"graph.max_neighbors: null); got cutoff={cutoff}, max_neighbors={cap}"
            )

    # ----------------------------------------------------------------------------------
    def _inputs(self, data) -> tuple[dict, Tensor, int]:
        """SevenNet's input dict (edge vectors, one-hot species) from a matxfer graph."""
        _, SK = import_sevenn()
        z = data[K.ATOMIC_NUMBERS].long()
        dtype = self.embedding.species.linear.weight.dtype
        if z.numel():
            if int(z.max()) >= self.z_to_type.numel() or int(z.min()) < 0:
                raise ValueError(f"atomic number {int(z.max())} outside SevenNet's element table")
            types = self.z_to_type.to(z.device)[z]
            if bool((types < 0).any()):
                bad = sorted({int(v) for v in z[types < 0].tolist()})
                raise ValueError(
                    f"element(s) with Z={bad} are not among the {self.num_species} species "
                    f"{self.config['model']} was trained on"
                )
        else:
            types = z
        pos = data[K.POSITIONS].to(dtype)
        batch, num_graphs = graph_index(data, z.shape[0], device=pos.device)
        cell = data[K.CELL].to(dtype).reshape(-1, 3, 3)
        src, dst = data[K.EDGE_INDEX][0], data[K.EDGE_INDEX][1]  # neighbour j -> centre i
        shift = data[K.CELL_SHIFT].to(dtype)
        vec = pos[src] + torch.einsum("ea,eab->eb", shift, cell[batch[dst]]) - pos[dst]
        if vec.shape[0]:
            length = vec.detach().norm(dim=1)
            far = length > self.cutoff + 1e-6
            if bool(far.any()):
                n_fallback = int(data["n_fallback"].sum()) if "n_fallback" in data else 0
                if n_fallback == 0:
                    raise ValueError(
                        f"graph has edges up to {float(length.max()):.3f} A but the sevennet "
                        f"backbone needs every neighbour within {self.cutoff:g} A and nothing "
                        f"beyond: build graphs with cutoff={self.cutoff:g}, max_neighbors=None"
                    )
                keep = ~far  # k-nearest fallback edges of isolated atoms: not SevenNet's
                vec, src, dst = vec[keep], src[keep], dst[keep]
        onehot = torch.nn.functional.one_hot(types, self.num_species).to(dtype)
        d = {
            SK.EDGE_VEC: vec,
            SK.EDGE_IDX: torch.stack([dst, src]),  # sevenn: (centre, neighbour)
            SK.NODE_FEATURE: onehot,
            SK.NODE_ATTR: onehot,
            SK.ATOM_TYPE: types,
            SK.BATCH: batch,
        }
        return d, batch, num_graphs

    def _run(self, d: dict, need_last: bool = False) -> tuple[list[Tensor], dict]:
        """Node features after each built block (SevenNet's order), and the final dict."""
        _, SK = import_sevenn()
        d = self.embedding.edge(d)
        d = self.embedding.species(d)
        outs = []
        for block in self.interactions:
            d = block(d)
            outs.append(d[SK.NODE_FEATURE])
        return outs, d

    def block_features(self, data) -> list[Tensor]:
        """SevenNet's node features after every built block, unlabelled and unprojected."""
        d, _, _ = self._inputs(data)
        outs, _ = self._run(d)
        return outs

    def forward(self, data) -> dict[str, Tensor]:
        """Per-atom features of a (batched) crystal graph.

        Returns:
            ``{node_feats: [n, out_spec.dim]}`` in the dtype of the backbone's weights.

        Raises:
            ValueError: an element SevenNet was not trained on, or graph edges beyond the
                cutoff.
        """
        d, _, _ = self._inputs(data)
        _, SK = import_sevenn()
        if self.parity == "natural":
            outs, _ = self._run(d)
            return {K.NODE_FEATURES: torch.cat([outs[t] for t in self.used_layers], dim=1)}
        d_inv = dict(d)
        d_inv[SK.EDGE_VEC] = -d[SK.EDGE_VEC]  # the inversion image: -pos, -cell
        plus, _ = self._run(d)
        minus, _ = self._run(d_inv)
        pieces = []
        for t, irreps in zip(self.used_layers, self.sevennet_irreps):
            f, g = plus[t], minus[t]
            for (_mul, ir), sl in zip(irreps, irreps.slices()):
                even = 0.5 * (f[:, sl] + g[:, sl])
                odd = 0.5 * (f[:, sl] - g[:, sl])
                if self.parity == "split":
                    pieces += [even, odd]
                else:
                    pieces.append(even if self._parity_of(ir) == 1 else odd)
        return {K.NODE_FEATURES: torch.cat(pieces, dim=1)}

    def energy(self, data) -> Tensor:
        """SevenNet's total energy per crystal ``[B]`` in eV (needs ``readout=True``).

        Runs SevenNet's own read-out and per-species shift/scale on the last block's
        features, i.e. what the potential predicts for these graphs.
        """
        if self.readout is None:
            raise ValueError("energy() needs a backbone built with readout=True")
        _, SK = import_sevenn()
        d, batch, num_graphs = self._inputs(data)
        _, d = self._run(d)
        for module in self.readout.values():
            d = module(d)
        atomic = d[SK.ATOMIC_ENERGY].reshape(-1)
        return torch.zeros(num_graphs, dtype=atomic.dtype, device=atomic.device).index_add_(
            0, batch, atomic
        )


# --------------------------------------------------------------------------------------
# a matxfer checkpoint of the pretrained backbone
# --------------------------------------------------------------------------------------


def export_sevennet_checkpoint(
    out: str | Path,
    model: str = "7net-0",
    layers: str | list[int] = "all",
    parity: str = "natural",
) -> Path:
    """Write the pretrained SevenNet backbone as a matxfer checkpoint without heads.

    The checkpoint is a parent for every transfer recipe (``transfer.init_from`` of a run,
    or ``pretrain: {name: {import: sevennet:7net-0}}`` of a study): ``head`` trains a new
    head on the frozen backbone, ``full`` fine-tunes everything, ``freeze:k`` freezes the
    embedding and the first k interaction blocks, ``scratch`` reuses the architecture with
    random weights.

    Returns:
        The written path.
    """
    from matxfer.checkpoint import build_checkpoint, file_sha256, load_checkpoint, save_checkpoint
    from matxfer.data.graphs import GraphSettings
    from matxfer.models.base import PropertyModel

    backbone = SevenNetBackbone(model=model, layers=layers, parity=parity)
    source = sevennet_checkpoint_path(model)
    pm = PropertyModel(backbone, nn.ModuleDict(), nn.ModuleDict(), {})
    graph = GraphSettings(**SevenNetBackbone.graph_defaults).to_dict()
    graph["cutoff"] = backbone.cutoff
    provenance = {
        "source": "SevenNet pretrained weights (sevenn wheel)",
        "source_file": source.name,
        "source_sha256": file_sha256(source),
        "recipe": "import",
        "command": f"matxfer import-sevennet --model {model} --parity {parity}",
    }
    ckpt = build_checkpoint(pm, {}, graph, None, split=None, provenance=provenance)
    written = save_checkpoint(ckpt, out)
    load_checkpoint(written)
    return written
