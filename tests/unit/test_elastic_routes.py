"""The elastic route configs: each loads, all name the same split and a budget, each header
names its command, and the README's elastic numbers cite them; the benchmark's log parsing."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from matxfer.config import load_config

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ROOT / "configs" / "elastic_routes"
EXPECTED = {
    "scratch_equivariant", "sevennet_product", "chgnet_edge", "sevennet_freeze",
    "cgcnn_log10_kvrh", "cgcnn_attention_log10_kvrh",
}
CONFIGS = sorted(ROUTES.glob("*.yaml"))


def _bench():
    spec = importlib.util.spec_from_file_location(
        "accuracy_elastic", ROOT / "benchmarks" / "accuracy_elastic.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_route_has_a_config():
    assert {p.stem for p in CONFIGS} == EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_route_config_loads_with_the_shared_split_and_a_budget(path):
    cfg = load_config(path)
    assert cfg.data.datasets == ["mp-elastic-2024"]
    split = cfg.data.split
    assert tuple(split.fractions) == (0.8, 0.1, 0.1)
    assert split.seed == 0
    assert split.stratify == "crystal_system"
    assert split.file is None and split.sizes is None
    assert cfg.data.limit is None and cfg.data.train_size is None
    assert cfg.optim.budget_min and cfg.optim.budget_min > 0


def test_all_routes_name_one_split():
    splits = {load_config(p).data.split.model_dump_json() for p in CONFIGS}
    assert len(splits) == 1


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_header_names_the_command_and_the_parent_import(path):
    text = path.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    cfg = load_config(path)
    verb = "finetune" if cfg.transfer.init_from else "train"
    command = f"matxfer {verb} configs/elastic_routes/{path.name} --out runs/{path.stem}"
    assert command in header
    if cfg.transfer.init_from:
        kind = "sevennet" if "sevennet" in cfg.transfer.init_from else "chgnet"
        assert f"matxfer import-{kind} --out {cfg.transfer.init_from}" in header


def test_partial_finetuning_route_trains_pretrained_blocks_with_a_layerwise_lr():
    cfg = load_config(ROUTES / "sevennet_freeze.yaml")
    assert re.fullmatch(r"freeze:\d+", cfg.transfer.recipe)
    assert cfg.transfer.reinit_after_frozen is False
    assert cfg.optim.layer_decay < 1.0


def test_readme_elastic_bullet_cites_the_route_configs():
    readme = (ROOT / "README.md").read_text()
    bullets = [b for b in re.split(r"\n(?=- )", readme) if "accuracy_elastic.py" in b]
    assert len(bullets) == 1
    bullet = bullets[0]
    assert "0.051" in bullet  # the CGCNN log10 K_VRH number it states
    cited = re.findall(r"configs/elastic_routes/[\w.]+\.yaml", bullet)
    assert "configs/elastic_routes/cgcnn_log10_kvrh.yaml" in cited
    for c in cited:
        assert (ROOT / c).is_file(), f"README cites {c}, which is missing"
    assert "matxfer train configs/elastic_routes/cgcnn_log10_kvrh.yaml" in bullet


def test_benchmark_routes_are_the_config_files():
    bench = _bench()
    assert set(bench.available_routes()) == EXPECTED
    assert bench.parse_routes("cgcnn_log10_kvrh,chgnet_edge") == ["cgcnn_log10_kvrh", "chgnet_edge"]
    assert bench.parse_routes(None) == bench.available_routes()
    with pytest.raises(SystemExit, match=r"unknown route\(s\) \['nope'\]"):
        bench.parse_routes("chgnet_edge,nope")


def test_benchmark_reads_the_caching_line_that_fit_writes(tmp_path):
    bench = _bench()
    source = (ROOT / "src" / "matxfer" / "train" / "loop.py").read_text()
    fmt = re.search(r'"frozen backbone: outputs of [^"]+"', source)
    assert fmt, "the feature-caching log line of fit() changed"
    line = fmt.group(0).strip('"') % (120, 20, 100, 18.4)
    (tmp_path / "train.log").write_text("2026-01-01 INFO other\n2026-01-01 INFO matxfer: " + line + "\n")
    assert bench.read_caching(tmp_path) == {
        "crystals": 120, "reused_from_disk": 20, "computed": 100, "wall_s": 18.4}
    assert bench.read_caching(tmp_path / "none") is None


def test_benchmark_curve_takes_the_epoch_rows_and_the_offset(tmp_path):
    bench = _bench()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.csv").write_text(
        "elapsed_s,epoch,step,train_loss,val_loss,val_mae/elastic_tensor\n"
        ",0,9,1.5,,\n"
        "30.0,0,9,,1.2,9.5\n"
        "50.0,1,19,,0.8,7.25\n"
    )
    curve = bench.read_curve(tmp_path, offset_s=10.0)
    assert [r["epoch"] for r in curve] == [0, 1]
    assert [r["train_s"] for r in curve] == [20.0, 40.0]
    assert [r["val_mae/elastic_tensor"] for r in curve] == [9.5, 7.25]
    assert curve[1]["val_loss"] == 0.8
