"""What matxfer's disk caches share: stable fingerprints and atomic writes.

The caches (parsed records and entry counts in :mod:`matxfer.data.registry`, validation
reports in :mod:`matxfer.data.validate`, graphs in :mod:`matxfer.data.graph_cache`, frozen
backbone outputs in :mod:`matxfer.feature_cache`) key their files by a hash of what the
content depends on and write them through a unique temporary file in the target folder
and a rename, so that readers (and parallel writers: studies share one cache) never see a
partial file.

This module imports nothing heavy (torch is imported by :func:`save_torch` only).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any


def stable_hash(obj: Any) -> str:
    """sha256 (hex) of ``obj`` as canonical JSON (sorted keys, ``str`` for other types)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def files_hash(head: str, paths: Iterable[Path]) -> str:
    """sha256 (hex) of ``head`` and each file's resolved path, size and mtime (ns).

    Cheap (no file is read): an edited or replaced file changes its size or mtime.
    """
    h = hashlib.sha256(head.encode())
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` through ``write(fh)`` on a unique temporary file, then rename it.

    The folder is created when missing; the temporary file is removed when ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))


def write_text_atomic(path: Path, text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def save_pickle(path: Path, obj: Any) -> Path:
    """Pickle ``obj`` to ``path`` atomically (highest protocol)."""
    import pickle

    return atomic_write(path, lambda fh: pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL))


def save_torch(path: Path, obj: Any) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))
