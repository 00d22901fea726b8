"""Energies and forces through the whole pipeline: EMT data -> matxfer train -> evaluate/predict."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from e3nn import o3

from matxfer.config import config_from_dict
from matxfer.predict import Predictor
from matxfer.train.loop import fit

TINY_LF = {"name": "local-frame", "width": 16, "n_layers": 1, "n_frames": 2}


def _train(tmp_path, forces_head, epochs=6):
    raw = {
        "name": "emt",
        "out": str(tmp_path / "emt"),
        "data": {"datasets": ["emt-metals"], "targets": ["energy_per_atom", "forces"], "limit": 48,
                 "split": {"fractions": [0.75, 0.125, 0.125]}},
        "graph": {"cutoff": 4.0},
        "model": {"backbone": TINY_LF,
                  "heads": {"energy_per_atom": {"name": "energy", "reduce": "mean"}, "forces": forces_head}},
        "optim": {"epochs": epochs, "batch_size": 8, "patience": 0, "lr": 3e-3},
        "trainer": {"progress": False},
    }
    return fit(config_from_dict(raw))


def _losses(res):
    with open(res.out_dir / "logs" / "metrics.csv") as fh:
        return [float(r["train_loss"]) for r in csv.DictReader(fh) if r.get("train_loss")]


@pytest.fixture(scope="module")
def emt_structures(tmp_path_factory):
    """A few EMT cells (the dataset is generated on first use)."""
    from matxfer.data.registry import load_dataset

    return [r.structure for r in load_dataset("emt-metals", limit=60).records if len(r.structure) <= 8][:3]


@pytest.mark.parametrize("forces_head", [
    {"name": "direct-forces", "cutoff": 4.0},
    {"name": "conservative-forces", "energy": "energy_per_atom"},
], ids=["direct", "conservative"])
def test_energy_and_force_training(tmp_path, forces_head, emt_structures):
    res = _train(tmp_path, forces_head)
    losses = _losses(res)
    assert losses[-1] < losses[0], losses
    test = res.metrics["test"]
    assert test["forces"]["n"] > 0 and test["forces"]["n_structures"] == 6
    assert np.isfinite(test["forces"]["mae"]) and np.isfinite(test["energy_per_atom"]["mae"])
    ck = torch.load(res.checkpoint, weights_only=True)
    assert ck["tasks"]["forces"]["kind"] == "forces" and ck["tasks"]["forces"]["units"] == "eV/Angstrom"

    pred = Predictor.from_checkpoint(res.checkpoint)
    s = emt_structures[0]
    out = pred.predict_structures([s])[0]
    f = np.array(out["forces"]["per_atom"])
    assert f.shape == (len(s), 3)
    # forces rotate with the crystal (improper rotation included), the energy does not change
    torch.manual_seed(3)
    R = o3.rand_matrix().double().numpy()
    R[:, 0] *= -1
    rs = s.copy()
    rs.lattice = type(s.lattice)(s.lattice.matrix @ R.T)
    out_r = pred.predict_structures([rs])[0]
    np.testing.assert_allclose(np.array(out_r["forces"]["per_atom"]), f @ R.T, atol=2e-4)
    assert out_r["energy_per_atom"] == pytest.approx(out["energy_per_atom"], abs=1e-4)
    if forces_head["name"] == "conservative-forces":
        # F = -dE/dx: compare with a central finite difference of the predicted cell energy
        h, atom, axis = 1e-3, 0, 1
        plus, minus = s.copy(), s.copy()
        plus.translate_sites([atom], [h if a == axis else 0 for a in range(3)], frac_coords=False)
        minus.translate_sites([atom], [-h if a == axis else 0 for a in range(3)], frac_coords=False)
        e_p, e_m = (pred.predict_structures([x])[0]["energy_per_atom"] * len(s) for x in (plus, minus))
        assert -(e_p - e_m) / (2 * h) == pytest.approx(f[atom, axis], abs=5e-3, rel=5e-2)
    else:  # direct forces of an uncapped (symmetric) graph balance exactly
        assert np.abs(f.sum(0)).max() < 1e-4


def test_conservative_head_needs_its_energy_task():
    from matxfer.models.registry import build_model
    from matxfer.tasks import make_task

    tasks = {"forces": make_task("forces")}
    with pytest.raises(ValueError, match="energy_per_atom"):
        build_model({"backbone": TINY_LF, "heads": {"forces": {"name": "conservative-forces"}}}, tasks)
