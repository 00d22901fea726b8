import json

import numpy as np
import pandas as pd
import pytest

from matxfer.study.config import study_from_dict
from matxfer.study.report import verdict, write_report
from matxfer.study.runner import LeakageError, StudyRunner


def _study(**over):
    raw = {
        "name": "t",
        "base": {"model": {"backbone": {"name": "cgcnn"}}},
        "pretrain": {"pre": {"config": {"data": {"datasets": ["flla-2015"], "targets": ["formation_energy_per_atom"]}}}},
        "targets": {"gap": {"data": {"datasets": ["petousis-dielectric-2017"], "targets": ["band_gap"]}, "sizes": [10]}},
        "recipes": [{"name": "head", "kind": "head", "pretrained": "pre"}],
        "seeds": 2,
    }
    raw.update(over)
    return study_from_dict(raw)


def test_study_config_adds_scratch_and_checks_names():
    st = _study()
    assert [r.name for r in st.recipes] == ["scratch", "head"]
    assert st.seeds == [0, 1]
    with pytest.raises(ValueError, match="unknown pretraining run"):
        _study(recipes=[{"name": "h", "kind": "head", "pretrained": "nope"}])
    with pytest.raises(ValueError, match="unknown key"):
        _study(extra=1)
    with pytest.raises(ValueError, match="needs 'pretrained"):
        _study(recipes=[{"name": "f", "kind": "full"}])


def test_leakage_detected(tmp_path):
    st = _study(
        pretrain={"pre": {"config": {"data": {"datasets": ["mp-elastic-2024"], "targets": ["elastic_tensor"]}}}},
        targets={"k": {"data": {"datasets": ["dejong-elastic-2015"], "targets": ["log10_bulk_modulus_vrh"]}, "sizes": [5]}},
    )
    runner = StudyRunner(st, tmp_path)
    runner.pretrained["pre"] = {"checkpoint": "x", "targets": ["elastic_tensor"], "ids": {"mp-1", "mp-2"}}
    split = {"pool": ["mp-3"], "val": ["mp-4"], "test": ["mp-2", "mp-5"]}
    with pytest.raises(LeakageError, match="1 test material"):
        runner.check_leakage(st.targets[0], split)
    split["test"] = ["mp-5"]
    runner.check_leakage(st.targets[0], split)  # no overlap: fine
    # the fine-tuning label itself in the pretraining targets is refused outright
    runner.pretrained["pre"]["targets"] = ["log10_bulk_modulus_vrh"]
    with pytest.raises(LeakageError, match="exclude the fine-tuning property"):
        runner.check_leakage(st.targets[0], split)


def test_report_renders_tables_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for recipe, scale in (("scratch", 1.0), ("head", 1.3), ("full", 0.7)):
        for size in (10, 100):
            for seed in range(3):
                rows.append({"target": "diel", "recipe": recipe, "kind": recipe, "size": size, "seed": seed,
                             "status": "ok", "wall_time_s": 1.0, "trainable_params": 10,
                             "dielectric_total.n": 20,
                             "dielectric_total.mae_voigt": scale * (2.0 / np.sqrt(size)) * (1 + 0.01 * rng.normal()),
                             "dielectric_total.fnorm_rel": 0.3})
    rows.append({"target": "diel", "recipe": "head", "kind": "head", "size": 10, "seed": 9, "status": "failed",
                 "error": "ValueError: boom", "wall_time_s": 0.1})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    # a parity source for the best cell
    cell = tmp_path / "cells" / "diel" / "full" / "n100" / "seed0"
    cell.mkdir(parents=True)
    (cell / "test_predictions.json").write_text(json.dumps(
        {"dielectric_total": {"ids": ["a"], "pred": [np.eye(3).tolist()], "true": [(1.1 * np.eye(3)).tolist()]}}))
    path = write_report(tmp_path, _study())
    text = path.read_text()
    assert "| full |" in text and "Ratio to scratch" in text
    assert "Transfer helped: full" in text and "Transfer hurt (worse than scratch): head" in text
    assert "boom" in text
    for png in ("learning_curve_diel_dielectric_total.png", "bars_diel_dielectric_total.png", "parity_dielectric_total.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_verdict():
    assert verdict(1.0, 0.01, 2.0, 0.01) == "better"
    assert verdict(2.0, 0.01, 1.0, 0.01) == "worse"
    assert verdict(1.0, 0.5, 1.1, 0.5) == "within noise"


def test_pretraining_runs_can_import_third_party_weights(tmp_path):
    from matxfer.paths import pretrained_dir

    if not (pretrained_dir() / "cgcnn" / "formation-energy-per-atom.pth.tar").is_file():
        pytest.skip(f"original CGCNN checkpoints not found under {pretrained_dir()}")
    st = _study(pretrain={"pre": {"import": "cgcnn:formation-energy-per-atom"}})
    runner = StudyRunner(st, tmp_path)
    info = runner.pretrain_one(st.pretrain[0])
    ckpt = tmp_path / "pretrain" / "pre" / "model.ckpt"
    assert info["checkpoint"] == str(ckpt) and ckpt.is_file()
    assert info["targets"] == ["formation_energy_per_atom"]
    mtime = ckpt.stat().st_mtime_ns
    assert runner.pretrain_one(st.pretrain[0])["checkpoint"] == str(ckpt)
    assert ckpt.stat().st_mtime_ns == mtime  # converted once
    with pytest.raises(ValueError, match="import"):
        _study(pretrain={"pre": {"import": "megnet:eform"}})
    with pytest.raises(ValueError, match="exactly one"):
        _study(pretrain={"pre": {"import": "cgcnn:band-gap", "checkpoint": "x.ckpt"}})
    missing = _study(pretrain={"pre": {"import": "cgcnn:no-such-model"}})
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        StudyRunner(missing, tmp_path / "m").pretrain_one(missing.pretrain[0])


def test_target_task_settings_reach_its_cells_only(tmp_path):
    from matxfer.config import config_from_dict

    st = _study(targets={
        "eps": {"data": {"datasets": ["petousis-dielectric-2017"], "targets": ["dielectric_total"]},
                "sizes": [10], "tasks": {"dielectric_total": {"parameterization": "log_isotropic"}}},
        "gap": {"data": {"datasets": ["petousis-dielectric-2017"], "targets": ["band_gap"]}, "sizes": [10]},
    })
    runner = StudyRunner(st, tmp_path)
    eps, gap = st.targets
    raw = runner.cell_raw(eps, st.recipes[0], 10, 0, tmp_path / "cell")
    assert raw["tasks"] == {"dielectric_total": {"parameterization": "log_isotropic"}}
    assert config_from_dict(raw).tasks["dielectric_total"].parameterization == "log_isotropic"
    assert "tasks" not in runner.cell_raw(gap, st.recipes[0], 10, 0, tmp_path / "cell2")
    with pytest.raises(ValueError, match="unknown key"):
        _study(targets={"g": {"data": {}, "sizes": [1], "task": {}}})


def test_recipe_head_applies_to_every_label_of_its_cells(tmp_path):
    st = _study(recipes=[{"name": "head", "kind": "head", "pretrained": "pre",
                          "head": {"name": "tensor-product", "mul": 4}}])
    runner = StudyRunner(st, tmp_path)
    runner.pretrained = {"pre": {"checkpoint": "pre.ckpt"}}
    raw = runner.cell_raw(st.targets[0], st.recipes[1], 10, 0, tmp_path / "c")
    assert raw["model"]["heads"] == {"band_gap": {"name": "tensor-product", "mul": 4}}
    assert "heads" not in runner.cell_raw(st.targets[0], st.recipes[0], 10, 0, tmp_path / "d").get("model", {})
    with pytest.raises(ValueError, match="head must be"):
        _study(recipes=[{"name": "h", "kind": "head", "pretrained": "pre", "head": "tensor"}])


@pytest.mark.parametrize(
    "over, message",
    [
        ({"seeds": "abc"}, "seeds: expected a number of seeds >= 1 or a non-empty list of integers, got 'abc'"),
        ({"seeds": [0, 1.5]}, "seeds: expected"),
        ({"seeds": 0}, "seeds: expected"),
        ({"targets": {"gap": {"data": {"datasets": ["petousis-dielectric-2017"]}, "sizes": 10}}},
         "targets.gap.sizes: expected a list of integers or strings (training-set sizes >= 1 or 'all'), got 10"),
        ({"targets": {"gap": {"data": {"datasets": ["x"]}, "sizes": [10, "most"]}}},
         ("targets.gap.sizes: expected a list of integers or strings (training-set sizes >= 1 or "
          "'all'), got [10, 'most']")),
        ({"targets": {"gap": {"data": {"datasets": ["x"]}, "sizes": [10], "test_fraction": "a"}}},
         "targets.gap.test_fraction: expected a number (in [0, 1)), got 'a'"),
        ({"targets": {"gap": {"data": {"datasets": ["x"]}, "sizes": [10], "test_fraction": 0.6,
                              "val_fraction": 0.5}}},
         "test_fraction + val_fraction = 1.1 leaves nothing to train on"),
        ({"recipes": [{"name": "h", "kind": "hed", "pretrained": "pre"}]},
         "recipes[0].kind: expected one of scratch, head, full, freeze:K (K >= 0), got 'hed'"),
        ({"recipes": [{"name": "h", "kind": "head", "pretrained": "pre", "overrides": "optim.lr=1"}]},
         "recipes[0].overrides: expected a list of strings, got the string 'optim.lr=1'"),
        ({"base": "x"}, "base: expected a mapping, got 'x'"),
    ],
)
def test_study_fields_are_type_checked(over, message):
    with pytest.raises(ValueError) as exc:
        _study(**over)
    assert message in str(exc.value)


def test_study_yaml_syntax_error(tmp_path):
    from matxfer.study.config import load_study

    p = tmp_path / "s.yaml"
    p.write_text("name: s\ntargets: [a,\n")
    with pytest.raises(ValueError, match=r"s.yaml: not valid YAML \(line \d+, column \d+"):
        load_study(p)


def test_recipe_head_per_label(tmp_path):
    st = _study(recipes=[{"name": "head", "kind": "head", "pretrained": "pre",
                          "head": {"piezo_tensor": {"name": "tensor-product"}}}])
    runner = StudyRunner(st, tmp_path)
    runner.pretrained = {"pre": {"checkpoint": "pre.ckpt"}}
    raw = runner.cell_raw(st.targets[0], st.recipes[1], 10, 0, tmp_path / "c")
    assert not raw.get("model", {}).get("heads")  # band_gap keeps its default head
    with pytest.raises(ValueError, match="mapping from label"):
        _study(recipes=[{"name": "h", "kind": "head", "pretrained": "pre", "head": {"x": 1}}])


def test_bad_recipe_override_fails_before_anything_is_pretrained(tmp_path, monkeypatch):
    st = _study(recipes=[{"name": "head", "kind": "head", "pretrained": "pre",
                          "overrides": ["optim.epochs=abc"]}])
    runner = StudyRunner(st, tmp_path)
    pretrained = []
    monkeypatch.setattr(runner, "pretrain_one", lambda spec: pretrained.append(spec) or {})
    with pytest.raises(ValueError, match=r"recipe 'head' on target 'gap'.*optim\.epochs.*abc"):
        runner.run(progress=False)
    assert pretrained == []
    good = StudyRunner(_study(), tmp_path / "good")
    good.check_cell_configs()  # a valid study passes
    assert good.pretrained == {}
