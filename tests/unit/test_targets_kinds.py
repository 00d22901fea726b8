"""The target table and the kind classes: one place for what each label is and how it behaves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matxfer.kinds import KINDS, kind_of
from matxfer.normalize import (
    IrrepsNormalizer,
    LogIsotropicNormalizer,
    ScalarNormalizer,
    VectorNormalizer,
)
from matxfer.targets import (
    ATOM_TENSOR,
    FORCES,
    PROPERTY_FAMILIES,
    SCALAR,
    TARGET_FORMULAS,
    TARGET_SHAPES,
    TARGETS,
    TENSOR,
    TargetSpec,
    target_spec,
)
from matxfer.tasks import make_task


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_is_consistent(name):
    t = TARGETS[name]
    task = make_task(name)
    assert (task.kind, task.formula, task.units) == (t.kind, t.formula, t.units)
    if t.kind == SCALAR:
        assert t.shape == () and t.rank == 0
    else:
        assert len(t.shape) - (1 if t.per_atom else 0) == t.rank  # one 3 per index
        assert all(d == 3 for d in t.shape[1 if t.per_atom else 0:])
        assert (t.shape[0] == -1) == t.per_atom


def test_views_and_families_come_from_the_table():
    assert TARGET_FORMULAS["elastic_tensor"] == "ijkl=jikl=klij"
    assert TARGET_SHAPES["born_charges"] == (-1, 3, 3)
    fams = {target_spec(n).family for n in ("elastic_tensor", "bulk_modulus_vrh", "log10_shear_modulus_vrh")}
    assert fams == {"elastic"}
    assert PROPERTY_FAMILIES["eij_max"] == "piezo" and "band_gap" not in PROPERTY_FAMILIES
    unknown = target_spec("my_own_label")
    assert (unknown.kind, unknown.units, unknown.family) == (SCALAR, "", "my_own_label")


def test_a_bad_spec_is_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        TargetSpec("x", "matrix")
    with pytest.raises(ValueError, match="formula goes with tensor kinds"):
        TargetSpec("x", SCALAR, formula="ij=ji")
    with pytest.raises(ValueError, match="unknown target kind 'matrix'"):
        kind_of("matrix")


@pytest.mark.parametrize(
    "kind, formula, value, n, shape, mask",
    [
        (SCALAR, None, 1.5, 4, (1,), (1,)),
        (TENSOR, "ij=ji", np.eye(3), 4, (1, 3, 3), (1,)),
        (TENSOR, "ijk=ikj", np.zeros((3, 3, 3)), 2, (1, 3, 3, 3), (1,)),
        (ATOM_TENSOR, "ij", np.ones((4, 3, 3)), 4, (4, 3, 3), (4,)),
        (FORCES, None, np.ones((4, 3)), 4, (4, 3), (4,)),
    ],
)
def test_graph_label_layout_and_mask(kind, formula, value, n, shape, mask):
    k = kind_of(kind)
    val, m = k.graph_label(value, n, formula, torch.float64)
    assert tuple(val.shape) == shape and tuple(m.shape) == mask and bool(m.all())
    np.testing.assert_allclose(val.numpy().reshape(np.shape(value)), value)
    empty, m0 = k.graph_label(None, n, formula, torch.float64)
    assert tuple(empty.shape) == shape and not bool(m0.any()) and float(empty.abs().sum()) == 0.0


def test_normalisers_and_default_losses_per_kind():
    assert isinstance(kind_of(SCALAR).normalizer(), ScalarNormalizer)
    assert isinstance(kind_of(FORCES).normalizer(), VectorNormalizer)
    assert isinstance(kind_of(TENSOR).normalizer("ij=ji"), IrrepsNormalizer)
    assert isinstance(kind_of(TENSOR).normalizer("ijkl=jikl=klij", "log_isotropic"), LogIsotropicNormalizer)
    with pytest.raises(ValueError, match="needs a formula"):
        kind_of(TENSOR).normalizer(None)
    assert {k: v.default_loss for k, v in KINDS.items()} == {
        SCALAR: "mse", TENSOR: "l1", ATOM_TENSOR: "l1", FORCES: "mse"}


def test_normalised_target_round_trips_for_every_kind():
    rng = np.random.default_rng(0)
    cases = [(SCALAR, None, rng.normal(size=(5,))), (FORCES, None, rng.normal(size=(5, 3))),
             (TENSOR, "ij=ji", np.stack([np.eye(3) * (1 + i) for i in range(5)]))]
    for kind, formula, y in cases:
        k = kind_of(kind)
        norm = k.normalizer(formula).double()
        values = [y] if k.per_atom else list(y)  # per-atom labels: one [n_atoms, ...] per crystal
        norm.fit(k.fit_values(values, torch.float64))
        z = k.normalized(norm, torch.as_tensor(y))
        back = norm.denormalize(z)
        if hasattr(norm, "to_cartesian"):
            back = norm.to_cartesian(back)
        np.testing.assert_allclose(back.numpy(), y, atol=1e-10)
