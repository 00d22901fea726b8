"""CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)) as a matxfer backbone.

:class:`CHGNetBackbone` (registry name ``"chgnet"``) wraps the interaction layers of the
pretrained CHGNet 0.3.0 universal potential and returns the 64-dimensional atom features
after its last interaction block (by default followed by CHGNet's own read-out layer norm,
i.e. exactly the per-atom vectors its energy MLP sees). The energy MLP, the magnetic-moment
layer and the composition (AtomRef) model are not part of the backbone; any matxfer head
(``scalar``, ``edge-tensor``, ...) goes on top.

Graphs. The backbone consumes ordinary matxfer graphs and uses only ``z``, ``pos``,
``cell`` and ``batch`` from them: inside ``forward`` it builds CHGNet's own graphs (directed
atom graph within 6 A, bond graph of the bonds shorter than 3 A, angles between them) with
CHGNet's graph converter, from a detached copy of the coordinates. The converter only
decides *which* atoms, images and bond pairs are connected; every bond vector, length and
angle is then recomputed here from ``pos`` and ``cell``, so the features are differentiable
with respect to both (e.g. forces of a head by autograd; a stress needs ``pos`` and ``cell``
strained together, as CHGNet does). The edges
stored in the matxfer graph are not used by the backbone; they are there for heads that
need them (e.g. ``edge-tensor``), and their cutoff is set by ``graph_defaults``. The
topology of recently seen structures is kept in a small least-recently-used cache (the
key is the exact coordinates, so a moved or rotated structure gets a new topology).

Weights come from the copy in ``matxfer.paths.pretrained_dir() / "chgnet"`` when present,
else from the ``chgnet`` wheel itself. The ``chgnet`` package is an optional dependency,
imported only when a :class:`CHGNetBackbone` is built; without it the error says
``pip install matxfer[chgnet]``.

Precision: the module can be cast to float64 (``backbone.double()``), in which case the
geometry is computed in float64 as well; CHGNet itself was trained in float32.

Frozen-backbone features: :func:`cache_features` computes the node features of a list of
graphs once; :func:`attach_features` stores them on the graphs and :class:`CachedBackbone`
returns them in place of the real backbone, so head-only training (``recipe: head``) does
not recompute CHGNet every epoch (see :func:`cache_features` for the intended use).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, ClassVar, NamedTuple

import numpy as np
import torch
from annotated_types import Ge
from torch import Tensor, nn

from matxfer import keys as K
from matxfer.config import Bool, Int, ModuleConfig, Str
from matxfer.errors import MissingDependencyError
from matxfer.models.base import Backbone
from matxfer.models.registry import register_backbone
from matxfer.nn.pooling import graph_index

log = logging.getLogger(__name__)

#: shipped weight files by version name
WEIGHT_FILES = {"0.3.0": "chgnet_0.3.0_e29f68s314m37.pth.tar"}

#: constructor arguments of the CHGNet 0.3.0 checkpoint (used for a random initialisation
#: with the same architecture; a weight file brings its own)
CHGNET_030_ARGS: dict[str, Any] = {
    "atom_fea_dim": 64,
    "bond_fea_dim": 64,
    "angle_fea_dim": 64,
    "num_radial": 31,
    "num_angular": 31,
    "n_conv": 4,
    "atom_conv_hidden_dim": 64,
    "bond_conv_hidden_dim": 64,
    "angle_layer_hidden_dim": 0,
    "update_bond": True,
    "update_angle": True,
    "conv_dropout": 0,
    "read_out": "ave",
    "mlp_hidden_dims": [64, 64, 64],
    "mlp_dropout": 0,
    "mlp_first": True,
    "is_intensive": True,
    "non_linearity": "silu",
    "atom_graph_cutoff": 6,
    "bond_graph_cutoff": 3,
    "graph_converter_algorithm": "fast",
    "cutoff_coeff": 8,
    "learnable_rbf": True,
    "gMLP_norm": "layer",
    "readout_norm": "layer",
}

#: the graph field :func:`attach_features` writes and :class:`CachedBackbone` reads (the
#: field training with a frozen backbone uses too)
CACHED_FEATURES = "cached_node_feats"

INSTALL_HINT = "pip install matxfer[chgnet]"


def import_chgnet():
    """Import the pieces of the ``chgnet`` package the backbone uses.

    Returns:
        ``(CHGNet class, CrystalGraphConverter class)``.

    Raises:
        MissingDependencyError: ``chgnet`` is not installed (the message says how to get it).
    """
    try:
        from chgnet.graph.converter import CrystalGraphConverter
        from chgnet.model.model import CHGNet
    except ImportError as exc:
        raise MissingDependencyError(
            f"the 'chgnet' backbone needs the chgnet package, which is not installed: "
            f"{INSTALL_HINT} (or pip install chgnet==0.4.2); import failed with: {exc}"
        ) from exc
    return CHGNet, CrystalGraphConverter


def chgnet_weights_path(version: str = "0.3.0") -> Path:
    """Path of a pretrained CHGNet weight file.

    Looks in ``matxfer.paths.pretrained_dir() / "chgnet"`` first, then in the installed
    ``chgnet`` wheel (``chgnet/pretrained/<version>/``).

    Raises:
        ValueError: unknown ``version``.
        FileNotFoundError: the file is in neither place.
    """
    from matxfer.paths import pretrained_dir

    if version not in WEIGHT_FILES:
        raise ValueError(
            f"unknown CHGNet weights {version!r}; valid: {sorted(WEIGHT_FILES)} or a file path"
        )
    name = WEIGHT_FILES[version]
    candidates = [pretrained_dir() / "chgnet" / name]
    try:
        import chgnet

        candidates.append(Path(chgnet.__file__).parent / "pretrained" / version / name)
    except ImportError:
        pass
    for cand in candidates:
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"CHGNet {version} weights not found (looked at {[str(c) for c in candidates]})"
    )


def _read_chgnet_file(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(model_args, state_dict) of a CHGNet ``.pth.tar`` file (read with ``weights_only=True``)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable CHGNet checkpoint: {exc}") from exc
    model = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(model, dict) or "state_dict" not in model or "model_args" not in model:
        raise ValueError(
            f"{path} is not a CHGNet checkpoint (no model.state_dict / model.model_args)"
        )
    return dict(model["model_args"]), dict(model["state_dict"])


class _Topology(NamedTuple):
    """CHGNet graph indices of a batch (all offset to batch numbering, long tensors).

    Attributes:
        atom_graph: ``[D, 2]`` directed bonds (centre, neighbour).
        image: ``[D, 3]`` integer image of the neighbour (float).
        directed2undirected: ``[D]`` undirected bond of each directed bond.
        undirected2directed: ``[U]`` one directed bond of each undirected bond.
        bond_graph: ``[A, 3]`` angles as (centre atom, undirected bond 1, undirected bond 2).
        angle_bonds: ``[A, 2]`` the two directed bonds of each angle.
        n_isolated: atoms without any bond within the atom-graph cutoff.
    """

    atom_graph: Tensor
    image: Tensor
    directed2undirected: Tensor
    undirected2directed: Tensor
    bond_graph: Tensor
    angle_bonds: Tensor
    n_isolated: int


class _Embedding(nn.Module):
    """CHGNet's input layers (one parameter group): atom, bond and angle embeddings.

    Attributes:
        atom: ``AtomEmbedding`` (table of 94 elements, H..Pu).
        bond_basis: ``BondEncoder`` (smooth radial Bessel bases for both graphs).
        bond: bond features from the atom-graph basis.
        bond_weights_ag, bond_weights_bg: bond weights of the atom and bond graphs.
        angle_basis: ``AngleEncoder`` (Fourier basis of the bond angle).
        angle: angle features.
    """

    def __init__(self, chgnet: nn.Module):
        super().__init__()
        self.atom = chgnet.atom_embedding
        self.bond_basis = chgnet.bond_basis_expansion
        self.bond = chgnet.bond_embedding
        self.bond_weights_ag = chgnet.bond_weights_ag
        self.bond_weights_bg = chgnet.bond_weights_bg
        self.angle_basis = chgnet.angle_basis_expansion
        self.angle = chgnet.angle_embedding


class _Interaction(nn.Module):
    """One CHGNet interaction block: atom convolution, then (except in the last block) bond
    convolution and angle update."""

    def __init__(
        self, atom_conv: nn.Module, bond_conv: nn.Module | None, angle_update: nn.Module | None
    ):
        super().__init__()
        self.atom_conv = atom_conv
        self.bond_conv = bond_conv
        self.angle_update = angle_update


def _key_map(n_conv: int) -> list[tuple[str, str | None]]:
    """(CHGNet state-dict prefix, backbone prefix or None for dropped parts)."""
    pairs: list[tuple[str, str | None]] = [
        ("atom_embedding.", "embedding.atom."),
        ("bond_basis_expansion.", "embedding.bond_basis."),
        ("bond_embedding.", "embedding.bond."),
        ("bond_weights_ag.", "embedding.bond_weights_ag."),
        ("bond_weights_bg.", "embedding.bond_weights_bg."),
        ("angle_basis_expansion.", "embedding.angle_basis."),
        ("angle_embedding.", "embedding.angle."),
        ("readout_norm.", "readout_norm."),
        ("composition_model.", None),
        ("site_wise.", None),
        ("mlp.", None),
    ]
    for k in range(n_conv):
        pairs.append((f"atom_conv_layers.{k}.", f"interactions.{k}.atom_conv."))
    for k in range(n_conv - 1):
        pairs.append((f"bond_conv_layers.{k}.", f"interactions.{k}.bond_conv."))
        # the angle update of the last bond block feeds nothing the atom features depend on
        target = f"interactions.{k}.angle_update." if k < n_conv - 2 else None
        pairs.append((f"angle_layers.{k}.", target))
    return pairs


def map_chgnet_state_dict(
    state: dict[str, Tensor], n_conv: int, readout_norm: bool = True
) -> dict[str, Tensor]:
    """Rename a CHGNet state dict to :class:`CHGNetBackbone` names (unused parts dropped).

    Raises:
        ValueError: a key that belongs to no known CHGNet layer.
    """
    pairs = _key_map(n_conv)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for src, dst in pairs:
            if key.startswith(src):
                if dst is not None and not (dst == "readout_norm." and not readout_norm):
                    out[dst + key[len(src) :]] = value
                break
        else:
            raise ValueError(f"unexpected CHGNet weight {key!r}")
    return out


class CHGNetConfig(ModuleConfig):
    """Options of the ``chgnet`` backbone (see :class:`CHGNetBackbone`)."""

    weights: Str | None = "0.3.0"
    readout_norm: Bool = True
    topology_cache: Annotated[Int, Ge(0)] = 4096
    arch: dict[Str, Any] | None = None
    initialized_from: Str | None = None


@register_backbone("chgnet", config=CHGNetConfig)
class CHGNetBackbone(Backbone):
    """Pretrained CHGNet interaction layers returning 64-dim atom features.

    ``weights`` says how the backbone is *initialised*; the recorded ``config`` describes the
    architecture only (``weights: None``, the source kept in ``initialized_from``), because
    the weights themselves travel in the checkpoint's state dict. So rebuilding a model from
    a checkpoint never re-reads the weight file, and a ``scratch`` run that takes its
    architecture from a CHGNet-based checkpoint really starts from random weights.

    Args:
        weights: ``"0.3.0"`` (the pretrained universal potential), a path to a CHGNet
            ``.pth.tar`` file, or ``None`` for a random initialisation (the scratch baseline).
        readout_norm: apply CHGNet's read-out layer norm to the features of the last
            interaction block (what its energy MLP sees).
        topology_cache: number of structures whose CHGNet graph indices are kept (0: none).
        arch: CHGNet constructor arguments that differ from those of 0.3.0
            (:data:`CHGNET_030_ARGS`); only used with ``weights=None`` (a weight file brings
            its own).
        initialized_from: informational (the recorded source of the weights).

    Raises:
        MissingDependencyError: the ``chgnet`` package is missing.
        ValueError: unknown weights name, unreadable weight file or unsupported architecture.
    """

    graph_defaults: ClassVar[dict[str, Any]] = {
        "cutoff": 5.0,
        "max_neighbors": None,
        "line_graph": False,
        "atom_features": "none",
    }
    equivariant: ClassVar[bool] = False

    def __init__(
        self,
        weights: str | None = "0.3.0",
        readout_norm: bool = True,
        topology_cache: int = 4096,
        arch: dict[str, Any] | None = None,
        initialized_from: str | None = None,
    ):
        super().__init__()
        chgnet_cls, converter_cls = import_chgnet()
        if topology_cache < 0:
            raise ValueError(f"topology_cache must be >= 0, got {topology_cache}")
        if weights is not None and not isinstance(weights, str):
            raise ValueError(
                f"weights must be a version name, a file path or None, got {weights!r}"
            )
        if arch is not None and not isinstance(arch, dict):
            raise ValueError(f"arch must be a dict of CHGNet arguments or None, got {arch!r}")
        state = None
        args = {**CHGNET_030_ARGS, **(arch or {})}
        if weights is not None:
            path = (
                Path(weights).expanduser()
                if weights not in WEIGHT_FILES
                else chgnet_weights_path(weights)
            )
            if not path.is_file():
                raise ValueError(
                    f"CHGNet weights {weights!r} is neither a known version {sorted(WEIGHT_FILES)} "
                    "nor an existing file"
                )
            args, state = _read_chgnet_file(path)
            initialized_from = weights
        for key in ("composition_model", "version"):
            args.pop(key, None)
        n_conv = int(args.get("n_conv", 4))
        if n_conv < 2:
            raise ValueError(f"CHGNet with n_conv={n_conv} is not supported (need >= 2)")
        if not args.get("update_bond", True):
            raise ValueError("CHGNet with update_bond=False is not supported")
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
            net = chgnet_cls(**args, composition_model=None)
        if state is not None:
            state = {k: v for k, v in state.items() if not k.startswith("composition_model.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"CHGNet weights {weights!r} do not match the architecture: missing "
                    f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
                )
        self.config = {
            "weights": None,
            "readout_norm": bool(readout_norm),
            "topology_cache": int(topology_cache),
            "arch": {k: v for k, v in args.items() if CHGNET_030_ARGS.get(k, object()) != v},
            "initialized_from": initialized_from,
        }
        self.n_conv = n_conv
        self.atom_graph_cutoff = float(args.get("atom_graph_cutoff", 6))
        self.bond_graph_cutoff = float(args.get("bond_graph_cutoff", 3))
        self.max_z = int(net.atom_embedding.embedding.num_embeddings)
        self.embedding = _Embedding(net)
        blocks = []
        for k in range(n_conv):
            bond = net.bond_conv_layers[k] if k < n_conv - 1 else None
            angle = None
            if k < n_conv - 2 and isinstance(net.angle_layers, nn.ModuleList):
                angle = net.angle_layers[k]
            blocks.append(_Interaction(net.atom_conv_layers[k], bond, angle))
        self.interactions = nn.ModuleList(blocks)
        self.readout_norm = (
            net.readout_norm if (readout_norm and net.readout_norm is not None) else None
        )
        self.out_spec = int(net.atom_fea_dim)
        # a plain attribute, not a sub-module: it has no weights and stays out of the state dict
        converter = converter_cls(
            atom_graph_cutoff=self.atom_graph_cutoff,
            bond_graph_cutoff=self.bond_graph_cutoff,
            algorithm="fast",
            on_isolated_atoms="ignore",
        )
        object.__setattr__(self, "_converter", converter)
        self._topo_cache: OrderedDict[tuple, tuple] = OrderedDict()

    # ----------------------------------------------------------------------------------
    def layer_groups(self) -> list[str]:
        """``["embedding", "interactions.0", ..., "interactions.3"(, "readout_norm")]``."""
        groups = ["embedding"] + [f"interactions.{k}" for k in range(len(self.interactions))]
        if self.readout_norm is not None:
            groups.append("readout_norm")
        return groups

    @classmethod
    def from_chgnet_state_dict(cls, state: dict[str, Tensor], **kwargs) -> CHGNetBackbone:
        """A randomly initialised backbone loaded with a CHGNet state dict (0.3.0 architecture)."""
        bb = cls(weights=None, **kwargs)
        mapped = map_chgnet_state_dict(state, bb.n_conv, bb.readout_norm is not None)
        bb.load_state_dict(mapped, strict=True)
        return bb

    # ----------------------------------------------------------------------------------
    def _structure_topology(self, z: np.ndarray, pos: np.ndarray, cell: np.ndarray) -> tuple:
        """CHGNet graph indices of one structure (numpy, local numbering), cached."""
        key = (z.tobytes(), pos.tobytes(), cell.tobytes())
        hit = self._topo_cache.get(key)
        if hit is not None:
            self._topo_cache.move_to_end(key)
            return hit
        from pymatgen.core import Lattice, Structure

        structure = Structure(Lattice(cell), z.tolist(), pos, coords_are_cartesian=True)
        g = self._converter(structure)
        atom_graph = g.atom_graph.numpy().astype(np.int64).reshape(-1, 2)
        bond_graph = g.bond_graph.numpy().astype(np.int64).reshape(-1, 5)
        topo = (
            atom_graph,
            np.rint(g.neighbor_image.numpy()).astype(np.int64).reshape(-1, 3),
            g.directed2undirected.numpy().astype(np.int64).reshape(-1),
            g.undirected2directed.numpy().astype(np.int64).reshape(-1),
            bond_graph,
            int(len(z) - len(np.unique(atom_graph[:, 0]))),
        )
        limit = self.config["topology_cache"]
        if limit:
            self._topo_cache[key] = topo
            while len(self._topo_cache) > limit:
                self._topo_cache.popitem(last=False)
        return topo

    def topology(
        self, z: Tensor, pos: Tensor, cell: Tensor, batch: Tensor, num_graphs: int
    ) -> _Topology:
        """CHGNet graph indices of a batch of structures (batch numbering).

        Args:
            z: ``[n]`` atomic numbers.
            pos: ``[n, 3]`` Cartesian positions (detached copies are used).
            cell: ``[B, 3, 3]`` lattice vectors as rows.
            batch: ``[n]`` graph index of every atom (sorted).
            num_graphs: ``B``.
        """
        z_np = z.detach().cpu().numpy().astype(np.int64)
        pos_np = pos.detach().cpu().to(torch.float64).numpy()
        cell_np = cell.detach().cpu().to(torch.float64).numpy().reshape(-1, 3, 3)
        counts = torch.bincount(batch.detach().cpu(), minlength=num_graphs).numpy()
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        parts: list[list[np.ndarray]] = [[] for _ in range(7)]
        n_dir = n_und = 0
        n_isolated = 0
        for b in range(num_graphs):
            a0, n = int(starts[b]), int(counts[b])
            if n == 0:
                continue
            ag, img, d2u, u2d, bg, iso = self._structure_topology(
                z_np[a0 : a0 + n],
                np.ascontiguousarray(pos_np[a0 : a0 + n]),
                np.ascontiguousarray(cell_np[b]),
            )
            parts[0].append(ag + a0)
            parts[1].append(img)
            parts[2].append(d2u + n_und)
            parts[3].append(u2d + n_dir)
            parts[4].append(np.stack([bg[:, 0] + a0, bg[:, 1] + n_und, bg[:, 3] + n_und], axis=1))
            parts[5].append(np.stack([bg[:, 2] + n_dir, bg[:, 4] + n_dir], axis=1))
            n_dir += len(ag)
            n_und += len(u2d)
            n_isolated += iso
        shapes = [(0, 2), (0, 3), (0,), (0,), (0, 3), (0, 2)]
        device = pos.device
        tensors = [
            torch.from_numpy(np.concatenate(p) if p else np.zeros(s, dtype=np.int64)).to(device)
            for p, s in zip(parts[:6], shapes)
        ]
        if n_isolated:
            log.warning(
                "%d atom(s) have no neighbour within CHGNet's %.1f A atom-graph cutoff; their "
                "features come from their own embedding only",
                n_isolated,
                self.atom_graph_cutoff,
            )
        return _Topology(*tensors, n_isolated=n_isolated)

    def forward(self, data) -> dict[str, Tensor]:
        """Atom features of a (batched) crystal graph.

        Args:
            data: graph with ``z [n]``, ``pos [n, 3]``, ``cell [B, 3, 3]`` and, when
                batched, ``batch [n]``.

        Returns:
            ``{node_feats: [n, 64]}`` in the dtype of the backbone's weights.

        Raises:
            ValueError: an element beyond CHGNet's table (Z > 94).
        """
        z = data[K.ATOMIC_NUMBERS]
        if z.numel() and (int(z.max()) > self.max_z or int(z.min()) < 1):
            bad = int(z.max()) if int(z.max()) > self.max_z else int(z.min())
            raise ValueError(
                f"atomic number {bad} is outside CHGNet's element table (1..{self.max_z})"
            )
        emb = self.embedding
        dtype = emb.bond.weight.dtype
        pos = data[K.POSITIONS].to(dtype)
        cell = data[K.CELL].to(dtype).reshape(-1, 3, 3)
        batch, num_graphs = graph_index(data, z.shape[0], device=pos.device)
        topo = self.topology(z, pos, cell, batch, num_graphs)

        centre, nbr = topo.atom_graph[:, 0], topo.atom_graph[:, 1]
        offset = torch.einsum("ea,eab->eb", topo.image.to(dtype), cell[batch[centre]])
        vec = pos[centre] - (pos[nbr] + offset)  # CHGNet's convention: centre minus neighbour
        length = vec.norm(dim=1)
        unit = vec / length.unsqueeze(1)
        und_length = length.index_select(0, topo.undirected2directed)
        basis_ag = emb.bond_basis.rbf_expansion_ag(und_length)
        basis_bg = emb.bond_basis.rbf_expansion_bg(und_length)

        x = emb.atom(z.long() - 1)
        bond = emb.bond(basis_ag)
        w_ag = emb.bond_weights_ag(basis_ag)
        w_bg = emb.bond_weights_bg(basis_bg)
        n_angles = topo.bond_graph.shape[0]
        angle = None
        if n_angles:
            angle = emb.angle(
                emb.angle_basis(
                    unit.index_select(0, topo.angle_bonds[:, 0]),
                    unit.index_select(0, topo.angle_bonds[:, 1]),
                )
            )
        for block in self.interactions:
            x = block.atom_conv(
                atom_feas=x,
                bond_feas=bond,
                bond_weights=w_ag,
                atom_graph=topo.atom_graph,
                directed2undirected=topo.directed2undirected,
            )
            if block.bond_conv is not None and angle is not None:
                bond = block.bond_conv(
                    atom_feas=x,
                    bond_feas=bond,
                    bond_weights=w_bg,
                    angle_feas=angle,
                    bond_graph=topo.bond_graph,
                )
                if block.angle_update is not None:
                    angle = block.angle_update(
                        atom_feas=x, bond_feas=bond, angle_feas=angle, bond_graph=topo.bond_graph
                    )
        if self.readout_norm is not None:
            x = self.readout_norm(x)
        return {K.NODE_FEATURES: x}


# --------------------------------------------------------------------------------------
# cached features of a frozen backbone
# --------------------------------------------------------------------------------------


def cache_features(backbone: nn.Module, graphs: list, batch_size: int = 32) -> list[Tensor]:
    """Node features of a frozen backbone for every graph, computed once.

    Training with the ``head`` recipe does this by itself (and keeps the features on disk,
    see :mod:`matxfer.feature_cache`); this function and :class:`CachedBackbone` are
    for custom loops:

    .. code-block:: python

        feats = cache_features(model.backbone, train_graphs + val_graphs)
        attach_features(train_graphs + val_graphs, feats)
        real_backbone, model.backbone = model.backbone, CachedBackbone(model.backbone.out_spec)
        ...  # train the heads as usual; the batches carry their cached features
        model.backbone = real_backbone  # before saving or predicting on new structures

    Features depend only on the structure while the backbone is frozen, so this is exact
    (not an approximation) whenever the frozen modules have no dropout active.

    Args:
        backbone: any matxfer backbone (switched to eval mode for the call, then restored).
        graphs: crystal graphs (``torch_geometric`` ``Data``).
        batch_size: graphs per forward pass.

    Returns:
        One ``[n_atoms_i, width]`` tensor per graph (detached, on the CPU).
    """
    from matxfer.feature_cache import compute_outputs

    return [o[K.NODE_FEATURES] for o in compute_outputs(backbone, graphs, batch_size)]


def attach_features(graphs: list, features: list[Tensor], key: str = CACHED_FEATURES) -> list:
    """Store per-graph node features on the graphs (``graph[key] = [n_atoms, width]``).

    PyG batching concatenates them along the atoms, so a batch carries the features of its
    atoms in batch order.

    Raises:
        ValueError: the lists differ in length or a feature tensor does not match its graph.
    """
    if len(graphs) != len(features):
        raise ValueError(f"{len(graphs)} graphs but {len(features)} feature tensors")
    for g, f in zip(graphs, features):
        if f.shape[0] != int(g.num_nodes):
            raise ValueError(
                f"features of shape {tuple(f.shape)} for graph {getattr(g, 'material_id', '')!r} "
                f"with {int(g.num_nodes)} atoms"
            )
        g[key] = f.cpu()
    return graphs


class CachedBackbone(Backbone):
    """Stand-in backbone returning features stored on the graphs by :func:`attach_features`.

    Not registered (it cannot be saved in a checkpoint): swap the real backbone back in
    before saving.

    Args:
        out_spec: width of the cached features (the real backbone's ``out_spec``).
        key: graph field holding them.
    """

    def __init__(self, out_spec: int, key: str = CACHED_FEATURES):
        super().__init__()
        self.out_spec = out_spec
        self.key = key
        self.config = {"out_spec": out_spec, "key": key}

    def layer_groups(self) -> list[str]:
        return []

    def forward(self, data) -> dict[str, Tensor]:
        """``{node_feats: data[key]}``.

        Raises:
            ValueError: the graphs carry no cached features.
        """
        if self.key not in data:
            raise ValueError(
                f"graph has no cached features {self.key!r}; call attach_features first"
            )
        return {K.NODE_FEATURES: data[self.key]}


# --------------------------------------------------------------------------------------
# a matxfer checkpoint of the pretrained backbone
# --------------------------------------------------------------------------------------


def export_chgnet_checkpoint(
    out: str | Path, weights: str = "0.3.0", readout_norm: bool = True
) -> Path:
    """Write the pretrained CHGNet backbone as a matxfer checkpoint without heads.

    The checkpoint is a parent for every transfer recipe (``transfer.init_from`` of a run,
    or ``pretrain: {name: {checkpoint: ...}}`` of a study): ``head`` trains a new head on the
    frozen backbone, ``full`` fine-tunes everything, ``freeze:k`` freezes the embedding and
    the first k interaction blocks, ``scratch`` reuses the architecture with random weights.

    Args:
        out: checkpoint path to write.
        weights: ``"0.3.0"`` or a CHGNet ``.pth.tar`` file.
        readout_norm: keep CHGNet's read-out layer norm on the features.

    Returns:
        The written path.
    """
    from matxfer.checkpoint import build_checkpoint, file_sha256, load_checkpoint, save_checkpoint
    from matxfer.data.graphs import GraphSettings
    from matxfer.models.base import PropertyModel

    backbone = CHGNetBackbone(weights=weights, readout_norm=readout_norm)
    source = Path(weights) if weights not in WEIGHT_FILES else chgnet_weights_path(weights)
    model = PropertyModel(backbone, nn.ModuleDict(), nn.ModuleDict(), {})
    graph = GraphSettings(**CHGNetBackbone.graph_defaults).to_dict()
    provenance = {
        "source": "CHGNet pretrained weights",
        "source_file": source.name,
        "source_sha256": file_sha256(source),
        "recipe": "import",
        "command": f"matxfer import-chgnet --weights {weights}",
    }
    ckpt = build_checkpoint(model, {}, graph, None, split=None, provenance=provenance)
    written = save_checkpoint(ckpt, out)
    load_checkpoint(written)
    return written
