"""key=value overrides are accepted anywhere on the command line (after --out, --init-from,
--recipe too); unknown --flags and stray words are still refused with a clear message."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from matxfer.cli import main

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "configs" / "examples" / "train_elastic.yaml"
STUDY = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture
def captured_fit(monkeypatch):
    seen = []

    def fake_fit(cfg, command="", force=False):
        seen.append(cfg)
        return SimpleNamespace(checkpoint="x.ckpt", metrics={}, wall_time_s=0.0)

    monkeypatch.setattr("matxfer.train.loop.fit", fake_fit)
    return seen


@pytest.mark.parametrize(
    "argv",
    [
        ["train", str(TRAIN), "optim.lr=0.5", "optim.epochs=2", "--out", "OUT"],
        ["train", str(TRAIN), "--out", "OUT", "optim.lr=0.5", "optim.epochs=2"],
        ["train", str(TRAIN), "optim.lr=0.5", "--out", "OUT", "optim.epochs=2"],
        ["train", "--out", "OUT", str(TRAIN), "optim.lr=0.5", "optim.epochs=2"],
    ],
)
def test_train_overrides_anywhere(captured_fit, tmp_path, argv, capsys):
    argv = [str(tmp_path / "run") if a == "OUT" else a for a in argv]
    assert main(argv) == 0
    (cfg,) = captured_fit
    assert cfg.optim.lr == 0.5 and cfg.optim.epochs == 2
    assert Path(cfg.out) == tmp_path / "run"


def test_finetune_overrides_after_init_from_and_recipe(captured_fit, tmp_path):
    argv = ["finetune", str(TRAIN), "--init-from", "parent.ckpt", "optim.epochs=3",
            "--recipe", "head", "optim.lr=0.25", "--out", str(tmp_path / "ft"), "seed=7"]
    assert main(argv) == 0
    (cfg,) = captured_fit
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.seed) == (3, 0.25, 7)
    assert cfg.transfer.init_from == "parent.ckpt" and cfg.transfer.recipe == "head"


def test_study_overrides_after_out(monkeypatch, tmp_path):
    from matxfer.study.runner import StudyRunner

    seen = []

    def fake_run(self, progress=True):
        seen.append(self.study)
        return self.out / "results.csv"

    monkeypatch.setattr(StudyRunner, "run", fake_run)
    assert main(["study", str(STUDY), "--out", str(tmp_path / "s"), "seeds=3", "--jobs", "1"]) == 0
    assert seen[0].seeds == [0, 1, 2]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "3"], "unknown option --lr (config overrides are written key=value without dashes"),
        (["stray"], "unexpected argument stray"),
    ],
)
def test_unknown_arguments_still_refused(captured_fit, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        main(["train", str(TRAIN), "--out", str(tmp_path / "r"), "optim.lr=1", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "matxfer train: error: " + message in err
    assert not captured_fit


def test_commands_without_overrides_refuse_key_value(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["inspect", "x.ckpt", "a=b"])
    assert "matxfer inspect: error: unexpected argument a=b" in capsys.readouterr().err
