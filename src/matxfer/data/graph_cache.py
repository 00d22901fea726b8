"""Build the crystal graphs of many records, with an on-disk cache.

Processed graphs are cached under::

    cache_dir()/graphs/<cache_key>/<settings.key()>-<fingerprint>.pt

``fingerprint`` hashes the material ids and structures (lattice, fractional coordinates and
species of each), the atom-feature table, the default float dtype and the cache format, so
changing any graph setting, any structure or the feature table selects another file. The
file holds plain tensors, strings, lists and dicts only (no pickled ``Data`` objects) and
reads back with ``torch.load(weights_only=True)``; the
:class:`~matxfer.data.graphs.CrystalGraph` objects are rebuilt on load.

Layout: each graph is a dict of tensors (:func:`graph_to_dict`); for storage the dicts of
all graphs are packed field by field into one tensor per field plus per-graph sizes
(:func:`pack_graph_dicts`), because ``torch.load(weights_only=True)`` spends about half a
millisecond per stored tensor, which made a per-graph file slower to read than rebuilding
the graphs. :func:`unpack_graph_dicts` splits them back into per-graph dicts (views).

A structure whose graph cannot be built never aborts the run: it is reported in
``failures`` as ``(material_id, reason)``.

Graphs are built in the calling process: a graph takes about half a millisecond for a
typical structure, less than pickling the pymatgen structure to a worker process, and a
2-process pool measured about 4x slower than one process (``benchmarks/graph_build.py``),
so no pool is used.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matxfer import keys as K
from matxfer.cache_io import save_torch
from matxfer.data.graphs import (
    CrystalGraph,
    GraphSettings,
    new_graph,
    resolve_featurizer,
    structure_to_graph,
)
from matxfer.paths import cache_dir

log = logging.getLogger(__name__)

#: bump when the stored layout changes (part of the fingerprint)
CACHE_FORMAT = 1

_INT_FIELDS = {K.EDGE_INDEX: torch.int32, K.LINE_INDEX: torch.int32, K.CELL_SHIFT: torch.int16}


def _structure_digest(structure) -> bytes:
    """Digest of what the graph depends on: lattice (and its periodicity), fractional
    coordinates and species."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(structure.lattice.matrix, dtype="<f8").tobytes())
    h.update(bytes(bool(p) for p in structure.lattice.pbc))
    h.update(np.ascontiguousarray(structure.frac_coords, dtype="<f8").tobytes())
    try:
        z = np.asarray(structure.atomic_numbers, dtype="<i4")
        h.update(z.tobytes())
    except Exception:  # noqa: BLE001 - disordered: hash the species strings (the build will fail)
        h.update("|".join(str(site.species) for site in structure).encode())
    return h.digest()


def record_digests(records: Sequence[Any]) -> list[str]:
    """Hex digest of each record's (material id, structure)."""
    out = []
    for rec in records:
        h = hashlib.sha256(str(rec.material_id).encode() + b"\0")
        try:
            h.update(_structure_digest(rec.structure))
        except Exception as exc:  # noqa: BLE001 - a broken structure still gets a stable digest
            h.update(f"unreadable:{type(exc).__name__}:{exc}".encode())
        out.append(h.hexdigest())
    return out


def fingerprint(records: Sequence[Any], featurizer=None, digests: list[str] | None = None) -> str:
    """Short hash of the records (order-independent), the feature table and the dtype."""
    digests = record_digests(records) if digests is None else digests
    h = hashlib.sha256(f"graph-cache-v{CACHE_FORMAT}|{torch.get_default_dtype()}|".encode())
    h.update((getattr(featurizer, "sha256", None) or "no-table").encode())
    for d in sorted(digests):
        h.update(d.encode())
    return h.hexdigest()[:16]


def _safe_key(cache_key: str) -> str:
    key = re.sub(r"[^A-Za-z0-9._+=-]+", "_", str(cache_key)).strip("._")
    if not key:
        raise ValueError(f"cache_key {cache_key!r} has no usable characters")
    return key[:120]


def cache_path(cache_key: str, settings: GraphSettings, fp: str) -> Path:
    """Where the graphs of ``cache_key`` with these settings and fingerprint are cached."""
    return cache_dir() / "graphs" / _safe_key(cache_key) / f"{settings.key()}-{fp}.pt"


def graph_to_dict(g: CrystalGraph) -> dict[str, Any]:
    """Plain dict of tensors (and the material id) for one graph; compact integer dtypes."""
    out: dict[str, Any] = {K.MATERIAL_ID: str(getattr(g, K.MATERIAL_ID, ""))}
    for key in (
        K.ATOMIC_NUMBERS,
        K.POSITIONS,
        K.CELL,
        K.EDGE_INDEX,
        K.CELL_SHIFT,
        "n_fallback",
        K.ATOM_FEATURES,
        K.LINE_INDEX,
    ):
        val = getattr(g, key, None)
        if val is None:
            continue
        if key in _INT_FIELDS:
            val = val.to(_INT_FIELDS[key])
        out[key] = val.contiguous()
    return out


def dict_to_graph(d: dict[str, Any]) -> CrystalGraph:
    """Rebuild a :class:`CrystalGraph` from :func:`graph_to_dict`."""
    dtype = torch.get_default_dtype()
    fields: dict[str, Any] = {}
    for key, val in d.items():
        if key == K.MATERIAL_ID:
            continue
        if key in _INT_FIELDS:
            val = val.long()
            if key == K.CELL_SHIFT:
                val = val.to(dtype)
        fields[key] = val
    fields[K.NUM_NODES] = int(d[K.ATOMIC_NUMBERS].numel())
    fields[K.MATERIAL_ID] = d[K.MATERIAL_ID]
    return new_graph(fields)


#: field -> (dimension along which graphs are concatenated, size counter)
_PACK = {
    K.ATOMIC_NUMBERS: (0, "n_atoms"),
    K.POSITIONS: (0, "n_atoms"),
    K.ATOM_FEATURES: (0, "n_atoms"),
    K.CELL: (0, "n_graphs"),
    "n_fallback": (0, "n_graphs"),
    K.EDGE_INDEX: (1, "n_edges"),
    K.CELL_SHIFT: (0, "n_edges"),
    K.LINE_INDEX: (1, "n_lines"),
}


def _count(d: dict, counter: str) -> int:
    if counter == "n_atoms":
        return int(d[K.ATOMIC_NUMBERS].shape[0])
    if counter == "n_edges":
        return int(d[K.EDGE_INDEX].shape[1])
    if counter == "n_lines":
        return int(d[K.LINE_INDEX].shape[1]) if K.LINE_INDEX in d else 0
    return 1


def pack_graph_dicts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-graph dicts field by field: ``{"ids", "sizes", "fields"}``.

    Every graph must have the same set of fields (true for one settings/featurizer).
    """
    ids = [d[K.MATERIAL_ID] for d in dicts]
    present = [k for k in _PACK if dicts and k in dicts[0]]
    for d in dicts:
        if [k for k in _PACK if k in d] != present:
            raise ValueError("graphs with different fields cannot be packed together")
    sizes = {
        c: torch.tensor([_count(d, c) for d in dicts], dtype=torch.long)
        for c in ("n_atoms", "n_edges", "n_lines")
    }
    fields = {}
    for k in present:
        dim, _ = _PACK[k]
        fields[k] = torch.cat([d[k] for d in dicts], dim=dim) if dicts else torch.empty(0)
    return {"ids": ids, "sizes": sizes, "fields": fields}


def unpack_graph_dicts(packed: dict[str, Any]) -> list[dict[str, Any]]:
    """Inverse of :func:`pack_graph_dicts` (the tensors are views of the packed ones)."""
    ids = list(packed["ids"])
    n = len(ids)
    split = {}
    for k, t in packed["fields"].items():
        dim, counter = _PACK[k]
        sz = [1] * n if counter == "n_graphs" else packed["sizes"][counter].tolist()
        split[k] = torch.split(t, sz, dim=dim)
    return [{K.MATERIAL_ID: ids[i], **{k: v[i] for k, v in split.items()}} for i in range(n)]


def _load(path: Path) -> dict | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt
        log.warning("ignoring unreadable graph cache %s (%s); rebuilding", path, exc)
        return None
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT:
        log.warning("ignoring graph cache %s with an unknown layout; rebuilding", path)
        return None
    return blob


def _build(records, settings, featurizer, progress: bool):
    from matxfer.progress import progress_bar

    graphs: list[CrystalGraph | None] = []
    failures: list[tuple[str, str]] = []
    bar = progress_bar(
        "graphs", total=len(records), disable=None if progress else True, unit="struct"
    )
    try:
        for rec in records:
            mid = str(getattr(rec, "material_id", ""))
            try:
                g = structure_to_graph(
                    rec.structure, settings, material_id=mid, featurizer=featurizer
                )
            except Exception as exc:  # noqa: BLE001 - a bad structure is reported, never fatal
                graphs.append(None)
                failures.append((mid, f"{type(exc).__name__}: {exc}"))
            else:
                graphs.append(g)
            bar.update(1)
    finally:
        bar.close()
    return graphs, failures


def build_graphs(
    records: Iterable[Any],
    settings: GraphSettings,
    cache_key: str | None,
    featurizer=None,
    progress: bool = True,
) -> tuple[list[CrystalGraph], list[tuple[str, str]]]:
    """Graphs of ``records`` (objects with ``.material_id`` and ``.structure``).

    Args:
        records: e.g. :class:`~matxfer.data.records.CrystalRecord` objects.
        settings: graph settings.
        cache_key: cache folder name (e.g. the dataset name); None disables the cache.
        featurizer: atom featurizer matching ``settings.atom_features`` (built automatically
            for ``"cgcnn"``; a missing or mismatched one raises ValueError up front).
        progress: show a progress bar while building.

    Returns:
        ``(graphs, failures)``: the graphs of the records that worked, in record order, and
        ``(material_id, reason)`` for each record whose graph could not be built.
    """
    records = list(records)
    featurizer = resolve_featurizer(settings, featurizer)  # a config error raises here
    path = None
    digests = None
    if cache_key is not None and records:
        digests = record_digests(records)
        path = cache_path(cache_key, settings, fingerprint(records, featurizer, digests))
        if path.is_file():
            blob = _load(path)
            if blob is not None:
                by_digest = dict(zip(blob["digests"], unpack_graph_dicts(blob["graphs"])))
                failed = dict(zip(blob["failed_digests"], blob["failures"]))
                graphs, failures = [], []
                for rec, d in zip(records, digests):
                    if d in by_digest:
                        graphs.append(dict_to_graph(by_digest[d]))
                    elif d in failed:
                        failures.append((str(rec.material_id), failed[d]))
                    else:  # cannot happen for a matching fingerprint; rebuild to be safe
                        break
                else:
                    log.info("loaded %d graphs from cache %s", len(graphs), path)
                    return graphs, failures
    t0 = time.perf_counter()
    built, failures = _build(records, settings, featurizer, progress)
    graphs = [g for g in built if g is not None]
    n_fb = sum(int(g.n_fallback.sum()) for g in graphs)
    log.info(
        "built %d graphs in %.1f s (%d failed, %d atoms needed the k-NN fallback)",
        len(graphs),
        time.perf_counter() - t0,
        len(failures),
        n_fb,
    )
    if path is not None:
        ok_digests = [d for d, g in zip(digests, built) if g is not None]
        bad_digests = [d for d, g in zip(digests, built) if g is None]
        blob = {
            "format": CACHE_FORMAT,
            "settings": settings.to_dict(),
            "digests": ok_digests,
            "graphs": pack_graph_dicts([graph_to_dict(g) for g in graphs]),
            "failed_digests": bad_digests,
            "failures": [why for _, why in failures],
        }
        try:
            save_torch(path, blob)  # unique temporary file + rename: never seen half written
            log.info("cached %d graphs at %s", len(graphs), path)
        except OSError as exc:
            log.warning("could not write graph cache %s: %s", path, exc)
    return graphs, failures
