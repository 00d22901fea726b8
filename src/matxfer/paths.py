"""Where matxfer finds datasets, pretrained weights and its cache."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

ENV_DATA_DIR = "MATXFER_DATA_DIR"
ENV_CACHE_DIR = "MATXFER_CACHE_DIR"
ENV_PRETRAINED_DIR = "MATXFER_PRETRAINED_DIR"


def _shared_candidates(name: str) -> list[Path]:
    """``../shared/<name>`` relative to the working directory and to the source checkout."""
    here = Path(__file__).resolve()
    cands = [Path.cwd().parent / "shared" / name, Path.cwd() / "shared" / name]
    # src/matxfer/paths.py -> checkout root is parents[2]; shared/ sits beside it
    if len(here.parents) > 3:
        cands.append(here.parents[3] / "shared" / name)
    return cands


def data_dir() -> Path:
    """The dataset directory.

    ``$MATXFER_DATA_DIR`` if set, else ``../shared/data`` when it exists, else a user cache
    directory (where the downloaders put files).
    """
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    for cand in _shared_candidates("data"):
        if cand.is_dir():
            return cand
    return Path(user_cache_dir("matxfer")) / "data"


def pretrained_dir() -> Path:
    """Directory of third-party pretrained weights (``$MATXFER_PRETRAINED_DIR`` or ``../shared/pretrained``)."""
    env = os.environ.get(ENV_PRETRAINED_DIR)
    if env:
        return Path(env).expanduser()
    for cand in _shared_candidates("pretrained"):
        if cand.is_dir():
            return cand
    return Path(user_cache_dir("matxfer")) / "pretrained"


def cache_dir() -> Path:
    """Directory for processed graphs and features (``$MATXFER_CACHE_DIR`` or a user cache dir)."""
    env = os.environ.get(ENV_CACHE_DIR)
    path = Path(env).expanduser() if env else Path(user_cache_dir("matxfer")) / "cache"
    return path
