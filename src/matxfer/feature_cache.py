"""Frozen-backbone features, computed once per dataset and reused.

With the ``head`` recipe every backbone parameter is frozen and its modules run in eval
mode, so its outputs depend only on the structure. :func:`~matxfer.train.loop.fit` then
computes the backbone outputs of the training and validation crystals once, stores them on
the graphs (:func:`attach_outputs`) and installs :func:`read_cached_outputs` on the backbone:
its calls then return the stored outputs of a batch that carries them instead of running
the network each epoch (exact, not an approximation: the heads see the same numbers), and
run it as before on a batch that does not. The model classes know nothing of this; the
backbone's state dict and config are untouched. The outputs are also
kept on disk under ``cache_dir()/features/``, keyed by a hash of the backbone (class,
config and every parameter and buffer) and of the graph settings, so the other cells of a
study (seeds, training sizes, heads) that use the same frozen backbone on the same data do
not recompute them. For a universal potential such as CHGNet this is most of the cost of a
head-only run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from matxfer import keys as K
from matxfer.cache_io import save_torch, stable_hash

log = logging.getLogger(__name__)

#: graph fields holding cached backbone outputs (per atom / per edge)
CACHED_NODE = "cached_node_feats"
CACHED_EDGE = "cached_edge_feats"
#: bump when the stored layout changes
FORMAT = 1


def backbone_is_frozen(model) -> bool:
    """True when the model's backbone has parameters and none of them is trainable."""
    params = list(model.backbone.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def backbone_fingerprint(backbone: nn.Module) -> str:
    """Hash of the backbone's class, config and every parameter and buffer (exact bytes)."""
    h = hashlib.sha256()
    h.update(type(backbone).__name__.encode())
    h.update(json.dumps(getattr(backbone, "config", {}), sort_keys=True, default=str).encode())
    for name, t in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


@torch.no_grad()
def compute_outputs(backbone: nn.Module, graphs: list, batch_size: int = 32) -> list[dict[str, Tensor]]:
    """Backbone outputs of each graph: ``{node_feats: [n_atoms, d]}`` (+ ``edge_feats``).

    The backbone runs in eval mode (its mode is restored afterwards); a progress bar counts
    the structures (silenced by ``MATXFER_PROGRESS=0``).
    """
    from torch_geometric.data import Batch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from matxfer.progress import progress_bar

    was_training = backbone.training
    backbone.eval()
    device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    result: list[dict[str, Tensor]] = []
    bar = progress_bar(
        f"backbone features ({type(backbone).__name__})",
        total=len(graphs),
        disable=None if len(graphs) > batch_size else True,
        unit="structure",
    )
    try:
        for i in range(0, len(graphs), batch_size):
            chunk = graphs[i : i + batch_size]
            out = backbone(Batch.from_data_list(chunk).to(device))
            nodes = out[K.NODE_FEATURES].detach().cpu().split([int(g.num_nodes) for g in chunk])
            edges = None
            if out.get(K.EDGE_FEATURES) is not None:
                counts = [int(g[K.EDGE_INDEX].shape[1]) for g in chunk]
                edges = out[K.EDGE_FEATURES].detach().cpu().split(counts)
            for j in range(len(chunk)):
                item = {K.NODE_FEATURES: nodes[j].clone()}
                if edges is not None:
                    item[K.EDGE_FEATURES] = edges[j].clone()
                result.append(item)
            bar.update(len(chunk))
    finally:
        bar.close()
        backbone.train(was_training)
    return result


def attach_outputs(graphs: list, outputs: list[dict[str, Tensor]]) -> None:
    """Store cached outputs on the graphs (PyG batching concatenates them in batch order)."""
    if len(graphs) != len(outputs):
        raise ValueError(f"{len(graphs)} graphs but {len(outputs)} cached outputs")
    for g, o in zip(graphs, outputs):
        node = o[K.NODE_FEATURES]
        if node.shape[0] != int(g.num_nodes):
            raise ValueError(
                f"cached features of shape {tuple(node.shape)} for {getattr(g, 'material_id', '')!r} "
                f"with {int(g.num_nodes)} atoms"
            )
        g[CACHED_NODE] = node
        if K.EDGE_FEATURES in o:
            if o[K.EDGE_FEATURES].shape[0] != int(g[K.EDGE_INDEX].shape[1]):
                raise ValueError(f"cached edge features of {getattr(g, 'material_id', '')!r} do not match its edges")
            g[CACHED_EDGE] = o[K.EDGE_FEATURES]


def detach_outputs(graphs: list) -> None:
    """Remove cached outputs from the graphs."""
    for g in graphs:
        for key in (CACHED_NODE, CACHED_EDGE):
            if key in g:
                del g[key]


def cached_outputs(data) -> dict[str, Tensor] | None:
    """The backbone outputs stored on a (batched) graph, or None."""
    if CACHED_NODE not in data:
        return None
    out = {K.NODE_FEATURES: data[CACHED_NODE]}
    if CACHED_EDGE in data:
        out[K.EDGE_FEATURES] = data[CACHED_EDGE]
    return out


class _CachedForward:
    """A backbone's ``forward`` that returns the outputs stored on a batch when it carries
    them (:func:`cached_outputs`) and runs the backbone's own ``forward`` otherwise."""

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone

    def __call__(self, data, *args, **kwargs):
        out = cached_outputs(data) if not args and not kwargs else None
        if out is None:
            out = type(self.backbone).forward(self.backbone, data, *args, **kwargs)
        return out


def read_cached_outputs(backbone: nn.Module) -> None:
    """Make ``backbone(batch)`` return the outputs stored on the batch when present.

    The backbone's ``forward`` is replaced on the instance only (its class, parameters,
    state-dict keys and config stay as they are; a deep copy of the model copies the
    replacement with it); :func:`stop_reading_cached_outputs` restores it.
    """
    if not isinstance(backbone.__dict__.get("forward"), _CachedForward):
        backbone.forward = _CachedForward(backbone)


def stop_reading_cached_outputs(backbone: nn.Module) -> None:
    """Undo :func:`read_cached_outputs` (nothing happens when it was not installed)."""
    if isinstance(backbone.__dict__.get("forward"), _CachedForward):
        del backbone.forward


def reads_cached_outputs(backbone: nn.Module) -> bool:
    """True while :func:`read_cached_outputs` is installed on ``backbone``."""
    return isinstance(backbone.__dict__.get("forward"), _CachedForward)


def _store_path(root: Path, backbone_fp: str, settings: dict) -> Path:
    key = stable_hash(settings)[:12]
    return root / "features" / f"{backbone_fp}-{key}-v{FORMAT}.pt"


def _graph_key(g) -> str:
    """Material id plus the structure it was built from (so an edited entry misses)."""
    h = hashlib.sha256()
    for key in (K.ATOMIC_NUMBERS, K.POSITIONS, K.CELL, K.EDGE_INDEX):
        h.update(g[key].detach().cpu().contiguous().numpy().tobytes())
    return f"{g.material_id}:{h.hexdigest()[:16]}"


def load_or_compute(
    backbone: nn.Module,
    graphs: list,
    settings: dict,
    root: Path | None = None,
    batch_size: int = 32,
) -> tuple[list[dict[str, Tensor]], dict[str, int]]:
    """Outputs of a frozen backbone for ``graphs``, from the disk store where present.

    Args:
        backbone: the frozen backbone.
        graphs: crystal graphs with ``material_id``.
        settings: the graph settings (part of the store's key).
        root: cache root (default :func:`matxfer.paths.cache_dir`); ``None`` with
            ``MATXFER_FEATURE_CACHE=0`` disables the disk store.
        batch_size: graphs per forward pass.

    Returns:
        (outputs in the order of ``graphs``, ``{"reused": n, "computed": m}``)
    """
    use_disk = os.environ.get("MATXFER_FEATURE_CACHE", "1") != "0"
    if root is None and use_disk:
        from matxfer.paths import cache_dir

        root = cache_dir()
    path = _store_path(Path(root), backbone_fingerprint(backbone), settings) if use_disk else None
    store: dict[str, dict[str, Tensor]] = {}
    if path is not None and path.is_file():
        try:
            store = torch.load(path, weights_only=True)
        except Exception as exc:  # an unreadable cache is rebuilt, never fatal
            log.warning("ignoring unreadable feature cache %s: %s", path, exc)
            store = {}
    keys = [_graph_key(g) for g in graphs]
    missing = [i for i, k in enumerate(keys) if k not in store]
    if missing:
        fresh = compute_outputs(backbone, [graphs[i] for i in missing], batch_size)
        for i, o in zip(missing, fresh):
            store[keys[i]] = o
        if path is not None:
            try:
                save_torch(path, store)
            except OSError as exc:
                log.warning("could not write feature cache %s: %s", path, exc)
    stats = {"reused": len(graphs) - len(missing), "computed": len(missing)}
    return [store[k] for k in keys], stats
