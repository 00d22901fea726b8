"""``matxfer study``: a non-zero exit with a summary when cells failed, and one study per
directory (lock file with the owner's pid; a dead owner's lock is taken over)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import yaml

from matxfer.study.runner import LOCK_NAME, StudyLock, StudyLockedError, StudyRunner

STUDY = {
    "name": "t",
    "base": {"model": {"backbone": {"name": "cgcnn", "width": 8, "n_conv": 1}}},
    "pretrain": {"pre": {"config": {"data": {"datasets": ["flla-2015"], "targets": ["formation_energy_per_atom"]}}}},
    "targets": {"gap": {"data": {"datasets": ["petousis-dielectric-2017"], "targets": ["band_gap"]}, "sizes": [10]}},
    "recipes": [{"name": "head", "kind": "head", "pretrained": "pre"}],
    "seeds": 2,
}


@pytest.fixture
def fake_cells(monkeypatch):
    """Cells that 'train' instantly: seed 1 of the head recipe fails."""
    from matxfer.study.config import study_from_dict

    target = study_from_dict(STUDY).targets[0]
    recipes = study_from_dict(STUDY).recipes

    def cells(self):
        return [(target, {}, 10, r, seed) for r in recipes for seed in (0, 1)]

    def run_cell(self, target, split, size, recipe, seed):
        d = self.cell_dir(target, recipe, size, seed)
        d.mkdir(parents=True, exist_ok=True)
        ok = not (recipe.name == "head" and seed == 1)
        row = {"target": target.name, "recipe": recipe.name, "kind": recipe.kind, "size": size,
               "seed": seed, "status": "ok" if ok else "failed"}
        if not ok:
            row["error"] = "RuntimeError: loss is NaN"
        (d / "result.json").write_text(__import__("json").dumps(row))
        return row

    monkeypatch.setattr(StudyRunner, "run_pretraining", lambda self, pool=None: None)
    monkeypatch.setattr(StudyRunner, "cells", cells)
    monkeypatch.setattr(StudyRunner, "run_cell", run_cell)
    monkeypatch.setattr("matxfer.study.report.write_report", lambda out, study=None: None)


def _config(tmp_path):
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(STUDY))
    return p


def test_failed_cells_give_nonzero_exit_and_summary(fake_cells, tmp_path, capsys):
    from matxfer.cli import main

    out = tmp_path / "study"
    rc = main(["study", str(_config(tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1
    assert err[0].startswith("matxfer: error: 1 of 4 cells failed: gap/head/n10/seed1: RuntimeError: loss is NaN")
    assert err[0].endswith(f"see {out / 'study.log'}")
    assert not (out / LOCK_NAME).exists()  # released


def test_all_cells_ok_exit_zero(fake_cells, monkeypatch, tmp_path, capsys):
    from matxfer.cli import main

    real = StudyRunner.run_cell

    def all_ok(self, target, split, size, recipe, seed):
        row = real(self, target, split, size, recipe, 0)
        return {**row, "status": "ok"}

    monkeypatch.setattr(StudyRunner, "run_cell", all_ok)
    assert main(["study", str(_config(tmp_path)), "--out", str(tmp_path / "s")]) == 0
    assert "failed" not in capsys.readouterr().err


def test_second_study_on_same_out_is_refused(fake_cells, tmp_path, capsys):
    from matxfer.cli import main

    out = tmp_path / "study"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_NAME).write_text(f"{holder.pid}\n")
        rc = main(["study", str(_config(tmp_path)), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err
        assert f"in use by another matxfer study (pid {holder.pid}" in err
        assert not (out / "cells").exists()  # nothing was run
        assert (out / LOCK_NAME).read_text().strip() == str(holder.pid)  # not stolen
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid}\n")
    with caplog.at_level(logging.WARNING, logger="matxfer"), StudyLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert any("stale lock" in r.getMessage() and f"pid {dead.pid}" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_is_exclusive(tmp_path):
    with StudyLock(tmp_path):
        code = (
            "import sys; from matxfer.study.runner import StudyLock, StudyLockedError\n"
            f"try:\n    StudyLock({str(tmp_path)!r}).acquire()\nexcept StudyLockedError as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert proc.returncode == 3, proc.stderr
        assert f"pid {os.getpid()}" in proc.stdout
    with pytest.raises(StudyLockedError):
        (tmp_path / LOCK_NAME).write_text(f"{os.getppid()}\n")
        StudyLock(tmp_path).acquire()
