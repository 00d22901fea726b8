"""`matxfer train` resumes after a kill: last.ckpt every epoch, same final weights, and a
rerun with another config on the same run directory is refused unless --force."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import matxfer
from matxfer.config import config_from_dict
from matxfer.train.loop import fit
from matxfer.train.resume import prepare_run_dir

TINY = {
    "name": "tiny-resume",
    "seed": 3,
    "data": {
        "datasets": ["emt-metals"],  # generated: runs without the real data
        "targets": ["energy_per_atom"],
        "limit": 24,
        "split": {"fractions": [0.7, 0.15, 0.15]},
    },
    "model": {"backbone": {"name": "cgcnn", "width": 8, "n_conv": 1}},
    "optim": {"epochs": 6, "batch_size": 4, "lr": 3e-3, "patience": 0, "warmup_epochs": 1},
    "trainer": {"progress": False, "deterministic": True},
}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def _env() -> dict[str, str]:
    src = str(Path(matxfer.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["MATXFER_PROGRESS"] = "0"
    return env


def _train_cmd(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "matxfer", "train", str(config), "--out", str(out)]


def test_killed_train_resumes_to_the_same_weights(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    env = _env()

    ref = tmp_path / "uninterrupted"
    r = subprocess.run(_train_cmd(config, ref), env=env, capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(config, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    try:
        while not (out / "last.ckpt").is_file():
            if proc.poll() is not None:
                pytest.fail(f"training ended (rc {proc.returncode}) without writing last.ckpt: "
                            f"{proc.stderr.read()[-3000:]}")
            assert time.time() < deadline, "no last.ckpt after 600 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    killed_at = torch.load(out / "last.ckpt", weights_only=True)["resume"]["epoch"]
    assert 1 <= killed_at < TINY["optim"]["epochs"], "the kill came after training had finished"
    assert not (out / "model.ckpt").exists()

    r = subprocess.run(_train_cmd(config, out), env=env, capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from {out / 'last.ckpt'} after epoch {killed_at}" in r.stderr
    _assert_identical(_weights(ref / "model.ckpt"), _weights(out / "model.ckpt"))
    _assert_identical(_weights(ref / "last.ckpt"), _weights(out / "last.ckpt"))
    _assert_identical(_weights(ref / "best.ckpt"), _weights(out / "best.ckpt"))
    # the CSV log holds every epoch once, those before the kill included
    import csv

    with open(out / "logs" / "metrics.csv") as fh:
        epochs = sorted({int(row["epoch"]) for row in csv.DictReader(fh) if row.get("val_loss")})
    assert epochs == list(range(TINY["optim"]["epochs"]))


def test_last_ckpt_is_plain_data_with_every_resume_state(tmp_path):
    raw = {**TINY, "out": str(tmp_path / "run"), "optim": {**TINY["optim"], "epochs": 2}}
    fit(config_from_dict(raw))
    ck = torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu", weights_only=True)
    r = ck["resume"]
    assert r["epoch"] == 2 and r["finished"] is True
    rng = r["rng"]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["generator"], torch.Tensor)
    assert isinstance(rng["numpy"]["keys"], torch.Tensor) and isinstance(rng["python"]["state"], list)
    (opt,) = r["optimizers"]
    assert opt["state"] and all(isinstance(k, int) for k in opt["state"])
    assert r["schedulers"][0]["last_epoch"] > 0
    # the best model is best.ckpt (Lightning's ModelCheckpoint, matxfer format); last.ckpt
    # holds its score and path
    assert Path(r["best"]["best_model_path"]) == tmp_path / "run" / "best.ckpt"
    best = torch.load(tmp_path / "run" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["state_dict"].keys() == ck["state_dict"].keys()
    assert np.isfinite(r["best"]["best"]) and best["metrics"]["epoch"] in (0, 1)
    assert best["metrics"]["val_loss"] == pytest.approx(r["best"]["best"])


def test_rerun_with_another_config_is_refused_unless_force(tmp_path):
    out = tmp_path / "run"
    raw = {**TINY, "out": str(out), "optim": {**TINY["optim"], "epochs": 2}}
    first = fit(config_from_dict(raw))
    before = _weights(out / "model.ckpt")

    changed = {**raw, "optim": {**raw["optim"], "lr": 1e-2}, "seed": 5}
    with pytest.raises(ValueError, match=r"differing keys: optim\.lr \(0\.003 -> 0\.01\), seed \(3 -> 5\)"):
        fit(config_from_dict(changed))
    _assert_identical(before, _weights(out / "model.ckpt"))  # nothing was touched

    # the same refusal through the command line, and --force starts afresh
    from matxfer.cli import main

    config = tmp_path / "changed.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in changed.items() if k != "out"}))
    assert main(["train", str(config), "--out", str(out)]) == 2
    assert main(["train", str(config), "--out", str(out), "--force"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 1e-2
    assert torch.load(out / "last.ckpt", weights_only=True)["config"]["seed"] == 5

    # a finished run rerun with its own config trains no further and ends the same
    again = fit(config_from_dict(raw | {"out": str(tmp_path / "run2")}))
    rerun = fit(config_from_dict(raw | {"out": str(tmp_path / "run2")}))
    assert rerun.metrics["epochs_run"] == again.metrics["epochs_run"] == 2
    _assert_identical(_weights(again.checkpoint), _weights(rerun.checkpoint))
    assert first.metrics["test"]["energy_per_atom"]["mae"] == pytest.approx(again.metrics["test"]["energy_per_atom"]["mae"])


def test_prepare_run_dir_without_a_run_starts_afresh(tmp_path):
    out = tmp_path / "cell"
    out.mkdir()
    (out / "cell_split.json").write_text("{}")  # a study writes its split before training
    (out / "best.ckpt").write_bytes(b"stale")
    assert prepare_run_dir(out, config_from_dict({**TINY, "out": str(out)})) is None
    assert not (out / "best.ckpt").exists() and (out / "cell_split.json").exists()


def test_csv_log_of_an_interrupted_run_is_moved_aside_and_merged_back(tmp_path):
    """Lightning's CSV logger cannot append to a file whose rows have other columns (the
    rows of the epochs before a kill): the file is stashed before the resume and merged
    after, keeping every epoch once, also across a second interruption."""
    import csv

    from matxfer.train.resume import STASHED_CSV, merge_csv_logs, stash_csv_log

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.csv").write_text(
        "epoch,step,train_loss,val_loss\n0,4,1.0,\n0,4,,0.9\n1,8,0.8,\n1,8,,0.7\n2,12,0.6,\n"
    )
    text = stash_csv_log(logs)
    assert not (logs / "metrics.csv").exists() and (logs / STASHED_CSV).is_file()
    # interrupted again before the merge: a new partial log, then a second resume at epoch 2
    (logs / "metrics.csv").write_text("epoch,step,val_loss\n2,12,0.55\n")
    text = stash_csv_log(logs)
    (logs / "metrics.csv").write_text("epoch,step,val_loss,train_loss\n2,12,0.5,\n2,12,,0.45\n3,16,0.4,\n")
    merge_csv_logs(logs / "metrics.csv", text, start_epoch=2)
    with open(logs / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["0", "0", "1", "1", "2", "2", "3"]
    assert {"train_loss", "val_loss"} <= set(rows[0])
