"""Models that ship with matxfer: ready-to-use checkpoints and their model cards.

The folder holds ``index.json`` (``{"format": 1, "models": {name: {file, card, target,
description, metrics}}}``), one ``<name>.ckpt`` and one ``<name>.md`` model card per model.
``benchmarks/ship_model.py`` writes them. Every command and function that takes a checkpoint
path also takes the name of a shipped model (:func:`resolve`): a path that exists wins.

``$MATXFER_SHIPPED_DIR`` points at another folder of the same layout (used by tests and
when preparing a release). This module imports neither torch nor anything heavy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

INDEX = "index.json"
INDEX_FORMAT = 1
_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".tar")


def shipped_dir() -> Path:
    """The folder of shipped models: ``$MATXFER_SHIPPED_DIR`` or this package's folder."""
    env = os.environ.get("MATXFER_SHIPPED_DIR")
    return Path(env).expanduser() if env else Path(__file__).parent


def load_index(folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Shipped model name -> its index entry (``file``, ``card``, ``target``, ...)."""
    path = Path(folder or shipped_dir()) / INDEX
    if not path.is_file():
        return {}
    blob = json.loads(path.read_text())
    return dict(blob.get("models", {}))


def write_index(models: dict[str, dict[str, Any]], folder: str | Path | None = None) -> Path:
    from matxfer.cache_io import write_text_atomic

    path = Path(folder or shipped_dir()) / INDEX
    blob = {"format": INDEX_FORMAT, "models": dict(sorted(models.items()))}
    return write_text_atomic(path, json.dumps(blob, indent=1, sort_keys=False) + "\n")


def names() -> list[str]:
    return sorted(load_index())


def looks_like_name(text: str) -> bool:
    """True for a bare word (no folder, no checkpoint suffix), e.g. ``elastic``."""
    return (
        bool(text)
        and "/" not in text
        and os.sep not in text
        and not text.startswith(("~", "."))
        and not text.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def resolve(path_or_name: str | Path) -> Path:
    """The checkpoint file of a path or of a shipped model's name.

    A path that exists is returned as is (it wins over a shipped model of the same name);
    a shipped model's name gives its file; anything else that is a path is returned as is
    (the caller reports the missing file).

    Raises:
        CheckpointError: a bare name that is neither an existing file nor a shipped model
            (the message lists the shipped names), or a shipped model whose file is missing.
    """
    p = Path(path_or_name).expanduser()
    if p.exists():
        return p
    text = str(path_or_name)
    index = load_index()
    if text in index:
        f = shipped_dir() / index[text]["file"]
        if not f.is_file():
            from matxfer.checkpoint import CheckpointError

            raise CheckpointError(
                f"shipped model {text!r}: its checkpoint {f} is missing; reinstall matxfer"
            )
        return f
    if looks_like_name(text):
        from matxfer.checkpoint import CheckpointError

        listed = ", ".join(sorted(index)) or "none in this installation"
        raise CheckpointError(
            f"checkpoint {text!r}: no such file and no shipped model of that name "
            f"(shipped models: {listed}; see matxfer models)"
        )
    return p


def card_path(name: str) -> Path | None:
    entry = load_index().get(name)
    if not entry or not entry.get("card"):
        return None
    return shipped_dir() / entry["card"]
