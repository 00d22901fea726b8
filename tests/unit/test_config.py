import pytest

from matxfer.config import apply_overrides, config_from_dict, load_config, to_dict


def test_yaml_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "name: x\ndata: {datasets: [flla-2015], targets: [formation_energy_per_atom]}\n"
        "model: {backbone: {name: cgcnn}}\noptim: {lr: 0.01}\n"
    )
    cfg = load_config(p, ["optim.lr=1e-3", "model.backbone.n_conv=2", "data.split.seed=4", "optim.lr_mult.backbone=0.1"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.model["backbone"] == {"name": "cgcnn", "n_conv": 2}
    assert cfg.data.split.seed == 4
    assert cfg.optim.lr_mult == {"backbone": 0.1}
    again = config_from_dict(to_dict(cfg))
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"optim": {"lr_rate": 1}}, r"unknown key\(s\) \['lr_rate'\] in optim"),
        ({"data": {"split": {"frac": 1}}}, r"in data.split"),
        ({"bogus": 1}, r"unknown key"),
        ({"model": {"backbone": {"name": "cgcnn"}, "head": {}}}, r"in model"),
        ({"tasks": {"band_gap": {"wieght": 2}}}, r"tasks.band_gap"),
    ],
)
def test_unknown_keys_are_errors(raw, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(raw)


def test_bad_override():
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["optim.lr"])


# ---------------------------------------------------------------- type and range checks


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.epochs=abc", "optim.epochs: expected an integer (>= 1), got 'abc'"),
        ("optim.epochs=2.5", "optim.epochs: expected an integer (>= 1), got 2.5"),
        ("optim.epochs=0", "optim.epochs: expected an integer (>= 1), got 0"),
        ("data.split.fractions=[0.5,0.1]",
         ("data.split.fractions: expected 3 fractions (train, val, test), each in [0, 1], "
          "summing to 1, got [0.5, 0.1]")),
        ("data.split.fractions=[0.9,0.5,0.5]", "summing to 1, got [0.9, 0.5, 0.5] (sum 1.9)"),
        ("data.datasets=mp-elastic-2024",
         ("data.datasets: expected a list of strings, got the string 'mp-elastic-2024' "
          "(write it as a list: [mp-elastic-2024])")),
        ("trainer.deterministic=maybe", "trainer.deterministic: expected true or false, got 'maybe'"),
        ("optim.lr=abc", "optim.lr: expected a number (> 0), got 'abc'"),
        ("optim.lr=-1e-3", "optim.lr: expected a number (> 0), got '-1e-3'"),
        ("optim.lr_mult.backbone=x", "optim.lr_mult.backbone: expected a number, got 'x'"),
        ("optim.scheduler=cosin", "optim.scheduler: expected one of cosine, plateau, none, got 'cosin'"),
        ("data.limit=0", "data.limit: expected an integer or null (>= 1), got 0"),
        ("data.targets=[band_gap, 3]", "data.targets[1]: expected a string, got 3"),
        ("data.validate=1", "data.validate: expected true or false, got 1"),
        ("transfer.recipe=frz", "transfer.recipe: expected one of scratch, head, full, freeze:K"),
        ("tasks.band_gap.loss=l2", "tasks.band_gap.loss: expected one of mse, l1, huber, got 'l2'"),
        ("seed=x", "seed: expected an integer, got 'x'"),
        ("model.backbone=cgcnn", "model.backbone: expected a mapping, got 'cgcnn'"),
        ("optim.lr=[1,", "override 'optim.lr=[1,': the value is not valid YAML (line 1, column 4"),
    ],
)
def test_wrong_types_and_ranges_are_one_line_errors(override, message):
    with pytest.raises(ValueError) as exc:
        load_config(None, [override])
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_right_values_are_read_as_their_types():
    cfg = load_config(None, ["optim.lr=1e-3", "optim.epochs=3", "data.split.fractions=[0.8,0.2,0]",
                             "data.split.sizes=[10,null,5]", "trainer.precision=16",
                             "transfer.recipe=freeze:2", "optim.weight_decay=0"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.weight_decay, float)
    assert cfg.data.split.fractions == (0.8, 0.2, 0.0) and cfg.data.split.sizes == (10, None, 5)
    assert cfg.trainer.precision == 16 and cfg.transfer.recipe == "freeze:2"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\noptim: {lr: 0.01\nseed: 1\n")
    with pytest.raises(ValueError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: not valid YAML (line ") and "\n" not in msg


def test_a_string_where_a_list_belongs_in_a_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {datasets: mp-elastic-2024, targets: [elastic_tensor]}\n")
    with pytest.raises(ValueError, match=r"data.datasets: expected a list of strings, got the string"):
        load_config(p)


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    from matxfer.cli import main

    p = tmp_path / "c.yaml"
    p.write_text("data: {datasets: [flla-2015], targets: [formation_energy_per_atom]}\n")
    assert main(["train", str(p), "optim.epochs=abc", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "matxfer: error: optim.epochs: expected an integer (>= 1), got 'abc'"


@pytest.mark.parametrize(
    "override, message",
    [
        ("tasks.dielectric_total.parameterization=log", "one of linear, log_isotropic"),
        ("tasks.dielectric_total.weighting=inverse", "one of none, relative"),
        ("optim.budget_min=0", "> 0"),
        ("trainer.symprec=-1", "> 0"),
    ],
)
def test_tensor_task_and_budget_options_are_checked(tmp_path, override, message):
    from matxfer.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text("data: {datasets: [petousis-dielectric-2017], targets: [dielectric_total]}\n")
    with pytest.raises(ValueError, match=message):
        load_config(p, [override])
    assert load_config(p, ["trainer.symprec=null"]).trainer.symprec is None
