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

Optional keys:

    backbone_ref: {name, package, package_version, weights, version, sha256, dtype}
        a *slim* checkpoint (:func:`slim_checkpoint`): the frozen third-party backbone's
        ``backbone.*`` tensors are not stored; on load the backbone is rebuilt from the
        package's own weights and must hash to ``sha256`` (:func:`backbone_sha256`).
    members: [{state_dict, seed, metrics, source}]
        an ensemble (:func:`matxfer.models.ensemble.make_ensemble`): K heads and normalisers
        (``state_dict`` without ``backbone.*``) over one shared frozen backbone; the
        top-level ``state_dict`` then holds only the ``backbone.*`` tensors (none if slim).

Nothing is pickled; configs are rebuilt through the registry.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import zipfile
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
    """Write a checkpoint through a unique temporary file and a rename (never half written)."""
    from matxfer.cache_io import save_torch

    return save_torch(Path(path), ckpt)


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint; the message names the file, what is wrong
    and what to do."""


#: keys every matxfer checkpoint has (after :func:`migrate`)
REQUIRED_KEYS = ("format_version", "model_config", "graph", "tasks", "state_dict")

#: the first bytes of a zip archive (``torch.save``'s format since torch 1.6)
_ZIP_MAGIC = b"PK\x03\x04"
#: the first bytes of a legacy (pre-zip) torch file: pickle protocol 2, then torch's magic
#: number 0x1950a86a20f9469cfc6c as a 10-byte long
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _refused_object(message: str) -> str:
    """The global or class the weights-only unpickler refused, from its message (never
    torch's advice); '' when the message names none."""
    import re

    m = re.search(r"GLOBAL (\S+) was not an allowed global", message) or re.search(
        r"unsupported GLOBAL (\S+)", message
    )
    if m:
        return m.group(1)
    m = re.search(r"but got <class '([^']+)'>", message)
    if m:
        return m.group(1)
    return ""


def _unpickler_detail(message: str) -> str:
    """The weights-only unpickler's own reason (e.g. ``Unsupported operand 19``), or ''."""
    import re

    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
    return m.group(1).strip()[:120] if m else ""


def read_torch_file(
    path: str | Path,
    kind: str = "checkpoint",
    allowed_globals: tuple | list = (),
    trust: bool = False,
    remedy: str = "",
) -> Any:
    """Read a file written by ``torch.save`` without running code from it.

    The file is read with ``torch.load(weights_only=True)`` (tensors and plain data only),
    plus the globals in ``allowed_globals`` (items as for
    ``torch.serialization.safe_globals``). ``trust=True`` uses the full unpickler, which runs
    whatever code the file's pickle names: only for files from a trusted source.

    Args:
        path: the file.
        kind: what the file should be, for messages (``"checkpoint"``).
        allowed_globals: extra globals the weights-only unpickler may build.
        trust: load with ``weights_only=False``.
        remedy: appended to the message of a file that holds a refused object.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a directory, an empty, damaged or truncated file, a file that is not
            a torch file, or a pickle holding objects other than tensors and plain data.
    """
    import pickle

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{kind} {path}: file not found")
    if path.is_dir():
        raise CheckpointError(
            f"{kind} {path}: is a directory, not a file; give the checkpoint file inside it "
            "(e.g. <run dir>/model.ckpt)"
        )
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(len(_LEGACY_MAGIC))
    except OSError as exc:
        raise CheckpointError(f"{kind} {path}: cannot be read ({exc.strerror or exc})") from None
    rewrite = "the file was not written completely; write it again"
    if size == 0:
        raise CheckpointError(f"{kind} {path}: the file is empty (0 bytes); {rewrite}")
    is_zip = head.startswith(_ZIP_MAGIC)
    is_legacy = head == _LEGACY_MAGIC
    if not (is_zip or is_legacy):
        raise CheckpointError(
            f"{kind} {path}: not a torch file (neither a torch zip archive nor a legacy torch "
            f"file; it starts with the bytes {head[:8]!r}); check that this is the right file"
        )
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{kind} {path}: truncated or damaged (a torch zip archive of {size} bytes "
            f"without its central directory); {rewrite}"
        )
    import torch

    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        what = _refused_object(str(exc))
        if not what:
            # no object named: a garbled pickle stream (a damaged file) or opcodes the safe
            # unpickler does not take; neither is read further
            detail = _unpickler_detail(str(exc))
            raise CheckpointError(
                f"{kind} {path}: damaged or not plain data: the safe unpickler cannot read its "
                "pickle" + (f" ({detail})" if detail else "") + "; a damaged file gives this, "
                f"and so does a pickle of objects other than tensors and plain data; {rewrite}"
            ) from None
        raise CheckpointError(
            f"{kind} {path}: refused: its pickle would call or build {what}, which is not a "
            "tensor or plain data (unpickling such objects can run code from the file)"
            + (f"; {remedy}" if remedy else "")
        ) from None
    except (EOFError, IndexError, RuntimeError, OSError, KeyError, zipfile.BadZipFile) as exc:
        text = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise CheckpointError(
            f"{kind} {path}: truncated or damaged, torch cannot read it ({type(exc).__name__}"
            + (f": {text}" if text else "")
            + f"); {rewrite}"
        ) from None


def migrate(ckpt: dict, path: str | Path = "checkpoint") -> dict:
    """Bring an older checkpoint dict up to :data:`FORMAT_VERSION`.

    Raises:
        CheckpointError: no ``format_version``, or one this matxfer cannot read.
    """
    version = ckpt.get("format_version")
    if version is None:
        missing = [k for k in REQUIRED_KEYS if k not in ckpt]
        todo = "give a file written by matxfer train, finetune or import-cgcnn"
        if "state_dict" in ckpt and "args" in ckpt:
            todo = "an original CGCNN file? convert it first with matxfer import-cgcnn"
        raise CheckpointError(
            f"checkpoint {path}: not a matxfer checkpoint: missing keys {missing} (it has "
            f"{sorted(map(str, ckpt))[:8]}); {todo}"
        )
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
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(
            f"checkpoint {path}: format version {version!r} unsupported (this matxfer reads "
            f"versions 0 to {FORMAT_VERSION}); "
            + ("it was written by a newer matxfer: upgrade matxfer" if newer else
               "the file was not written by matxfer or is damaged")
        )
    graph = ckpt.get("graph") or {}
    if (ckpt.get("provenance") or {}).get("cgcnn_compat") and "cgcnn_compat" not in graph:
        # imported CGCNN checkpoints written before graph settings carried the flag
        ckpt = {**ckpt, "graph": {**graph, "cgcnn_compat": True}}
    return ckpt


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``) and migrate it to the current format.

    ``path`` may also be the name of a shipped model (:func:`matxfer.shipped.resolve`).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is a directory, empty, truncated, not a torch file, holds
            pickled objects other than plain data, is not a matxfer checkpoint (missing
            keys) or has a format version this matxfer cannot read.
    """
    from matxfer.shipped import resolve

    path = resolve(path)
    ckpt = read_torch_file(
        path,
        "checkpoint",
        remedy="matxfer checkpoints hold only tensors and plain data, so this file was not "
        "written by matxfer; do not load it",
    )
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"checkpoint {path}: not a matxfer checkpoint: it holds a {type(ckpt).__name__}, "
            "not a dict; give a file written by matxfer train, finetune or import-cgcnn"
        )
    ckpt = migrate(ckpt, path)
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path}: not a matxfer checkpoint: missing keys {missing}; give a file "
            "written by matxfer train, finetune or import-cgcnn"
        )
    ours = package_versions()
    for pkg in ("torch", "e3nn"):
        theirs = ckpt.get("versions", {}).get(pkg)
        if theirs and theirs != ours.get(pkg):
            log.warning("%s was saved with %s %s, running %s", path, pkg, theirs, ours.get(pkg))
    return ckpt


def check_finite_weights(ckpt: dict, path: Any) -> None:
    """Raise :class:`~matxfer.checkpoint.CheckpointError` when a floating-point weight of the
    checkpoint (or of an ensemble member) holds NaN or inf: a damaged file or a diverged run,
    whose every prediction would be NaN."""
    members = ckpt.get("members") or []
    states = [ckpt.get("state_dict") or {}] + [m.get("state_dict") or {} for m in members]
    bad = [
        (name, int((~torch.isfinite(v)).sum()), v.numel())
        for state in states
        for name, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        name, n_bad, n = bad[0]
        raise CheckpointError(
            f"checkpoint {path}: {len(bad)} weight tensor(s) hold NaN or inf (first: {name!r}, "
            f"{n_bad} of {n} values); the file is damaged or its training diverged, so it "
            "cannot predict or be fine-tuned; use another checkpoint (e.g. best.ckpt of the "
            "run) or train again"
        )


# ----------------------------------------------------------------------------------------
# third-party backbones stored by reference (slim checkpoints)
# ----------------------------------------------------------------------------------------

#: backbones rebuilt from a third-party package's own weights -> that package
REFERENCE_BACKBONES = {"chgnet": "chgnet", "sevennet": "sevenn"}
BACKBONE_PREFIX = "backbone."


def backbone_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of a backbone's state-dict tensors.

    Definition: for each key in ``sorted(state)`` (keys relative to the backbone, i.e.
    without ``backbone.``), the UTF-8 bytes of ``"<key>|<shape>|<kind>\n"`` are hashed,
    where ``<shape>`` is ``",".join(map(str, tensor.shape))`` and ``<kind>`` is ``float64``
    for floating-point tensors and the torch dtype name (e.g. ``int64``) otherwise, then
    the tensor's bytes: floating-point tensors converted to float64 (exact for float32 and
    float16, so the hash does not depend on the precision the model runs in) with -0.0
    written as +0.0 (recomputed constants such as Wigner 3j buffers differ in the sign of
    their zeros only), all others as they are; little-endian, C order.
    """
    import numpy as np

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu()
        if t.is_floating_point():
            kind = "float64"
            arr = (t.to(torch.float64) + 0.0).contiguous().numpy()  # -0.0 -> +0.0
        else:
            kind = str(t.dtype).removeprefix("torch.")
            arr = t.contiguous().numpy()
        h.update(f"{key}|{','.join(map(str, t.shape))}|{kind}\n".encode())
        h.update(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def _package_version(package: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "absent"


def _reference_config(bb_cfg: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the backbone config that builds it from the package's pretrained weights, the
    weights' name) for a ``chgnet`` or ``sevennet`` backbone config."""
    name = bb_cfg.get("name")
    if name == "chgnet":
        weights = bb_cfg.get("initialized_from") or bb_cfg.get("weights")
        if not weights:
            raise ValueError("this chgnet backbone was not initialised from pretrained weights")
        return {**bb_cfg, "weights": weights}, str(weights)
    if name == "sevennet":
        model = bb_cfg.get("initialized_from") or bb_cfg.get("model")
        if not model:
            raise ValueError("this sevennet backbone was not initialised from pretrained weights")
        return {**bb_cfg, "model": model, "pretrained": True}, str(model)
    raise ValueError(
        f"backbone {name!r} is not a third-party pretrained backbone "
        f"({sorted(REFERENCE_BACKBONES)}); it cannot be stored by reference"
    )


def build_reference_backbone(bb_cfg: dict[str, Any]):
    """The third-party backbone of ``bb_cfg`` with the package's pretrained weights."""
    from matxfer.models.registry import build_backbone

    cfg, _ = _reference_config(bb_cfg)
    return build_backbone(cfg)


def backbone_is_frozen_in(ckpt: dict) -> bool:
    """True when the checkpoint's provenance says its backbone was frozen in training
    (recipe ``head``, or ``backbone.*`` parameters listed in ``provenance.frozen``; whether
    all of them were is settled by :func:`slim_checkpoint`'s hash comparison)."""
    prov = ckpt.get("provenance") or {}
    if prov.get("recipe") == "head":
        return True
    return any(str(k).startswith(BACKBONE_PREFIX) for k in prov.get("frozen") or [])


def slim_checkpoint(ckpt: dict) -> dict:
    """The checkpoint without its frozen third-party backbone's tensors (``backbone_ref``).

    The backbone must be ``chgnet`` or ``sevennet``, frozen in training (provenance), and
    equal to the package's pretrained weights: it is rebuilt here and its hash compared, so
    a slim checkpoint that would not load is never written. An already slim checkpoint is
    returned unchanged.

    Raises:
        CheckpointError: another backbone, a backbone that was trained, or stored weights
            that differ from the package's.
    """
    if ckpt.get("backbone_ref"):
        return ckpt
    bb_cfg = ckpt["model_config"]["backbone"]
    name = bb_cfg.get("name")
    if name not in REFERENCE_BACKBONES:
        raise CheckpointError(
            f"cannot slim a checkpoint with backbone {name!r}: only the third-party pretrained "
            f"backbones {sorted(REFERENCE_BACKBONES)} can be stored by reference"
        )
    if not backbone_is_frozen_in(ckpt):
        raise CheckpointError(
            f"cannot slim this checkpoint: its {name} backbone was trained (recipe "
            f"{(ckpt.get('provenance') or {}).get('recipe')!r}), so its weights are not the "
            "package's; keep the full checkpoint"
        )
    sd = ckpt["state_dict"]
    stored = {k[len(BACKBONE_PREFIX):]: v for k, v in sd.items() if k.startswith(BACKBONE_PREFIX)}
    digest = backbone_sha256(stored)
    _, weights = _reference_config(bb_cfg)
    package = REFERENCE_BACKBONES[name]
    ref = {
        "name": name,
        "package": package,
        "package_version": _package_version(package),
        "weights": weights,
        "version": f"{package} {_package_version(package)}, weights {weights}",
        "sha256": digest,
        "dtype": next(
            (str(v.dtype).removeprefix("torch.") for v in stored.values() if v.is_floating_point()),
            "float32",
        ),
    }
    rebuilt = backbone_sha256(build_reference_backbone(bb_cfg).state_dict())
    if rebuilt != digest:
        raise CheckpointError(
            f"cannot slim this checkpoint: its stored {name} backbone (sha256 {digest}) is not "
            f"the weights {ref['version']} give (sha256 {rebuilt}); keep the full checkpoint"
        )
    out = dict(ckpt)
    out["state_dict"] = {k: v for k, v in sd.items() if not k.startswith(BACKBONE_PREFIX)}
    out["backbone_ref"] = ref
    return out


def _reference_backbone(ckpt: dict):
    """The backbone of a slim checkpoint rebuilt from its package, hash-checked."""
    ref = ckpt["backbone_ref"]
    bb_cfg = ckpt["model_config"]["backbone"]
    try:
        backbone = build_reference_backbone(bb_cfg)
    except ImportError as exc:
        raise CheckpointError(
            f"this checkpoint stores its {ref.get('name')} backbone by reference "
            f"({ref.get('version')}); the package is needed to rebuild it: {exc}"
        ) from None
    actual = backbone_sha256(backbone.state_dict())
    if actual != ref.get("sha256"):
        raise CheckpointError(
            f"checkpoint backbone_ref: the {ref.get('name')} backbone rebuilt from the installed "
            f"{ref.get('package')} {_package_version(ref.get('package', ''))} (weights "
            f"{ref.get('weights')}) has sha256 {actual}, the checkpoint expects "
            f"{ref.get('sha256')} (written with {ref.get('version')}); install that version"
        )
    dtype = getattr(torch, str(ref.get("dtype") or "float32"))
    if dtype != torch.float32:
        backbone = backbone.to(dtype)
    return backbone


def full_checkpoint(ckpt: dict) -> dict:
    """The checkpoint of one complete model, e.g. as the parent of a fine-tuning run: a slim
    checkpoint gets its backbone tensors back from the package (hash-checked), an ensemble
    becomes its first member. Any other checkpoint is returned unchanged."""
    if not ckpt.get("backbone_ref") and not ckpt.get("members"):
        return ckpt
    out = {k: v for k, v in ckpt.items() if k not in ("backbone_ref", "members")}
    state = dict(ckpt["state_dict"])
    if ckpt.get("backbone_ref"):
        backbone = _reference_backbone(ckpt)
        state.update(
            {BACKBONE_PREFIX + k: v.detach().cpu() for k, v in backbone.state_dict().items()}
        )
    if ckpt.get("members"):
        state.update(ckpt["members"][0]["state_dict"])
    out["state_dict"] = state
    return out


def _model_on(backbone, model_cfg: dict, tasks: dict):
    """A :class:`~matxfer.models.base.PropertyModel` of ``model_cfg``'s heads on an existing
    backbone module (no second backbone is built)."""
    from matxfer.models.base import PropertyModel
    from matxfer.models.registry import _head_for_task, build_head, build_normalizer

    heads_cfg = {t: _head_for_task(t, c, tasks[t]) for t, c in model_cfg["heads"].items()}
    if set(heads_cfg) != set(tasks):
        raise ValueError(
            f"heads {sorted(heads_cfg)} do not match tasks {sorted(tasks)}: one head per task"
        )
    heads = torch.nn.ModuleDict({t: build_head(c, backbone.out_spec) for t, c in heads_cfg.items()})
    norms = torch.nn.ModuleDict({t: build_normalizer(tasks[t]) for t in heads_cfg})
    return PropertyModel(backbone, heads, norms, tasks)


def _load_strict(model, state: dict) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint weights do not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def model_from_checkpoint(ckpt: dict):
    """Rebuild the model of a checkpoint and load its weights (strict).

    A slim checkpoint's backbone is rebuilt from its package and hash-checked; a checkpoint
    with ``members`` gives an :class:`~matxfer.models.ensemble.EnsembleModel`.

    Raises:
        CheckpointError: the rebuilt reference backbone's hash differs from the stored one.
    """
    from matxfer.models.registry import build_model
    from matxfer.tasks import Task

    tasks = {k: Task.from_dict(v) for k, v in ckpt["tasks"].items()}
    members = ckpt.get("members")
    if ckpt.get("backbone_ref"):
        model = _model_on(_reference_backbone(ckpt), ckpt["model_config"], tasks)
        state = {
            **{BACKBONE_PREFIX + k: v for k, v in model.backbone.state_dict().items()},
            **ckpt["state_dict"],
        }
    else:
        model = build_model(ckpt["model_config"], tasks)
        state = dict(ckpt["state_dict"])
    if not members:
        _load_strict(model, state)
        model.eval()
        return model, tasks
    from matxfer.models.ensemble import EnsembleModel

    backbone_state = {k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    built = []
    for i, m in enumerate(members):
        pm = model if i == 0 else _model_on(model.backbone, ckpt["model_config"], tasks)
        _load_strict(pm, {**backbone_state, **m["state_dict"]})
        pm.eval()
        built.append(pm)
    ens = EnsembleModel(built)
    ens.eval()
    return ens, tasks
