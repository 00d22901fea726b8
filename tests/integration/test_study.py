"""A tiny study on the generated EMT data set (``emt-metals``, so it runs without the real
data): shared pretraining, cells, results.csv, report; resume and retry."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

import matxfer.train.loop as loop
from matxfer.study.config import study_from_dict
from matxfer.study.runner import StudyRunner, read_sittings

TINY = {"name": "cgcnn", "width": 8, "n_conv": 2}


def _tiny_study():
    return study_from_dict(
        {
            "name": "tiny",
            "seeds": 2,
            "base": {
                "model": {"backbone": TINY},
                "optim": {"epochs": 2, "batch_size": 8, "patience": 0},
                "trainer": {"progress": False},
            },
            "pretrain": {
                "eform": {
                    "config": {
                        "data": {
                            "datasets": ["emt-metals"],
                            "targets": ["energy_per_atom"],
                            "limit": 30,
                            "split": {"fractions": [0.8, 0.2, 0.0]},
                        }
                    }
                }
            },
            "targets": {
                "gap": {
                    "data": {"datasets": ["emt-metals"], "targets": ["energy"], "limit": 40},
                    "sizes": [8, 16],
                    "test_fraction": 0.25,
                    "val_fraction": 0.25,
                }
            },
            "recipes": [
                {"name": "scratch", "kind": "scratch"},
                {"name": "head", "kind": "head", "pretrained": "eform"},
                {"name": "k1", "kind": "freeze:1", "pretrained": "eform"},
            ],
        }
    )


@pytest.fixture
def counted_fit(monkeypatch):
    calls = []
    real = loop.fit

    def fit(cfg, command="train"):
        calls.append(cfg.name)
        return real(cfg, command)

    monkeypatch.setattr(loop, "fit", fit)
    return calls


def test_tiny_study_completes_then_resumes_without_redoing_cells(tmp_path, counted_fit):
    study = _tiny_study()
    out = tmp_path / "study"
    StudyRunner(study, out).run(progress=False)
    # one shared pretraining run + 2 sizes x 3 recipes x 2 seeds
    assert len(counted_fit) == 1 + 12
    assert sum("pretrain" in n for n in counted_fit) == 1

    df = pd.read_csv(out / "results.csv")
    cells = df[df["kind"] != "pretrain"]
    assert len(cells) == 12 and (cells["status"] == "ok").all()
    assert set(cells["recipe"]) == {"scratch", "head", "k1"}
    assert cells["energy.mae"].notna().all() and (cells["wall_time_s"] > 0).all()
    # head-only trains fewer parameters than scratch, freeze:1 sits in between
    tp = cells.groupby("recipe")["trainable_params"].first()
    assert tp["head"] < tp["k1"] < tp["scratch"]
    # every cell shares the fixed test split
    tests = {json.dumps(json.loads(p.read_text())["test"]) for p in (out / "cells").rglob("cell_split.json")}
    assert len(tests) == 1
    report = (out / "report.md").read_text()
    assert "## gap: energy (test mae)" in report and "| n=8 | n=16 |" in report
    assert (out / "learning_curve_gap_energy.png").stat().st_size > 1000
    # the sitting is recorded: command, machine, cells, elapsed time; the report shows it
    (sitting,) = read_sittings(out)
    assert sitting["cells_run"] == 12 and sitting["elapsed_s"] > 0
    assert sitting["machine"]["cpus"] == os.cpu_count() and sitting["command"]
    assert "## How this study was run" in report and "over 1 sitting(s)" in report

    # a rerun trains nothing and leaves the results as they were
    counted_fit.clear()
    StudyRunner(_tiny_study(), out).run(progress=False)
    assert counted_fit == []
    assert [st["cells_run"] for st in read_sittings(out)] == [12, 0]
    again = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(
        again.sort_values(["recipe", "size", "seed"]).reset_index(drop=True),
        df.sort_values(["recipe", "size", "seed"]).reset_index(drop=True),
    )

    # a failed cell is tried again on the next run (and only that one)
    res = out / "cells" / "gap" / "head" / "n8" / "seed1" / "result.json"
    row = json.loads(res.read_text())
    res.write_text(json.dumps({**row, "status": "failed", "error": "RuntimeError: interrupted"}))
    StudyRunner(_tiny_study(), out).run(progress=False)
    assert counted_fit == ["gap-head-n8-s1"]
    assert json.loads(res.read_text())["status"] == "ok"


def test_a_failing_cell_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    real = loop.fit

    def flaky(cfg, command="train"):
        if cfg.name == "gap-k1-n16-s0":
            raise RuntimeError("simulated crash")
        return real(cfg, command)

    monkeypatch.setattr(loop, "fit", flaky)
    out = tmp_path / "study"
    StudyRunner(_tiny_study(), out, retry_failed=False).run(progress=False)
    df = pd.read_csv(out / "results.csv")
    cells = df[df["kind"] != "pretrain"]
    assert (cells["status"] == "failed").sum() == 1 and (cells["status"] == "ok").sum() == 11
    bad = out / "cells" / "gap" / "k1" / "n16" / "seed0"
    assert "simulated crash" in (bad / "error.txt").read_text()
    assert "simulated crash" in (out / "report.md").read_text()


def test_parallel_cells_give_the_same_results_as_sequential(tmp_path):
    """jobs=2 (spawned workers, one thread each) trains exactly what the sequential run does."""
    raw_recipes = [{"name": "scratch", "kind": "scratch"}, {"name": "head", "kind": "head", "pretrained": "eform"}]

    def study():
        st = _tiny_study()
        st.recipes = [r for r in st.recipes if r.name in {x["name"] for x in raw_recipes}]
        st.targets[0].sizes = [8]
        return st

    StudyRunner(study(), tmp_path / "seq").run(progress=False)
    StudyRunner(study(), tmp_path / "par", jobs=2, threads=1).run(progress=False)
    cols = ["recipe", "size", "seed", "status", "energy.mae", "trainable_params"]
    seq = pd.read_csv(tmp_path / "seq" / "results.csv")
    par = pd.read_csv(tmp_path / "par" / "results.csv")
    seq, par = (d[d["kind"] != "pretrain"][cols].sort_values(cols[:3]).reset_index(drop=True) for d in (seq, par))
    assert len(par) == 4 and (par["status"] == "ok").all()
    pd.testing.assert_frame_equal(seq, par)
    # the sitting records the worker processes and the cells they trained
    (sitting,) = read_sittings(tmp_path / "par")
    assert (sitting["jobs"], sitting["threads"], sitting["cells_run"]) == (2, 1, 4)
    with pytest.raises(ValueError, match="jobs must be"):
        StudyRunner(study(), tmp_path / "x", jobs=0)
