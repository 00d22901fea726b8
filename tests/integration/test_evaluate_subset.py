"""`evaluate` on a checkpoint trained on a few entries parses only the entries it scores,
and a load of given ids reuses the full parse when that is cached."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

import matxfer.data.registry as reg
from matxfer.config import config_from_dict
from matxfer.train.loop import fit


class _ParsedTooMuch(BaseException):
    """Raised from the parser hook; a BaseException so the per-entry error net lets it out."""


def _count_builds(monkeypatch, budget: int | None = None) -> list[str]:
    calls: list[str] = []
    real = reg.make_record

    def counting(entry_id, *args, **kwargs):
        calls.append(entry_id)
        if budget is not None and len(calls) > budget:
            raise _ParsedTooMuch(f"parsed {len(calls)} entries, more than the {budget} needed")
        return real(entry_id, *args, **kwargs)

    monkeypatch.setattr(reg, "make_record", counting)
    return calls


def test_evaluate_parses_only_the_split_it_scores(tmp_path, data_dir, monkeypatch):
    from matxfer.train.cli import evaluate_checkpoint

    # a cold cache: a full parse cached by an earlier run would serve the ids without parsing
    monkeypatch.setenv("MATXFER_CACHE_DIR", str(tmp_path / "cache"))

    raw = {
        "name": "lim",
        "out": str(tmp_path / "lim"),
        "data": {"datasets": ["mp-elastic-2024"], "targets": ["log10_bulk_modulus_vrh"],
                 "limit": 20, "split": {"fractions": [0.6, 0.2, 0.2]}},
        "model": {"backbone": {"name": "cgcnn", "width": 8, "n_conv": 1}},
        "optim": {"epochs": 1, "batch_size": 8, "patience": 0},
        "trainer": {"progress": False},
    }
    res = fit(config_from_dict(raw))
    test_ids = json.loads((res.out_dir / "split.json").read_text())["test"]
    assert 0 < len(test_ids) < 20
    reg._MEMO.clear()
    calls = _count_builds(monkeypatch, budget=len(test_ids))
    out = evaluate_checkpoint(str(res.checkpoint), "mp-elastic-2024", split="test")
    assert sorted(calls) == sorted(test_ids)
    assert out["n"] == len(test_ids)
    m = out["metrics"]["log10_bulk_modulus_vrh"]
    assert m["n"] == len(test_ids) and np.isfinite(m["mae"])


def _write_petousis(root, si, n):
    cols = ["material_id", "structure", "e_total", "e_electronic", "band_gap", "n"]
    eye = str(np.eye(3).tolist())
    rows = [[f"mp-{i}", si.as_dict(), str((np.eye(3) * 3).tolist()), eye, 1.0, 1.0]
            for i in range(n)]
    d = root / "matminer_figshare"
    d.mkdir(parents=True)
    with gzip.open(d / "dielectric_constant.json.gz", "wt") as fh:
        json.dump({"columns": cols, "index": list(range(n)), "data": rows}, fh)


def test_id_subset_reuses_the_cached_full_parse(tmp_path, si, monkeypatch):
    root = tmp_path / "data"
    _write_petousis(root, si, 8)
    calls = _count_builds(monkeypatch)
    reg._MEMO.clear()
    sub = reg.load_dataset("petousis-dielectric-2017", root=root, ids=["mp-5", "mp-2"])
    assert sorted(calls) == ["mp-2", "mp-5"]  # no full cache yet: only the two are parsed
    assert sub.ids == ["mp-2", "mp-5"]  # file order
    full = reg.load_dataset("petousis-dielectric-2017", root=root)
    assert len(full) == 8 and len(calls) == 10
    sub = reg.load_dataset("petousis-dielectric-2017", root=root, ids=["mp-5", "mp-2"])
    assert sub.ids == ["mp-2", "mp-5"] and len(calls) == 10  # cut from the memoised parse
    reg._MEMO.clear()  # a new process: the on-disk record cache
    sub = reg.load_dataset("petousis-dielectric-2017", root=root, ids=["mp-7", "nope"])
    assert sub.ids == ["mp-7"] and len(calls) == 10
    assert sub.records[0].structure == full.records[7].structure
    reg._MEMO.clear()


@pytest.mark.parametrize("use_cache", [False])
def test_id_subset_without_cache_still_parses_only_those(tmp_path, si, monkeypatch, use_cache):
    root = tmp_path / "data"
    _write_petousis(root, si, 5)
    reg.load_dataset("petousis-dielectric-2017", root=root)  # full parse cached
    calls = _count_builds(monkeypatch)
    sub = reg.load_dataset("petousis-dielectric-2017", root=root, ids=["mp-1"], use_cache=use_cache)
    assert sub.ids == ["mp-1"] and calls == ["mp-1"]
    reg._MEMO.clear()
