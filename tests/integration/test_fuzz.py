"""Generated bad inputs beside good ones through the command line, as a user runs it.

``predict``, ``data validate``, ``train``, ``evaluate``, ``inspect``, ``finetune`` and
``import-cgcnn`` each get the folder of :mod:`fuzz_inputs` (malformed, empty, binary and
truncated files, disordered and overlapping structures, a lone atom, unknown elements, a
2,000-atom cell, NaN / asymmetric / absurd labels, damaged, NaN-weight and hostile
checkpoints). Every bad input gets one message naming it and its problem, without a
traceback and without torch's ``weights_only=False`` advice; the good inputs beside it are
still processed; nothing from a pickle runs; no NaN or infinity is written; a command that
could do nothing exits non-zero.

The model is a one-layer CGCNN with an edge tensor head trained for one epoch on the fuzz
dataset's good rows, through ``matxfer train`` (a few seconds).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))

import fuzz_inputs as F  # noqa: E402

GOOD = sorted(k for k, v in F.STRUCTURE_CASES.items() if v is None)
BAD = sorted(k for k, v in F.STRUCTURE_CASES.items() if v is not None)
GOOD_IDS = sorted(k for k, v in F.DATASET_CASES.items() if v is None)
BAD_IDS = sorted(k for k, v in F.DATASET_CASES.items() if v is not None)


def _clean(run: F.CliRun) -> None:
    """No traceback and no advice to unpickle with the full unpickler, anywhere."""
    text = run.out + run.err
    assert "Traceback" not in text, text[-3000:]
    assert "weights_only" not in text, text[-3000:]


def _one_error_line(run: F.CliRun, *words: str) -> str:
    """The command failed (exit 2) with one ``matxfer: error:`` line holding ``words``."""
    _clean(run)
    errors = [line for line in run.err.splitlines() if line.startswith("matxfer: error:")]
    assert run.rc == 2, (run.rc, run.err[-2000:])
    assert len(errors) == 1, run.err
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def fz(tmp_path_factory):
    """The generated inputs, a model trained on the fuzz dataset, and its training run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATXFER_CACHE_DIR", str(tmp_path_factory.mktemp("fuzz-cache")))
        mp.setenv("MATXFER_PROGRESS", "0")
        root = tmp_path_factory.mktemp("fuzz")
        paths = F.write_fuzz_inputs(root)
        cfg = F.write_train_config(root / "train.yaml", paths["data"])
        train = F.run_cli(["train", cfg, "--out", root / "run"])
        model = root / "run" / "model.ckpt"
        if model.is_file():
            paths["checkpoints"] = F.write_checkpoints(root / "checkpoints", model, paths["marker"])
        yield {**paths, "model": model, "train": train, "root": root}
        assert not paths["marker"].exists(), "a hostile pickle was executed"


def _predict(fz, out: Path, *inputs) -> F.CliRun:
    run = F.run_cli(["predict", fz["model"], *(inputs or [fz["structures"]]), "--out", out])
    _clean(run)
    return run


def _skipped(run: F.CliRun) -> dict[str, str]:
    """file name -> message, from the ``skipped FILE: message`` lines of standard error."""
    out = {}
    for line in run.err.splitlines():
        if line.startswith("skipped "):
            path, _, msg = line[len("skipped "):].partition(": ")
            out[Path(path).name] = msg
    return out


# ---------------------------------------------------------------------------------------
# training on a user dataset with bad rows (the fixture's run)
# ---------------------------------------------------------------------------------------


def test_train_uses_the_good_rows_and_names_the_bad(fz):
    train = fz["train"]
    _clean(train)
    assert train.rc == 0, train.err[-3000:]
    import torch

    ck = torch.load(fz["model"], weights_only=True)
    split = ck["split"]
    used = sorted(split["train"] + split["val"] + split["test"])
    assert used == GOOD_IDS
    dropped = ck["provenance"]["dropped"]
    assert dropped[f"{F.DATASET}: unloadable"] == len(BAD_IDS)
    # the log names the dataset, the count and the first bad entry with its problem
    assert f"{F.DATASET}: {len(BAD_IDS)} entries skipped" in train.err
    assert "bad-nan: label 'dielectric_total' contains NaN" in train.err
    metrics = json.loads(train.out[train.out.index("{"):])
    assert np.isfinite(metrics["test"]["dielectric_total"]["mae_voigt"])


# ---------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------


def test_predict_json(fz, tmp_path, caplog):
    out = tmp_path / "pred.json"
    run = _predict(fz, out)
    assert run.rc == 0, run.err[-3000:]
    blob = F.strict_json(out.read_text())  # no NaN / Infinity anywhere
    names = sorted(Path(p["name"]).name for p in blob["predictions"])
    assert names == GOOD
    errors = {Path(e["input"]).name: e["error"] for e in blob["errors"]}
    assert sorted(errors) == BAD
    skipped = _skipped(run)
    assert sorted(skipped) == BAD
    for name in BAD:
        for word in F.STRUCTURE_CASES[name]:
            if word == name:
                continue  # the file is the entry's key; its message says what is wrong
            assert word in errors[name], (name, word, errors[name])
        assert skipped[name] == errors[name]
        assert "could not read structure" not in errors[name] or "(" in errors[name]
    by_name = {Path(p["name"]).name: p for p in blob["predictions"]}
    assert by_name["lone_atom.cif"]["isolated_atoms"] == 1
    assert "lone_atom.cif: 1 of 1 atom(s) have no neighbour" in run.err
    assert by_name["big_2000_atoms.cif"]["symmetry"]["point_group"] == "m-3m"
    for p in blob["predictions"]:
        eps = np.asarray(p["dielectric_total"]["cartesian"], dtype=float)
        assert eps.shape == (3, 3) and np.isfinite(eps).all()
    assert not fz["marker"].exists()


def test_predict_csv_has_no_nan(fz, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in GOOD + BAD:
        if name != "big_2000_atoms.cif":  # predicted in the JSON test; its CSV row is alike
            (folder / name).write_bytes((fz["structures"] / name).read_bytes())
    out = tmp_path / "pred.csv"
    run = _predict(fz, out, folder)
    assert run.rc == 0, run.err[-3000:]
    text = out.read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert sorted(Path(r["name"]).name for r in rows) == sorted(set(GOOD) - {"big_2000_atoms.cif"})
    for r in rows:
        for col, cell in r.items():
            assert cell.strip().lower() not in ("nan", "inf", "-inf", "infinity", "-infinity"), (col, cell)
            if cell.startswith("["):
                F.strict_json(cell)
    errors = F.strict_json(out.with_suffix(".errors.json").read_text())
    assert sorted(Path(e["input"]).name for e in errors) == BAD


def test_predict_nothing_readable_exits_non_zero(fz, tmp_path):
    folder = tmp_path / "bad_only"
    folder.mkdir()
    for name in BAD:
        (folder / name).write_bytes((fz["structures"] / name).read_bytes())
    out = tmp_path / "none.json"
    run = _predict(fz, out, folder)
    assert run.rc == 1
    blob = F.strict_json(out.read_text())
    assert blob["predictions"] == [] and len(blob["errors"]) == len(BAD)
    assert "0 structure(s) predicted" in run.out

    empty = tmp_path / "empty_folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("no structures here\n")
    _one_error_line(_predict(fz, tmp_path / "x.json", empty), "no structure files found")
    _one_error_line(_predict(fz, tmp_path / "x.json", tmp_path / "absent.cif"), "absent.cif")
    _one_error_line(
        F.run_cli(["predict", fz["model"], fz["structures"], "--out", tmp_path / "x.txt"]),
        "--out must end in .json or .csv",
    )


def test_non_finite_prediction_is_an_error_not_a_nan(fz, tmp_path, monkeypatch):
    """A model output that is NaN (here forced) is reported for that structure; the others
    are still written."""
    import matxfer.inference as inference

    real = inference.predict_graphs

    def nan_for_nacl(model, graphs, batch_size=64):
        out = real(model, graphs, batch_size)
        for g, r in zip(graphs, out):
            if "nacl" in str(g.material_id):
                r["dielectric_total"] = np.full_like(r["dielectric_total"], np.nan)
        return out

    monkeypatch.setattr(inference, "predict_graphs", nan_for_nacl)
    s = fz["structures"]
    out = tmp_path / "nan.json"
    run = _predict(fz, out, s / "good_si.cif", s / "good_nacl.vasp")
    assert run.rc == 0
    blob = F.strict_json(out.read_text())
    assert [Path(p["name"]).name for p in blob["predictions"]] == ["good_si.cif"]
    (err,) = blob["errors"]
    assert err["input"].endswith("good_nacl.vasp")
    assert "dielectric_total prediction is not finite" in err["error"]


# ---------------------------------------------------------------------------------------
# data validate / train / evaluate on a user dataset
# ---------------------------------------------------------------------------------------


def test_data_validate_names_every_bad_entry(fz, tmp_path):
    out = tmp_path / "report.json"
    run = F.run_cli(
        ["data", "validate", F.DATASET, "--data-dir", fz["data"], "--json", "--out", out, "--no-cache"]
    )
    _clean(run)
    assert run.rc == 0, run.err[-3000:]
    blob = F.strict_json(out.read_text())
    assert blob["n"] == len(F.DATASET_CASES) and blob["passed"] == len(GOOD_IDS)
    reasons = {f["id"]: f["reason"] for f in blob["failures"]}
    assert sorted(reasons) == BAD_IDS
    for entry in BAD_IDS:
        for word in F.DATASET_CASES[entry]:
            assert word in reasons[entry], (entry, word, reasons[entry])


@pytest.mark.parametrize("data_dir", sorted(F.DATASET_FILE_CASES))
def test_damaged_dataset_file(fz, data_dir, tmp_path):
    """A dataset file that cannot be read as a whole: one line naming dataset and file, from
    every command that reads it."""
    d = fz["root"] / data_dir
    words = (F.DATASET, *F.DATASET_FILE_CASES[data_dir])
    _one_error_line(F.run_cli(["data", "validate", F.DATASET, "--data-dir", d]), *words)
    _one_error_line(
        F.run_cli(["evaluate", fz["model"], "--data", F.DATASET, "--data-dir", d, "--split", "all"]),
        *words,
    )
    cfg = F.write_train_config(tmp_path / "t.yaml", d)
    _one_error_line(F.run_cli(["train", cfg, "--out", tmp_path / "run"]), *words)


def test_train_bad_configs(fz, tmp_path):
    for name, words in F.write_bad_configs(tmp_path).items():
        _one_error_line(F.run_cli(["train", tmp_path / name, "--out", tmp_path / "r"]), *words)
        assert not (tmp_path / "r" / "model.ckpt").exists()


def test_evaluate_on_the_fuzz_dataset(fz, tmp_path):
    out = tmp_path / "metrics.json"
    run = F.run_cli(
        ["evaluate", fz["model"], "--data", F.DATASET, "--data-dir", fz["data"], "--split", "all",
         "--out", out]
    )
    _clean(run)
    assert run.rc == 0, run.err[-3000:]
    blob = F.strict_json(out.read_text())
    assert blob["n"] == len(GOOD_IDS)
    assert blob["dropped"] == {f"{F.DATASET}: unloadable": len(BAD_IDS)}
    assert np.isfinite(blob["metrics"]["dielectric_total"]["mae_voigt"])
    _one_error_line(
        F.run_cli(["evaluate", fz["model"], "--data", "flla-2015", "--data-dir", fz["data"]]),
        "flla-2015", "none of the checkpoint's targets",
    )


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(F.CHECKPOINT_CASES))
def test_bad_checkpoint(fz, name, tmp_path):
    ckpt = fz["checkpoints"] / name
    words = F.CHECKPOINT_CASES[name]
    good = fz["structures"] / "good_si.cif"
    _one_error_line(F.run_cli(["predict", ckpt, good, "--out", tmp_path / "p.json"]), *words)
    assert not (tmp_path / "p.json").exists()
    _one_error_line(
        F.run_cli(["evaluate", ckpt, "--data", F.DATASET, "--data-dir", fz["data"], "--split", "all"]),
        *words,
    )
    if name != "nan_weights.ckpt":  # its metadata is readable; only predicting is refused
        _one_error_line(F.run_cli(["inspect", ckpt]), *words)
    assert not fz["marker"].exists()


def test_nan_weights_are_refused_as_a_parent(fz, tmp_path):
    # fine-tuning from a diverged or damaged parent would train on NaN and write NaN weights
    cfg = F.write_train_config(tmp_path / "ft.yaml", fz["data"])
    parent = fz["checkpoints"] / "nan_weights.ckpt"
    _one_error_line(
        F.run_cli(["finetune", cfg, "--init-from", parent, "--out", tmp_path / "ft"]),
        "nan_weights.ckpt", "NaN or inf", "fine-tuned",
    )
    assert not (tmp_path / "ft" / "model.ckpt").exists()


def test_hostile_checkpoint_as_parent_and_as_cgcnn_file(fz, tmp_path):
    ck = fz["checkpoints"]
    cfg = F.write_train_config(tmp_path / "ft.yaml", fz["data"])
    _one_error_line(
        F.run_cli(["finetune", cfg, "--init-from", ck / "hostile.ckpt", "--out", tmp_path / "ft"]),
        "hostile.ckpt", "refused",
    )
    out = tmp_path / "imported.ckpt"
    _one_error_line(
        F.run_cli(["import-cgcnn", ck / "hostile.pth.tar", "--out", out]),
        "hostile.pth.tar", "refused", "--trust-file",
    )
    for name in ("empty.ckpt", "truncated.ckpt", "random.ckpt", "garbled_pickle.ckpt"):
        _one_error_line(
            F.run_cli(["import-cgcnn", ck / name, "--atom-init", ck / "atom_init.json", "--out", out]),
            name, *F.CHECKPOINT_CASES[name][1:],
        )
    assert not out.exists()
    assert not fz["marker"].exists()


def test_hostile_checkpoint_in_a_real_process(fz, tmp_path):
    """``python -m matxfer predict hostile.ckpt ...`` as a separate process: refused, one
    line, exit 2, nothing written, the pickle's code never runs."""
    out = tmp_path / "p.json"
    proc = subprocess.run(
        [sys.executable, "-m", "matxfer", "predict", str(fz["checkpoints"] / "hostile.ckpt"),
         str(fz["structures"]), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "weights_only" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "hostile.ckpt: refused" in lines[0], proc.stderr
    assert not out.exists()
    assert not fz["marker"].exists()
