"""matxfer checkpoints: plain data + weights, loadable with ``torch.load(weights_only=True)``.

Layout (``format_version`` 1)::

    format_version: 1
    versions: {matxfer, torch, e3nn, torch_geometric, pymatgen}
    model_config: {backbone: {name, ...}, heads: {task: {name, ...}}}
    graph: GraphSettings as a dict
    atom_features: featurizer state (table travels inside) or None
    tasks: {task: {name, kind, formula, units, weight, loss}}
    state_dict: weights and buffers, normalisers included
    split: {seed, train, val, test} material ids
    provenance: {parent, parent_sha256, recipe, frozen, swapped_heads, data_fingerprint,
                 datasets, created, command}
    metrics: {split: {task: {...}}}
    config: the full run config

Nothing is pickled; configs are rebuilt through the registry.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("matxfer", "torch", "e3nn", "torch_geometric", "pymatgen", "lightning"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain(x: Any, int_keys: bool = False) -> Any:
    """Check (recursively) that only plain types and tensors are stored.

    Dict keys become strings, except integer keys with ``int_keys`` (optimiser state dicts
    are keyed by parameter index).
    """
    if isinstance(x, dict):
        return {
            (k if int_keys and isinstance(k, int) else str(k)): _plain(v, int_keys)
            for k, v in x.items()
        }
    if isinstance(x, (list, tuple)):
        return [_plain(v, int_keys) for v in x]
    if isinstance(x, (str, int, float, bool, type(None), torch.Tensor)):
        return x
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return x.item()
    raise TypeError(f"checkpoint field of type {type(x).__name__} is not plain data: {x!r}")


def _named_config(module) -> dict[str, Any]:
    name = getattr(type(module), "registry_name", "")
    if not name:
        raise ValueError(f"{type(module).__name__} is not registered; cannot record its config")
    return {"name": name, **{k: v for k, v in dict(module.config).items() if k != "name"}}


def model_config_of(model) -> dict[str, Any]:
    """``{"backbone": {name, ...}, "heads": {task: {name, ...}}}`` that rebuilds ``model``."""
    return {
        "backbone": _named_config(model.backbone),
        "heads": {t: _named_config(h) for t, h in model.heads.items()},
    }


def build_checkpoint(
    model,
    tasks: dict,
    graph: dict,
    atom_features: dict | None,
    split: dict | None,
    provenance: dict | None = None,
    metrics: dict | None = None,
    config: dict | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict of a :class:`~matxfer.models.base.PropertyModel`."""
    prov = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(provenance or {}),
    }
    return _plain(
        {
            "format_version": FORMAT_VERSION,
            "versions": package_versions(),
            "model_config": model_config_of(model),
            "graph": graph,
            "atom_features": atom_features,
            "tasks": {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in tasks.items()},
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "split": split,
            "provenance": prov,
            "metrics": metrics or {},
            "config": config or {},
        }
    )


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def migrate(ckpt: dict) -> dict:
    """Bring an older checkpoint dict up to :data:`FORMAT_VERSION`."""
    version = ckpt.get("format_version")
    if version is None:
        raise ValueError("not a matxfer checkpoint (no format_version)")
    if version == 0:
        # version 0 stored the graph settings under data_config.graph
        ckpt = dict(ckpt)
        data_cfg = ckpt.pop("data_config", {})
        ckpt["graph"] = data_cfg.get("graph", {})
        ckpt["atom_features"] = data_cfg.get("atom_features")
        ckpt.setdefault("metrics", {})
        ckpt.setdefault("config", {})
        ckpt["format_version"] = 1
        version = 1
    if version != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint format_version {version} is newer than this matxfer "
            f"({FORMAT_VERSION}); upgrade matxfer"
        )
    graph = ckpt.get("graph") or {}
    if (ckpt.get("provenance") or {}).get("cgcnn_compat") and "cgcnn_compat" not in graph:
        # imported CGCNN checkpoints written before graph settings carried the flag
        ckpt = {**ckpt, "graph": {**graph, "cgcnn_compat": True}}
    return ckpt


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``) and migrate it to the current format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable matxfer checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a matxfer checkpoint")
    ckpt = migrate(ckpt)
    ours = package_versions()
    for pkg in ("torch", "e3nn"):
        theirs = ckpt.get("versions", {}).get(pkg)
        if theirs and theirs != ours.get(pkg):
            log.warning("%s was saved with %s %s, running %s", path, pkg, theirs, ours.get(pkg))
    return ckpt


def model_from_checkpoint(ckpt: dict):
    """Rebuild the model of a checkpoint and load its weights (strict)."""
    from matxfer.models.registry import build_model
    from matxfer.tasks import Task

    tasks = {k: Task.from_dict(v) for k, v in ckpt["tasks"].items()}
    model = build_model(ckpt["model_config"], tasks)
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint weights do not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.eval()
    return model, tasks
