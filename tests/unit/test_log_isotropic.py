"""The scale-aware (log-isotropic) tensor parameterisation: exact inverse, equivariance,
fitted statistics, and a model that round-trips through a checkpoint with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3

from matxfer.normalize import LogIsotropicNormalizer
from matxfer.tasks import make_task
from matxfer.tensors import elastic_moduli, rotate, voigt_to_cartesian


def _dielectric(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 3, 3, generator=g)
    return a @ a.transpose(1, 2) * torch.logspace(0, 2, n).reshape(-1, 1, 1) + torch.eye(3)


def _elastic(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = rng.standard_normal((6, 6))
        out.append(voigt_to_cartesian(a @ a.T * 10 + np.eye(6) * 80, rank=4))
    return torch.tensor(np.array(out))


@pytest.mark.parametrize("formula,make", [("ij=ji", _dielectric), ("ijkl=jikl=klij", _elastic)])
def test_exact_inverse_and_rotation_equivariance(f64, formula, make):
    norm = LogIsotropicNormalizer(formula)
    t = make(6)
    norm.fit(t)
    x = norm.from_cartesian(t)
    torch.testing.assert_close(norm.to_cartesian(x), t, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(norm.to_cartesian(norm.denormalize(norm.normalize(x))), t,
                               rtol=1e-10, atol=1e-10)
    for r in (o3.rand_matrix(), -o3.rand_matrix()):
        xr = norm.from_cartesian(torch.stack([rotate(a, r) for a in t]))
        # the log-moduli are invariant; the relative anisotropy transforms like the irreps
        torch.testing.assert_close(xr[:, norm.zero_idx], x[:, norm.zero_idx], rtol=1e-10, atol=1e-10)
        back = norm.to_cartesian(xr)
        torch.testing.assert_close(back, torch.stack([rotate(a, r) for a in t]), rtol=1e-9, atol=1e-9)


def test_isotropic_coordinates_are_log_moduli(f64):
    norm = LogIsotropicNormalizer("ijkl=jikl=klij")
    c = _elastic(3)
    x = norm.from_cartesian(c)
    for i in range(3):
        m = elastic_moduli(c[i].numpy())
        np.testing.assert_allclose(np.exp(x[i, norm.zero_idx].numpy()), [m["k_voigt"], m["g_voigt"]], rtol=1e-8)
    eps = _dielectric(3)
    nd = LogIsotropicNormalizer("ij=ji")
    xd = nd.from_cartesian(eps)
    np.testing.assert_allclose(np.exp(xd[:, 0].numpy()), torch.diagonal(eps, dim1=1, dim2=2).mean(1).numpy())
    # the fitted mean of the log-modulus is the mean log mean-eigenvalue
    nd.fit(eps)
    assert float(nd.mean[0]) == pytest.approx(float(xd[:, 0].mean()))
    assert float(nd.scale[1]) > 0


def test_only_dielectric_and_elastic_tensors_take_it():
    assert make_task("dielectric_total", parameterization="log_isotropic").parameterization == "log_isotropic"
    with pytest.raises(ValueError, match="log_isotropic"):
        make_task("piezo_tensor", parameterization="log_isotropic")
    with pytest.raises(ValueError, match="parameterization"):
        make_task("dielectric_total", parameterization="sqrt")


def test_model_with_log_isotropic_round_trips_through_a_checkpoint(tmp_path, nacl, zno):
    from torch_geometric.data import Batch

    from matxfer.checkpoint import (
        build_checkpoint,
        load_checkpoint,
        model_from_checkpoint,
        save_checkpoint,
    )
    from matxfer.data.graphs import GraphSettings, structure_to_graph
    from matxfer.models.registry import build_model

    task = make_task("dielectric_total", parameterization="log_isotropic")
    model = build_model(
        {"backbone": {"name": "equivariant", "n_layers": 1,
                      "hidden_irreps": "4x0e+2x1o+2x1e+1x2e+1x2o"},
         "heads": {"dielectric_total": {"name": "tensor", "formula": "ij=ji"}}},
        {task.name: task},
    )
    assert isinstance(model.normalizers[task.name], LogIsotropicNormalizer)
    model.normalizers[task.name].fit(_dielectric(8))
    settings = GraphSettings(cutoff=5.0)
    batch = Batch.from_data_list([structure_to_graph(s, settings) for s in (nacl, zno)])
    model.eval()
    a = model.predict(batch)[task.name].detach()
    path = save_checkpoint(build_checkpoint(model, {task.name: task}, settings.to_dict(), None, None), tmp_path / "m.ckpt")
    m2, tasks2 = model_from_checkpoint(load_checkpoint(path))
    assert tasks2[task.name].parameterization == "log_isotropic"
    m2.eval()
    torch.testing.assert_close(m2.predict(batch)[task.name].detach(), a)
    # a positive mean eigenvalue by construction
    assert (torch.diagonal(a, dim1=1, dim2=2).mean(1) > 0).all()
