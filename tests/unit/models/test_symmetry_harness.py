"""Every registered backbone x compatible head through the symmetry harness (matxfer.testing).

Registry-driven: a new backbone or head is picked up automatically; a backbone that cannot
be built, or a head without a case here, fails (it is not skipped). Pairs a head rejects
legitimately (an irreps-only head on an invariant backbone, a target irrep the backbone
lacks) assert the rejection message.
"""

from __future__ import annotations

import re

import pytest
import torch
from e3nn import o3
from test_models import TINY
from torch import nn

from matxfer import keys as K
from matxfer.models.base import Head, PropertyModel
from matxfer.models.registry import BACKBONES, HEADS, build_backbone, build_head, build_normalizer
from matxfer.nn.pooling import graph_index, pool
from matxfer.normalize import cartesian_basis
from matxfer.tasks import ATOM_TENSOR, FORCES, SCALAR, TENSOR, Task
from matxfer.testing import (
    CHECKS,
    assert_symmetric,
    check_symmetries,
    generic_structures,
    output_kinds,
    random_rotation,
    transform_cartesian,
)

#: small configurations: those of test_models.py plus the backbones it leaves at their
#: defaults; CHGNet keeps its pretrained 0.3.0 weights (shipped with the chgnet wheel),
#: SevenNet-0 its first two blocks
TINY_BACKBONES: dict[str, dict] = {
    **TINY,
    "local-frame": {"width": 12, "n_layers": 2, "num_radial": 6},
    "chgnet": {},
    "sevennet": {"layers": [0, 1]},
}
CRYSTAL_FORMULAS = ("ij=ji", "ijk=ikj", "ijkl=jikl=klij")
SMALL_EDGE = {"hidden": [8], "channels": 2}


def _cases(name: str) -> list[tuple[dict, Task]]:
    """(head config, task) pairs of one head name."""
    if name in ("scalar", "energy"):
        return [({"name": name}, Task("y", SCALAR))]
    if name == "direct-forces":
        return [({"name": name, "hidden": [8]}, Task("y", FORCES))]
    if name == "conservative-forces":  # needs an energy head beside it (see _model)
        return [({"name": name, "energy": "energy", "energy_is_per_atom": False},
                 Task("y", FORCES))]
    if name in ("tensor", "tensor-product", "edge-tensor"):
        extra = SMALL_EDGE if name == "edge-tensor" else {}
        return [({"name": name, "formula": f, **extra}, Task("y", TENSOR, f))
                for f in CRYSTAL_FORMULAS]
    if name == "born":
        return [({"name": name, "formula": "ij"}, Task("y", ATOM_TENSOR, "ij"))]
    if name == "edge-atom-tensor":
        return [({"name": name, "formula": f, **SMALL_EDGE}, Task("y", ATOM_TENSOR, f))
                for f in ("ij", "ij=ji")]
    raise AssertionError(
        f"head {name!r} is registered but tests/unit/models/test_symmetry_harness.py has no case for "
        "it: add one to _cases"
    )


def _pairs():
    out = []
    for bb in sorted(BACKBONES):
        for head in sorted(HEADS):
            for _k, (cfg, task) in enumerate(_cases(head)):
                label = cfg.get("formula", "")
                out.append(pytest.param(bb, cfg, task, id=f"{bb}-{head}{'-' + label if label else ''}"))
    return out


_BACKBONE_CACHE: dict[str, nn.Module] = {}


def _backbone(name: str) -> nn.Module:
    """The tiny backbone of a registered name (built once); a failure to build fails."""
    if name not in _BACKBONE_CACHE:
        torch.manual_seed(0)
        try:
            _BACKBONE_CACHE[name] = build_backbone({"name": name, **TINY_BACKBONES.get(name, {})})
        except Exception as exc:
            raise AssertionError(f"registered backbone {name!r} cannot be built: {exc!r}") from exc
    return _BACKBONE_CACHE[name]


def _expected_rejection(backbone, cfg: dict) -> str | None:
    """The message a head legitimately gives for this backbone, or None if it must build."""
    name = cfg["name"]
    spec = backbone.out_spec
    if name in ("tensor", "born", "tensor-product") and isinstance(spec, int):
        return "needs an equivariant (irreps) backbone"
    if name in ("tensor", "born"):
        have = {ir for _, ir in o3.Irreps(spec)}
        need = {ir for _, ir in cartesian_basis(cfg["formula"])[0]}
        if not need <= have:
            return "lack"
    return None


def _model(backbone, heads: dict[str, dict], tasks: dict[str, Task]) -> PropertyModel:
    torch.manual_seed(1)
    built = nn.ModuleDict({t: build_head(c, backbone.out_spec) for t, c in heads.items()})
    norms = nn.ModuleDict({t: build_normalizer(tasks[t]) for t in heads})
    return PropertyModel(backbone, built, norms, tasks)


def _single(backbone, cfg: dict, task: Task) -> PropertyModel:
    heads, tasks = {"y": cfg}, {"y": task}
    if cfg["name"] == "conservative-forces":
        heads["energy"] = {"name": "energy", "hidden": [8]}
        tasks["energy"] = Task("energy", SCALAR)
    return _model(backbone, heads, tasks)


def test_every_registered_name_is_covered():
    assert set(TINY_BACKBONES) >= set(BACKBONES), (
        f"backbones without a tiny config here: {sorted(set(BACKBONES) - set(TINY_BACKBONES))}"
    )
    for name in HEADS:
        assert _cases(name)


@pytest.mark.parametrize("package,name", [("chgnet", "chgnet"), ("sevenn", "sevennet")])
def test_installed_plugin_backbones_are_registered(package, name):
    """An adapter whose package is installed but whose module fails to import would drop out
    of the registry (and of this harness) with only a warning: fail instead."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install matxfer[{name}])")
    assert name in BACKBONES


@pytest.mark.parametrize("bb_name,cfg,task", _pairs())
def test_backbone_head_pair_is_symmetric_in_float64(bb_name, cfg, task):
    backbone = _backbone(bb_name)
    expected = _expected_rejection(backbone, cfg)
    if expected is not None:
        with pytest.raises(ValueError, match=re.escape(expected)):
            _single(backbone, cfg, task)
        return
    model = _single(backbone, cfg, task)
    report = assert_symmetric(model, dtype=torch.float64)
    checked = {r.check for r in report.results}
    wanted = set(CHECKS) - ({"improper"} if not backbone.respects_inversion else set())
    assert checked == wanted, report.summary()


@pytest.mark.parametrize("bb_name", sorted(BACKBONES))
def test_every_head_of_a_backbone_is_symmetric_in_float32(bb_name):
    """All compatible heads on one backbone at once, in float32 (looser tolerance)."""
    backbone = _backbone(bb_name)
    heads, tasks = {"energy": {"name": "energy", "hidden": [8]}}, {"energy": Task("energy", SCALAR)}
    for head in sorted(HEADS):
        for k, (cfg, task) in enumerate(_cases(head)):
            if _expected_rejection(backbone, cfg) is None:
                key = f"{head}_{k}"
                heads[key] = cfg
                tasks[key] = Task(key, task.kind, task.formula)
    model = _model(backbone, heads, tasks)
    report = assert_symmetric(model, dtype=torch.float32)
    assert {r.output for r in report.results} == set(heads)


def test_improper_rotation_is_skipped_only_where_the_backbone_says_so():
    assert _backbone("local-frame").respects_inversion
    chiral = build_backbone({"name": "local-frame", **TINY_BACKBONES["local-frame"],
                             "parity_invariant": False})
    assert not chiral.respects_inversion
    model = _single(chiral, {"name": "scalar"}, Task("y", SCALAR))
    report = assert_symmetric(model)
    assert "improper" not in {r.check for r in report.results}
    assert any("respects_inversion=False" in s for s in report.skipped)
    # and the skip is needed: a chiral model tells a structure from its mirror image
    model.backbone.respects_inversion = True
    forced = check_symmetries(model, checks=("improper",), kinds=output_kinds(model))
    assert not forced.passed


# --------------------------------------------------------------------------------------
# the harness catches broken models
# --------------------------------------------------------------------------------------


class _PositionHead(Head):
    """Broken on purpose: the mean x coordinate of the atoms (not invariant)."""

    def __init__(self):
        super().__init__()
        self.config = {}

    def forward(self, backbone_out, data):
        pos = data[K.POSITIONS]
        batch, n = graph_index(data, pos.shape[0], pos.device)
        return pool(pos[:, 0] + 0 * backbone_out[K.NODE_FEATURES][:, 0], batch, n, "mean")


class _FixedTensorHead(Head):
    """Broken on purpose: the same anisotropic dielectric tensor whatever the orientation."""

    def __init__(self, reduce: str = "mean"):
        super().__init__()
        self.reduce = reduce
        self.config = {}

    def forward(self, backbone_out, data):
        h = backbone_out[K.NODE_FEATURES][:, :1]
        batch, n = graph_index(data, h.shape[0], h.device)
        pooled = pool(h, batch, n, self.reduce)
        return pooled * torch.tensor([1.0, 0.3, -0.2, 0.5, 0.1, 0.7], dtype=h.dtype)


class _SumDeclaredIntensive(Head):
    """Broken on purpose: sums over atoms but declares itself intensive."""

    extensive = False

    def __init__(self):
        super().__init__()
        self.config = {}

    def forward(self, backbone_out, data):
        h = backbone_out[K.NODE_FEATURES][:, 0]
        batch, n = graph_index(data, h.shape[0], h.device)
        return pool(h, batch, n, "sum")


def _broken(head: nn.Module, task: Task) -> PropertyModel:
    bb = _backbone("cgcnn")
    norm = build_normalizer(task)
    return PropertyModel(bb, nn.ModuleDict({"y": head}), nn.ModuleDict({"y": norm}), {"y": task})


def test_harness_reports_a_position_dependent_scalar():
    report = check_symmetries(_broken(_PositionHead(), Task("y", SCALAR)))
    failed = {r.check for r in report.failures}
    assert {"rotation", "improper", "translation"} <= failed
    with pytest.raises(AssertionError, match="FAIL rotation"):
        assert_symmetric(_broken(_PositionHead(), Task("y", SCALAR)))


def test_harness_reports_a_tensor_that_does_not_rotate():
    report = check_symmetries(_broken(_FixedTensorHead(), Task("y", TENSOR, "ij=ji")))
    assert {r.check for r in report.failures} == {"rotation", "improper"}


def test_harness_reports_wrong_extensivity():
    report = check_symmetries(_broken(_SumDeclaredIntensive(), Task("y", SCALAR)))
    assert {r.check for r in report.failures} == {"supercell"}
    # declared right, it passes
    assert check_symmetries(_broken(_FixedTensorHead("sum"), Task("y", TENSOR, "ij=ji")),
                            checks=("supercell",)).passed


def test_harness_reports_a_vacuous_output():
    class Zero(_SumDeclaredIntensive):
        def forward(self, backbone_out, data):
            return 0 * super().forward(backbone_out, data)

    report = check_symmetries(_broken(Zero(), Task("y", SCALAR)), checks=("rotation",))
    assert any("vacuous" in r.note for r in report.failures)


def test_transform_law_of_odd_and_even_ranks():
    r = random_rotation(3, proper=True)
    inv = -torch.eye(3, dtype=torch.float64)
    t3 = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    t2 = torch.randn(2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(transform_cartesian(t3, inv), -t3)
    torch.testing.assert_close(transform_cartesian(t2, inv), t2)
    torch.testing.assert_close(transform_cartesian(t2, inv, parity=-1), -t2)
    torch.testing.assert_close(transform_cartesian(t2, r), torch.einsum("ai,bj,nij->nab", r, r, t2))
    assert torch.linalg.det(random_rotation(1, proper=False)) < 0


def test_default_structures_have_no_symmetry():
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    for s in generic_structures():
        assert SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number() == 1
