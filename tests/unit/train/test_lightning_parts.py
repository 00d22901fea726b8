"""The Lightning pieces of training: schedule, data module, checkpoint plugin, logged metrics."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from matxfer.train.lightning import GraphDataModule, MatxferCheckpointIO, warmup_cosine


def _rates(total: int, warm: int, budgeted: bool = False, mults=(1.0, 0.1)) -> list[list[float]]:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in mults]
    opt = torch.optim.AdamW([{"params": [p], "lr": 0.01 * m} for p, m in zip(params, mults)], lr=0.01)
    sched = warmup_cosine(opt, total, warm, budgeted)
    rates = []
    for _ in range(total):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return rates


def test_warmup_then_cosine_per_group():
    total, warm = 40, 8
    rates = _rates(total, warm)
    for step, (lr, lr_low) in enumerate(rates):
        if step < warm:
            expect = 0.01 * (step + 1) / (warm + 1)  # linear ramp from 1 / (warm + 1)
        else:
            expect = 0.01 * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        assert lr == pytest.approx(expect, rel=1e-6, abs=1e-12), step
        assert lr_low == pytest.approx(0.1 * lr, rel=1e-6, abs=1e-12)  # each group its own rate
    assert max(r[0] for r in rates) == pytest.approx(0.01)
    assert rates[-1][0] < 0.01 * 0.01  # decays to (nearly) zero at the end


def test_budgeted_run_caps_the_warm_up_at_5_percent():
    rates = _rates(100, 50, budgeted=True)
    peak = max(range(100), key=lambda i: rates[i][0])
    assert peak == 5


def test_no_warm_up_starts_at_the_full_rate():
    rates = _rates(10, 0)
    assert rates[0][0] == pytest.approx(0.01)


def test_data_module_returns_one_loader_and_checks_the_sampler():
    from matxfer.data.graphs import new_graph

    graphs = [new_graph({"x": torch.zeros(1, 1), "y": torch.tensor([float(i)])}) for i in range(6)]
    dm = GraphDataModule(graphs, graphs[:2], {}, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert dm.train_dataloader() is dm.train_dataloader()  # one generator, one loader
    assert len(dm.train_dataloader()) == 2 and len(dm.val_dataloader()) == 1
    with pytest.raises(ValueError, match="data.sampler='random'"):
        GraphDataModule(graphs, graphs, {}, batch_size=4, sampler="random")


def test_checkpoint_plugin_writes_the_matxfer_format(tmp_path):
    from matxfer.checkpoint import load_checkpoint

    seen = []

    def build(epoch):
        seen.append(epoch)
        return {"format_version": 1, "state_dict": {"w": torch.ones(2)}, "metrics": {"epoch": epoch}}

    io = MatxferCheckpointIO(build)
    io.save_checkpoint({"epoch": 3, "state_dict": {}}, tmp_path / "best.ckpt")
    assert seen == [3]
    raw = torch.load(tmp_path / "best.ckpt", weights_only=True)  # plain data
    assert raw["metrics"] == {"epoch": 3}
    io.remove_checkpoint(tmp_path / "best.ckpt")
    assert not (tmp_path / "best.ckpt").exists()
    with pytest.raises(FileNotFoundError, match="best.ckpt: file not found"):
        load_checkpoint(tmp_path / "best.ckpt")


def test_fit_logs_validation_mae_in_physical_units(tmp_path):
    """``val_mae/<task>`` in the CSV log is the MAE of the physical-unit predictions: the
    final epoch's value equals the validation MAE that evaluate computes on best weights
    when the last epoch is the best one, and is in eV/atom, not in normalised units."""
    from matxfer.config import config_from_dict
    from matxfer.train.loop import fit

    raw = {
        "name": "val-mae",
        "out": str(tmp_path / "run"),
        "data": {"datasets": ["emt-metals"], "targets": ["energy_per_atom"], "limit": 24,
                 "split": {"fractions": [0.6, 0.2, 0.2]}},
        "model": {"backbone": {"name": "cgcnn", "width": 8, "n_conv": 1},
                  "heads": {"energy_per_atom": {"name": "scalar", "hidden": [8]}}},
        "optim": {"epochs": 3, "batch_size": 4, "lr": 1e-3, "patience": 0, "warmup_epochs": 0},
        "trainer": {"progress": False},
    }
    res = fit(config_from_dict(raw))
    with open(res.out_dir / "logs" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val_mae/energy_per_atom")]
    assert len(rows) == 3
    maes = [float(r["val_mae/energy_per_atom"]) for r in rows]
    assert all(m > 0 and math.isfinite(m) for m in maes)
    best = min(range(3), key=lambda i: float(rows[i]["val_loss"]))
    assert res.best_epoch == best
    # the model.ckpt weights are the best epoch's, and its validation MAE is that epoch's
    assert res.metrics["val"]["energy_per_atom"]["mae"] == pytest.approx(maes[best], rel=1e-4)
