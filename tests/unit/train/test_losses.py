"""Per-entry losses: defaults by task kind, irrep-block norms, rotation invariance."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from matxfer.normalize import IrrepsNormalizer
from matxfer.tasks import make_task
from matxfer.tensors import rotate
from matxfer.train.losses import entry_loss


def test_default_loss_is_mse_for_scalars_and_l1_for_tensors():
    assert make_task("band_gap").loss == "mse"
    assert make_task("piezo_tensor").loss == "l1"
    assert make_task("born_charges").loss == "l1"
    assert make_task("elastic_tensor", loss="huber").loss == "huber"
    with pytest.raises(ValueError, match="unknown loss"):
        make_task("band_gap", loss="cross-entropy")


def test_l1_on_a_rank2_tensor_is_the_mean_of_the_block_norms():
    torch.manual_seed(0)
    task = make_task("dielectric_total")  # ij=ji -> 0e + 2e: two blocks
    pred, true = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    got = entry_loss(task, pred, true)
    err = pred - true
    want = 0.5 * (err[:, 0].abs() + err[:, 1:].norm(dim=1))
    torch.testing.assert_close(got, want)
    mse = entry_loss(make_task("dielectric_total", loss="mse"), pred, true)
    torch.testing.assert_close(mse, (err**2).mean(dim=1))
    with pytest.raises(ValueError, match="irreps components"):
        entry_loss(task, pred[:, :5], true[:, :5])


@pytest.mark.parametrize("target", ["dielectric_total", "piezo_tensor", "elastic_tensor"])
@pytest.mark.parametrize("loss", ["mse", "l1", "huber"])
def test_tensor_losses_do_not_depend_on_the_crystal_orientation(target, loss):
    torch.manual_seed(1)
    task = make_task(target, loss=loss)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the change of basis in float64
    try:
        norm = IrrepsNormalizer(task.formula)
    finally:
        torch.set_default_dtype(old)
    shape = (4,) + (3,) * task.rank
    a = torch.randn(shape, dtype=torch.float64)
    b = torch.randn(shape, dtype=torch.float64)
    # symmetrise into the formula's subspace
    a, b = norm.to_cartesian(norm.from_cartesian(a)), norm.to_cartesian(norm.from_cartesian(b))
    before = entry_loss(task, norm.from_cartesian(a), norm.from_cartesian(b))
    R = o3.rand_matrix(dtype=torch.float64)
    ra = torch.stack([rotate(x, R) for x in a])
    rb = torch.stack([rotate(x, R) for x in b])
    after = entry_loss(task, norm.from_cartesian(ra), norm.from_cartesian(rb))
    torch.testing.assert_close(before, after, rtol=1e-10, atol=1e-12)


def test_block_loss_has_a_finite_gradient_at_zero_error():
    task = make_task("dielectric_total")
    pred = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)
    entry_loss(task, pred, torch.zeros(2, 6, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(pred.grad).all()


# --- loss options for heavy-tailed and polar tensor labels ------------------------------------


class _Model:
    """The two attributes task_losses reads: normalisers (identity here)."""

    def __init__(self, task):
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            self.normalizers = {task.name: IrrepsNormalizer(task.formula)}
        finally:
            torch.set_default_dtype(old)


def _batch(task, y):
    from matxfer.keys import label_key, mask_key

    return {label_key(task.name): y, mask_key(task.name): torch.ones(len(y), dtype=torch.bool)}


def test_relative_weighting_scores_relative_error():
    from matxfer.train.losses import task_losses

    torch.manual_seed(2)
    task = make_task("piezo_tensor", weighting="relative", relative_floor=1e-6)
    model = _Model(task)
    norm = model.normalizers[task.name]
    y = norm.to_cartesian(torch.randn(1, 18, dtype=torch.float64))
    dp = norm.to_cartesian(0.1 * torch.randn(1, 18, dtype=torch.float64))
    # a crystal ten times larger with a ten times larger error has the same relative loss
    small = task_losses(model, {task.name: task}, {task.name: norm.from_cartesian(y + dp)}, _batch(task, y))
    big = task_losses(model, {task.name: task}, {task.name: norm.from_cartesian(10 * (y + dp))},
                      _batch(task, 10 * y))
    torch.testing.assert_close(small[task.name], big[task.name])
    plain = make_task("piezo_tensor")
    b = task_losses(model, {task.name: plain}, {task.name: norm.from_cartesian(10 * (y + dp))},
                    _batch(task, 10 * y))
    torch.testing.assert_close(b[task.name], 10 * task_losses(
        model, {task.name: plain}, {task.name: norm.from_cartesian(y + dp)}, _batch(task, y))[task.name])


def test_sign_agnostic_loss_scores_the_better_of_y_and_minus_y():
    from matxfer.train.losses import task_losses

    torch.manual_seed(3)
    task = make_task("piezo_tensor", sign_agnostic=True)
    model = _Model(task)
    y = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    y = model.normalizers[task.name].to_cartesian(model.normalizers[task.name].from_cartesian(y))
    pred = model.normalizers[task.name].from_cartesian(-y)  # exactly the opposite polarity
    got = task_losses(model, {task.name: task}, {task.name: pred}, _batch(task, y))[task.name]
    assert float(got) < 1e-5
    normal = make_task("piezo_tensor")
    assert float(task_losses(model, {task.name: normal}, {task.name: pred}, _batch(task, y))[task.name]) > 0.1
    with pytest.raises(ValueError, match="odd-rank"):
        make_task("dielectric_total", sign_agnostic=True)
    with pytest.raises(ValueError, match="weighting"):
        make_task("piezo_tensor", weighting="inverse")
