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
