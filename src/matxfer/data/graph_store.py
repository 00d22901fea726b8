"""An on-disk store of crystal graphs (LMDB), for datasets larger than memory.

The in-memory path (:func:`matxfer.data.graph_cache.build_graphs`) holds every graph of a
run in the training process. A store holds them in an LMDB environment instead, one value
per material, and :class:`GraphStoreDataset` reads one graph per index, so a DataLoader
(with or without worker processes) streams them and the process holds only the batches in
flight.

Why LMDB: values are looked up by material id (the natural key for skipping what is already
written, for merging splits and for reporting), every write transaction is atomic, and
many reader processes can map the same file read-only without locking. The lookup costs a
few microseconds, and the mapped pages are the operating system's page cache, shared by all
readers and evicted under memory pressure (they count in a process's RSS as file-backed
shared pages, not as its own memory).

Layout of a store folder (``data.mdb`` and ``lock.mdb``, LMDB's own files), named databases:

* ``meta``: ``"meta"`` -> JSON ``{"format", "settings", "featurizer", "dtype"}``: the
  :class:`~matxfer.data.graphs.GraphSettings`, the atom-feature table's sha256 (or
  ``"no-table"``) and the torch default dtype the graphs were built with. Opening a store
  for other settings raises :class:`StoreMismatch`, naming both.
* ``graphs``: material id -> one pickled dict ``{"graph", "labels", "digest"}``: ``graph``
  is :func:`~matxfer.data.graph_cache.graph_to_dict` of the graph with numpy arrays (ids,
  positions, cell, edges, image shifts, atom features, line graph, fallback counts: nothing
  the in-memory path keeps is lost), ``labels`` the record's labels as numpy arrays and
  ``digest`` the hash of the record's id and structure
  (:func:`~matxfer.data.graph_cache.record_digests`). Values are read back with an
  unpickler that accepts numpy arrays and plain containers only.
* ``failures``: material id -> JSON ``{"reason", "digest"}`` for a structure whose graph
  could not be built: it is recorded and skipped, never fatal.
* ``digests``: material id -> digest of everything written (graphs and failures), so that
  a resumed or extended build compares ids and structures without reading the graphs.

Writing (:func:`build_store`) goes in chunks of ``chunk_size`` graphs, one write
transaction per chunk: a killed build leaves the store as it was after its last complete
chunk, and the next build skips every id already written with the same structure digest
(an id whose structure changed is built again and replaced). A build that finds every
graph already there writes nothing. Readers open the store without LMDB's lock file, so do
not write to a store while another process reads it (a training run builds what it lacks
before its loaders start).

Labels of a training run: :class:`GraphStoreDataset` attaches ``y_<task>`` / ``m_<task>``
with :func:`matxfer.kinds.attach_labels`, from the labels it is given (a run passes its
merged, validated records' labels, so they are the same as on the in-memory path) or else
from the ones stored with each graph.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from matxfer import keys as K
from matxfer.data.graph_cache import dict_to_graph, graph_to_dict, record_digests
from matxfer.data.graphs import CrystalGraph, GraphSettings, resolve_featurizer, structure_to_graph

log = logging.getLogger(__name__)

#: bump when the stored layout changes (a store of another format is refused)
STORE_FORMAT = 1

#: address space reserved for the map; LMDB grows the file only as pages are written
DEFAULT_MAP_SIZE = 1 << 40

#: LMDB's default maximum key length (bytes)
MAX_KEY_BYTES = 511

_DBS = ("meta", "graphs", "failures", "digests")


class StoreMismatch(ValueError):
    """The store was built for other graph settings, featurizer, dtype or format."""


def _lmdb():
    try:
        import lmdb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the graph store needs the lmdb package: pip install 'matxfer[store]' (or lmdb)"
        ) from exc
    return lmdb


# ---------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------

#: the globals a stored value may reference (numpy arrays, dtypes and scalars)
_ALLOWED_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for stored values: numpy arrays and plain containers, nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or (
            module == "numpy.dtypes" and name.endswith("DType")
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"graph store values may not reference {module}.{name}")


def _to_numpy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in d.items()}


def _label_arrays(labels: Mapping[str, Any], material_id: str) -> dict[str, np.ndarray]:
    out = {}
    for name, value in labels.items():
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"label {name!r} of {material_id} is not numeric: {exc}") from exc
        out[str(name)] = arr
    return out


def encode_value(graph: CrystalGraph, labels: Mapping[str, Any], digest: str) -> bytes:
    """The stored bytes of one graph, its labels and its record digest."""
    mid = str(getattr(graph, K.MATERIAL_ID, ""))
    blob = {
        "graph": _to_numpy(graph_to_dict(graph)),
        "labels": _label_arrays(labels, mid),
        "digest": digest,
    }
    return pickle.dumps(blob, protocol=5)


def decode_value(raw: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_value`: ``{"graph": CrystalGraph, "labels", "digest"}``."""
    blob = _ArrayUnpickler(io.BytesIO(raw)).load()
    d = {k: (torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v)
         for k, v in blob["graph"].items()}
    return {"graph": dict_to_graph(d), "labels": blob["labels"], "digest": blob["digest"]}


def _key(material_id: str) -> bytes:
    key = str(material_id).encode()
    if not key:
        raise ValueError("a record without a material id cannot be stored (empty key)")
    if len(key) > MAX_KEY_BYTES:
        raise ValueError(
            f"material id {str(material_id)[:60]!r}... is {len(key)} bytes; the graph store "
            f"keys are at most {MAX_KEY_BYTES}"
        )
    return key


# ---------------------------------------------------------------------------------------
# meta
# ---------------------------------------------------------------------------------------


def store_meta(settings: GraphSettings, featurizer=None) -> dict[str, Any]:
    """What a store's graphs depend on besides the structures."""
    return {
        "format": STORE_FORMAT,
        "settings": settings.to_dict(),
        "featurizer": getattr(featurizer, "sha256", None) or "no-table",
        "dtype": str(torch.get_default_dtype()),
    }


def _describe(meta: dict[str, Any]) -> str:
    return (
        f"settings {json.dumps(meta.get('settings'), sort_keys=True)}, atom-feature table "
        f"{meta.get('featurizer')}, dtype {meta.get('dtype')}, format {meta.get('format')}"
    )


def check_meta(path: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Raise :class:`StoreMismatch` naming both when ``stored`` is not ``wanted``."""
    if stored == wanted:
        return
    diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if "settings" in diff:
        s, w = stored.get("settings") or {}, wanted["settings"]
        fields = sorted(k for k in set(s) | set(w) if s.get(k) != w.get(k))
        diff = [f"settings.{k}" for k in fields] + [d for d in diff if d != "settings"]
    raise StoreMismatch(
        f"graph store {path} was built with {_describe(stored)}; this run builds graphs "
        f"with {_describe(wanted)} (different: {', '.join(diff)}). Use another store "
        "folder, or delete this one to rebuild it"
    )


def read_meta(path: Path | str) -> dict[str, Any]:
    """The ``meta`` record of the store at ``path`` (ValueError if it is not a store)."""
    path = Path(path)
    if not (path / "data.mdb").is_file():
        raise FileNotFoundError(f"no graph store at {path} (no data.mdb)")
    env, dbs = _reader(path)
    with env.begin(db=dbs["meta"]) as txn:
        raw = txn.get(b"meta")
    if raw is None:
        raise ValueError(f"graph store {path} has no meta record (never finished its first chunk)")
    return json.loads(raw)


#: open read-only environments of this process: resolved path -> (pid, env, named dbs)
_READERS: dict[str, tuple[int, Any, dict[str, Any]]] = {}


def _reader(path: Path, key: str | None = None):
    """The read-only environment of ``path`` in this process, opened on first use.

    LMDB allows one open environment per file and process, so every reader of a path shares
    it; it is opened read-only without the lock file (readers never block each other).
    """
    key = key or str(Path(path).resolve())
    pid = os.getpid()
    hit = _READERS.get(key)
    if hit is not None and hit[0] == pid:
        return hit[1], hit[2]
    lmdb = _lmdb()
    env = lmdb.open(
        str(path), readonly=True, lock=False, readahead=False, meminit=False,
        max_dbs=len(_DBS), subdir=True,
    )
    try:
        dbs = {n: env.open_db(n.encode(), create=False) for n in _DBS}
    except lmdb.NotFoundError as exc:
        env.close()
        raise ValueError(f"{path} is an LMDB environment but not a matxfer graph store") from exc
    _READERS[key] = (pid, env, dbs)
    return env, dbs


def close_readers(path: Path | str | None = None) -> None:
    """Close this process's read-only environments (of ``path``; None: all).

    Run before every ``fork`` (DataLoader workers): a child then inherits no open environment
    and opens its own on first read; the parent reopens lazily too. A build closes the
    readers of its store before writing, and readers see its chunks when they reopen.
    """
    want = None if path is None else str(Path(path).resolve())
    for key in list(_READERS):
        if want is None or key == want:
            pid, env, _ = _READERS.pop(key)
            if pid == os.getpid():
                env.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=close_readers)


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What :func:`build_store` did."""

    path: Path
    written: int = 0
    skipped: int = 0
    replaced: int = 0
    failed: int = 0
    chunks: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "written": self.written, "skipped": self.skipped,
            "replaced": self.replaced, "failed": self.failed, "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
            "failures": [{"id": i, "reason": r} for i, r in self.failures],
        }


def _open_write(path: Path, map_size: int):
    lmdb = _lmdb()
    path.mkdir(parents=True, exist_ok=True)
    close_readers(path)  # one environment per file and process
    env = lmdb.open(str(path), map_size=map_size, max_dbs=len(_DBS), subdir=True,
                    readahead=False, meminit=False)
    dbs = {name: env.open_db(name.encode()) for name in _DBS}
    return env, dbs


def _existing_digests(env, db) -> dict[str, str]:
    with env.begin(db=db) as txn:
        return {k.decode(): v.decode() for k, v in txn.cursor()}


def build_store(
    records: Iterable[Any],
    path: Path | str,
    settings: GraphSettings,
    featurizer=None,
    chunk_size: int = 1000,
    progress: bool = True,
    total: int | None = None,
    map_size: int = DEFAULT_MAP_SIZE,
    max_chunks: int | None = None,
) -> BuildReport:
    """Write the graphs of ``records`` into the store at ``path``, resuming what is there.

    Args:
        records: objects with ``.material_id``, ``.structure`` and ``.labels`` (e.g.
            :class:`~matxfer.data.records.CrystalRecord`); any iterable, consumed once, so a
            generator keeps a large set out of memory.
        path: the store folder (created when missing).
        settings: graph settings; a store built with others is refused (:class:`StoreMismatch`).
        featurizer: atom featurizer matching ``settings.atom_features``.
        chunk_size: graphs per write transaction (each chunk is written atomically).
        progress: show a progress bar.
        total: number of records, for the progress bar (taken from ``len(records)`` if it has one).
        map_size: LMDB map size in bytes (address space; the file grows as needed).
        max_chunks: stop after writing this many chunks (None: all); the store is then
            exactly as a build killed after that chunk leaves it.

    Returns:
        A :class:`BuildReport`. Ids written earlier with the same structure are skipped;
        a structure whose graph fails is recorded in the store (id + reason) and skipped.
    """
    from matxfer.progress import progress_bar

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    path = Path(path)
    featurizer = resolve_featurizer(settings, featurizer)
    wanted_meta = store_meta(settings, featurizer)
    if total is None and hasattr(records, "__len__"):
        total = len(records)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    env, dbs = _open_write(path, map_size)
    report = BuildReport(path)
    try:
        with env.begin(db=dbs["meta"], write=True) as txn:
            raw = txn.get(b"meta")
            if raw is None:
                txn.put(b"meta", json.dumps(wanted_meta, sort_keys=True).encode())
            else:
                check_meta(path, json.loads(raw), wanted_meta)
        known = _existing_digests(env, dbs["digests"])
        pending: list[tuple[bytes, bytes | None, bytes | None, bytes]] = []
        seen: set[str] = set()

        def flush() -> None:
            if not pending:
                return
            with env.begin(write=True) as txn:
                for key, value, failure, digest in pending:
                    if value is not None:
                        txn.put(key, value, db=dbs["graphs"])
                        txn.delete(key, db=dbs["failures"])
                    else:
                        txn.put(key, failure, db=dbs["failures"])
                        txn.delete(key, db=dbs["graphs"])
                    txn.put(key, digest, db=dbs["digests"])
            for key, _, _, digest in pending:
                known[key.decode()] = digest.decode()
            pending.clear()
            report.chunks += 1

        bar = progress_bar("graph store", total=total, disable=None if progress else True,
                           unit="struct")
        try:
            for rec in records:
                mid = str(getattr(rec, "material_id", ""))
                key = _key(mid)
                if mid in seen:
                    raise ValueError(f"material id {mid!r} appears twice in the records")
                seen.add(mid)
                digest = record_digests([rec])[0]
                old = known.get(mid)
                if old == digest:
                    report.skipped += 1
                    bar.update(1)
                    continue
                if old is not None:
                    report.replaced += 1
                    log.info("graph store %s: structure of %s changed; rebuilding it", path, mid)
                try:
                    g = structure_to_graph(rec.structure, settings, material_id=mid,
                                           featurizer=featurizer)
                    value = encode_value(g, getattr(rec, "labels", {}) or {}, digest)
                except Exception as exc:  # noqa: BLE001 - a bad structure is recorded, never fatal
                    why = f"{type(exc).__name__}: {exc}"
                    failure = json.dumps({"reason": why, "digest": digest}).encode()
                    pending.append((key, None, failure, digest.encode()))
                    report.failed += 1
                    report.failures.append((mid, why))
                else:
                    pending.append((key, value, None, digest.encode()))
                    report.written += 1
                bar.update(1)
                if len(pending) >= chunk_size:
                    flush()
                    if max_chunks is not None and report.chunks >= max_chunks:
                        break
            else:
                flush()
        finally:
            bar.close()
    finally:
        env.close()
    report.seconds = time.perf_counter() - t0
    log.info(
        "graph store %s: %d written, %d already there, %d replaced, %d failed in %.1f s",
        path, report.written, report.skipped, report.replaced, report.failed, report.seconds,
    )
    for mid, why in report.failures[:5]:
        log.warning("no graph for %s: %s", mid, why)
    return report


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------


class GraphStore:
    """Read-only view of a store: ids, failures, digests and one graph at a time.

    The object holds only the path: the LMDB environment is opened on first use in each
    process (read-only, no lock file; see :func:`close_readers`), so it can be handed to
    DataLoader worker processes, forked or spawned.
    """

    def __init__(self, path: Path | str, settings: GraphSettings | None = None, featurizer=None):
        self.path = Path(path)
        self._resolved = str(self.path.resolve())
        self.meta = read_meta(self.path)
        if settings is not None:
            check_meta(self.path, self.meta, store_meta(settings, resolve_featurizer(settings, featurizer)))

    def _env(self):
        return _reader(self.path, self._resolved)

    def _keys(self, db: str) -> list[str]:
        env, dbs = self._env()
        with env.begin(db=dbs[db]) as txn:
            return [k.decode() for k in txn.cursor().iternext(keys=True, values=False)]

    def ids(self) -> list[str]:
        """Ids of the stored graphs (LMDB key order).

        Read from the small ``digests`` and ``failures`` databases: walking the keys of
        ``graphs`` would map in its leaf pages, which hold most of the graphs themselves.
        """
        failed = set(self._keys("failures"))
        return [k for k in self._keys("digests") if k not in failed]

    def digests(self) -> dict[str, str]:
        env, dbs = self._env()
        return _existing_digests(env, dbs["digests"])

    def failures(self) -> dict[str, str]:
        """Id -> reason for each structure whose graph could not be built."""
        env, dbs = self._env()
        with env.begin(db=dbs["failures"]) as txn:
            return {k.decode(): json.loads(v)["reason"] for k, v in txn.cursor()}

    def __len__(self) -> int:
        env, dbs = self._env()
        with env.begin(db=dbs["graphs"]) as txn:
            return int(txn.stat(dbs["graphs"])["entries"])

    def __contains__(self, material_id: object) -> bool:
        env, dbs = self._env()
        with env.begin(db=dbs["graphs"]) as txn:
            return txn.get(str(material_id).encode(), db=dbs["graphs"]) is not None

    def get(self, material_id: str) -> dict[str, Any]:
        """``{"graph", "labels", "digest"}`` of one id (KeyError naming it when absent)."""
        env, dbs = self._env()
        with env.begin(db=dbs["graphs"], buffers=True) as txn:
            raw = txn.get(_key(material_id))
            if raw is None:
                raise KeyError(f"{material_id!r} is not in the graph store {self.path}")
            return decode_value(bytes(raw))

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


class GraphStoreDataset(Dataset):
    """Graphs of ``ids`` read lazily from a store: one graph per index, labels attached.

    Args:
        store: a :class:`GraphStore` (or its folder).
        ids: the ids to serve, in order (None: every stored graph).
        tasks: attach ``y_<task>`` / ``m_<task>`` for these tasks (None: no labels).
        labels: id -> labels to attach (None: the labels stored with each graph).
    """

    def __init__(
        self,
        store: GraphStore | Path | str,
        ids: Sequence[str] | None = None,
        tasks: Mapping[str, Any] | None = None,
        labels: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        self.store = store if isinstance(store, GraphStore) else GraphStore(store)
        self.ids = list(self.store.ids() if ids is None else ids)
        self.tasks = None if tasks is None else dict(tasks)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> CrystalGraph:
        if not -len(self.ids) <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} graphs")
        mid = self.ids[index]
        item = self.store.get(mid)
        g = item["graph"]
        if self.tasks is None:
            return g
        from matxfer.kinds import attach_labels

        labels = item["labels"] if self.labels is None else self.labels[mid]
        return attach_labels(g, labels, self.tasks, copy=False)

    def __iter__(self) -> Iterator[CrystalGraph]:
        for i in range(len(self)):
            yield self[i]


class StoreGraphs(Mapping):
    """Id -> labelled graph, read from a store on access (the store-backed
    ``PreparedData.graphs``); :meth:`dataset` gives the lazy dataset of a list of ids."""

    def __init__(self, store: GraphStore, ids: Sequence[str], tasks, labels):
        self.store = store
        self._ids = list(ids)
        self._known = set(self._ids)
        self.tasks = tasks
        self.labels = labels

    def dataset(self, ids: Sequence[str]) -> GraphStoreDataset:
        return GraphStoreDataset(self.store, [i for i in ids if i in self._known], self.tasks,
                                 self.labels)

    def __getitem__(self, material_id: str) -> CrystalGraph:
        if material_id not in self._known:
            raise KeyError(material_id)
        return self.dataset([material_id])[0]

    def __contains__(self, material_id: object) -> bool:
        return material_id in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def store_graphs(
    path: Path | str,
    records: Sequence[Any],
    settings: GraphSettings,
    featurizer,
    tasks: Mapping[str, Any],
    chunk_size: int = 1000,
    progress: bool = True,
) -> tuple[StoreGraphs, list[tuple[str, str]]]:
    """The labelled graphs of ``records`` from the store at ``path`` (a training run's path).

    Graphs missing from the store (or whose structure changed) are built into it first; the
    rest are only compared by digest. Labels are attached from ``records`` on each read.

    Returns:
        ``(graphs, failures)`` as :func:`~matxfer.data.graph_cache.build_graphs` gives them:
        a lazy id -> graph mapping of the records that have a graph, and ``(id, reason)``
        for those whose graph could not be built (now or by an earlier build).
    """
    build_store(records, path, settings, featurizer, chunk_size=chunk_size, progress=progress)
    store = GraphStore(path, settings, featurizer)
    stored = set(store.ids())
    failed = store.failures()
    ids = [str(r.material_id) for r in records if str(r.material_id) in stored]
    failures = [(str(r.material_id), failed[str(r.material_id)]) for r in records
                if str(r.material_id) in failed]
    labels = {str(r.material_id): r.labels for r in records}
    return StoreGraphs(store, ids, dict(tasks), labels), failures
