"""From dataset names to labelled, split crystal graphs ready for training.

Several datasets are merged by material id: each material keeps the labels it has (missing
labels are masked in the loss, never zero). Tensor labels are tied to the Cartesian frame of
their own structure, so when two datasets both carry tensors for one material the first one's
are kept and the other's are dropped (and counted); a dataset that brings the first tensor
labels for a material also brings its structure (scalar labels do not depend on the frame).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from matxfer.config import DataConfig
from matxfer.data.graphs import CrystalGraph, GraphSettings
from matxfer.data.records import CrystalRecord
from matxfer.data.registry import load_dataset
from matxfer.data.splits import Split, split_ids, subsample
from matxfer.kinds import attach_labels as attach_graph_labels
from matxfer.targets import TARGET_FORMULAS
from matxfer.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Labelled graphs by id, the split, and what was dropped on the way."""

    records: dict[str, CrystalRecord]
    graphs: dict[str, CrystalGraph]
    split: Split
    tasks: dict[str, Task]
    dropped: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""

    def subset(self, ids: list[str]) -> list[CrystalGraph]:
        """Graphs of ``ids`` (those that have one); with a graph store, a lazy dataset."""
        if hasattr(self.graphs, "dataset"):  # StoreGraphs: read on access
            return self.graphs.dataset(ids)  # type: ignore[attr-defined]
        return [self.graphs[i] for i in ids if i in self.graphs]

    def train_records(self) -> list[CrystalRecord]:
        return [self.records[i] for i in self.split.train if i in self.records]


def gather_records(
    cfg: DataConfig, targets: list[str], ids: list[str] | None = None
) -> tuple[dict[str, CrystalRecord], dict[str, int]]:
    """Load, validate and merge the configured datasets; keep entries with >= 1 target.

    ``ids``: load, validate and keep only these entries (None: all, or ``cfg.limit``).
    """
    from matxfer.data.validate import filter_valid

    merged: dict[str, CrystalRecord] = {}
    dropped: dict[str, int] = {}
    tensor_targets = set(TARGET_FORMULAS)
    for name in cfg.datasets:
        ds = load_dataset(
            name, root=cfg.data_dir, limit=None if ids is not None else cfg.limit, ids=ids,
            progress=True,
        )
        dropped[f"{name}: unloadable"] = len(ds.failures)
        if cfg.validate:
            n0 = len(ds.failures)
            ds, _ = filter_valid(ds, progress=True)
            dropped[f"{name}: failed validation"] = len(ds.failures) - n0
        n_conflict = 0
        for rec in ds.records:
            labels = {k: v for k, v in rec.labels.items() if k in targets}
            if not labels:
                continue
            old = merged.get(rec.material_id)
            if old is None:
                merged[rec.material_id] = CrystalRecord(
                    rec.material_id, rec.structure, labels, {**rec.meta, "dataset": name}
                )
                continue
            old_has_tensor = any(k in tensor_targets for k in old.labels)
            new_tensors = {k for k in labels if k in tensor_targets}
            if new_tensors and old_has_tensor:
                n_conflict += len(new_tensors)
                labels = {k: v for k, v in labels.items() if k not in tensor_targets}
            elif new_tensors:
                old.structure = rec.structure  # its frame now carries the tensors
            for k, v in labels.items():
                old.labels.setdefault(k, v)
        if n_conflict:
            dropped[f"{name}: tensor labels in a second frame"] = n_conflict
    exclude = set(cfg.exclude_ids)
    for name in cfg.exclude_ids_from:
        ds = load_dataset(name, root=cfg.data_dir)
        exclude |= set(ds.ids)
    if exclude:
        n0 = len(merged)
        merged = {k: v for k, v in merged.items() if k not in exclude}
        dropped["excluded ids (leakage control)"] = n0 - len(merged)
    for name, n in dropped.items():
        if n:
            log.info("dropped %d: %s", n, name)
    return merged, dropped


def attach_labels(
    graph: CrystalGraph, record: CrystalRecord, tasks: dict[str, Task], copy: bool = True
) -> CrystalGraph:
    """``graph`` (a copy unless ``copy=False``) with the record's labels and masks for every
    task (see :func:`matxfer.kinds.attach_labels`)."""
    return attach_graph_labels(graph, record.labels, tasks, copy)


def make_split(cfg: DataConfig, ids: list[str], records: dict[str, CrystalRecord] | None = None) -> Split:
    if cfg.split.stratify != "none" and not cfg.split.file:
        if cfg.split.sizes is not None:
            raise ValueError("data.split.stratify needs data.split.fractions, not data.split.sizes")
        if records is None:
            raise ValueError("a stratified split needs the records")
        from matxfer.symmetry import crystal_system

        groups = {i: crystal_system(records[i].structure) for i in ids}
        split = split_ids(ids, tuple(cfg.split.fractions), cfg.split.seed, groups=groups)
    elif cfg.split.file:
        split = Split.load(cfg.split.file)
        known = set(ids)
        split = Split(
            [i for i in split.train if i in known],
            [i for i in split.val if i in known],
            [i for i in split.test if i in known],
            split.seed,
        )
    else:
        split = split_ids(ids, tuple(cfg.split.fractions), cfg.split.seed, cfg.split.sizes)
    if cfg.train_size is not None:
        if cfg.train_size > len(split.train):
            raise ValueError(
                f"train_size={cfg.train_size} but only {len(split.train)} training entries exist"
            )
        split.train = subsample(split.train, cfg.train_size, cfg.split.seed)
    split.check_disjoint()
    return split


def fingerprint(records: dict[str, CrystalRecord], split: Split) -> str:
    h = hashlib.sha256()
    for part in (split.train, split.val, split.test):
        for i in part:
            h.update(i.encode())
            rec = records.get(i)
            if rec is not None:
                for k in sorted(rec.labels):
                    h.update(k.encode())
                    h.update(np.asarray(rec.labels[k], dtype=np.float64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def prepare_data(
    cfg: DataConfig,
    tasks: dict[str, Task],
    settings: GraphSettings,
    featurizer=None,
    split: Split | None = None,
) -> PreparedData:
    """Load, validate, merge, split and graph the configured data.

    Args:
        cfg: data config.
        tasks: the tasks (their names are the label keys).
        settings: graph settings (from the backbone or the parent checkpoint).
        featurizer: atom featurizer when the graphs carry tabulated features.
        split: use this split instead of making one (e.g. a checkpoint's test ids); only
            its entries are then loaded, validated and graphed.
    """
    from matxfer.data.graph_cache import build_graphs

    only = None if split is None else [*split.train, *split.val, *split.test]
    records, dropped = gather_records(cfg, list(tasks), ids=only)
    if not records:
        raise ValueError(
            f"no entries with any of the targets {list(tasks)} in datasets {cfg.datasets}"
        )
    if split is None:
        split = make_split(cfg, sorted(records), records)
    wanted = [i for i in (*split.train, *split.val, *split.test) if i in records]
    by_id: dict[str, CrystalGraph]
    if cfg.graph_store:
        from matxfer.data.graph_store import store_graphs

        by_id, failures = store_graphs(  # type: ignore[assignment]
            cfg.graph_store, [records[i] for i in wanted], settings, featurizer, tasks
        )
    else:
        cache_key = "+".join(cfg.datasets) + (f"-limit{cfg.limit}" if cfg.limit else "")
        graphs, failures = build_graphs(
            [records[i] for i in wanted], settings, cache_key, featurizer=featurizer, progress=True
        )
        by_id = {}
        for g in graphs:
            mid = g.material_id
            by_id[mid] = attach_labels(g, records[mid], tasks)
    if failures:
        dropped["graph construction failed"] = len(failures)
        for mid, why in failures[:5]:
            log.warning("no graph for %s: %s", mid, why)
    keep = set(by_id)
    split = Split(
        [i for i in split.train if i in keep],
        [i for i in split.val if i in keep],
        [i for i in split.test if i in keep],
        split.seed,
    )
    return PreparedData(records, by_id, split, tasks, dropped, fingerprint(records, split))


def leakage(test_ids: list[str], train_ids: list[str]) -> list[str]:
    """Ids of ``test_ids`` that also appear in ``train_ids``."""
    return sorted(set(test_ids) & set(train_ids))
