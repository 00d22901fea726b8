"""Deterministic train/val/test splits by material id.

An id's place depends only on the id and the seed (a hash), not on file order or on which
other ids are present, so adding or removing entries never reshuffles the others. Splits are
saved as id lists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def _rank(material_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{material_id}".encode()).hexdigest()


def shuffled(ids: Iterable[str], seed: int) -> list[str]:
    """The ids in a seed-dependent order that depends on nothing else."""
    uniq = sorted(set(ids))
    return sorted(uniq, key=lambda i: _rank(i, seed))


@dataclass
class Split:
    train: list[str]
    val: list[str]
    test: list[str]
    seed: int = 0

    def to_dict(self) -> dict:
        return {"seed": self.seed, "train": self.train, "val": self.val, "test": self.test}

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        return cls(list(d["train"]), list(d["val"]), list(d["test"]), int(d.get("seed", 0)))

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: Path | str) -> Split:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def check_disjoint(self) -> None:
        a, b, c = set(self.train), set(self.val), set(self.test)
        overlap = (a & b) | (a & c) | (b & c)
        if overlap:
            raise ValueError(f"split sets overlap on {len(overlap)} ids, e.g. {sorted(overlap)[:5]}")


def split_ids(
    ids: Sequence[str],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    sizes: tuple[int | None, int | None, int | None] | None = None,
    groups: Mapping[str, str] | None = None,
) -> Split:
    """Split ids into train/val/test deterministically.

    Args:
        ids: material ids (duplicates are ignored).
        fractions: train/val/test fractions (normalised if they do not sum to 1).
        seed: the split seed.
        sizes: absolute sizes instead of fractions; ``None`` for "the rest" (at most one).
        groups: id -> group (e.g. crystal system): each group is split with ``fractions`` on
            its own (stratified), so every group has its share in every part. Not with
            ``sizes``.

    Returns:
        A :class:`Split` whose three lists are disjoint.
    """
    if groups is not None:
        if sizes is not None:
            raise ValueError("a stratified split takes fractions, not sizes")
        members: dict[str, list[str]] = {}
        for i in sorted(set(ids)):
            members.setdefault(groups.get(i, "unknown"), []).append(i)
        parts = [split_ids(m, fractions, seed) for _, m in sorted(members.items())]
        rank = {i: r for r, i in enumerate(shuffled(ids, seed))}
        joined = [sorted((i for p in parts for i in getattr(p, k)), key=rank.__getitem__) for k in ("train", "val", "test")]
        return Split(*joined, seed)
    order = shuffled(ids, seed)
    n = len(order)
    if sizes is not None:
        if sum(s is None for s in sizes) > 1:
            raise ValueError("at most one split size may be None (the rest)")
        fixed = sum(s for s in sizes if s is not None)
        if fixed > n:
            raise ValueError(f"split sizes {sizes} need {fixed} ids, only {n} available")
        counts = [s if s is not None else n - fixed for s in sizes]
    else:
        if any(f < 0 for f in fractions) or sum(fractions) <= 0:
            raise ValueError(f"invalid split fractions {fractions}")
        tot = float(sum(fractions))
        n_val = int(round(n * fractions[1] / tot))
        n_test = int(round(n * fractions[2] / tot))
        counts = [n - n_val - n_test, n_val, n_test]
    a, b = counts[0], counts[0] + counts[1]
    return Split(order[:a], order[a:b], order[b : b + counts[2]], seed)


def remove_overlap(ids: Iterable[str], other: Iterable[str]) -> list[str]:
    """``ids`` without those present in ``other`` (order kept)."""
    drop = set(other)
    return [i for i in ids if i not in drop]


def subsample(ids: Sequence[str], n: int, seed: int) -> list[str]:
    """A deterministic subset of size ``n`` (nested: a smaller ``n`` gives a subset of a larger)."""
    if n > len(ids):
        raise ValueError(f"asked for {n} ids, only {len(ids)} available")
    return shuffled(ids, seed)[:n]
