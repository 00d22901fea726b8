"""Every registered backbone and head declares its option schema, and it matches the code."""

from __future__ import annotations

import inspect

import pytest

from matxfer.models.registry import BACKBONES, HEADS, build_backbone, build_head, config_class


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


@pytest.mark.parametrize(
    "table, name, skip",
    [(BACKBONES, n, 0) for n in BACKBONES] + [(HEADS, n, 1) for n in HEADS],
)
def test_config_class_matches_the_constructor(table, name, skip):
    cls = table[name]
    schema = config_class(cls)
    assert schema is not None, f"{name} registers no config class"
    params = list(inspect.signature(cls).parameters.values())[skip:]
    ctor = {p.name: p.default for p in params}
    fields = schema.model_fields
    assert set(fields) == set(ctor), f"{name}: schema {sorted(fields)} vs constructor {sorted(ctor)}"
    for key, default in ctor.items():
        assert _plain(fields[key].get_default()) == _plain(default), f"{name}.{key}"
    # the defaults pass the schema's own checks
    schema.model_validate({})


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: build_backbone({"name": "cgcnn", "n_conv": "3"}),
         "backbone 'cgcnn' option n_conv: expected an integer (>= 1), got '3'"),
        (lambda: build_backbone({"name": "equivariant", "cutoff": 0}),
         "backbone 'equivariant' option cutoff: expected a number (> 0), got 0"),
        (lambda: build_backbone({"name": "alignn", "norm": "group"}, "model.backbone"),
         "model.backbone.norm: expected one of batch, layer, none, got 'group'"),
        (lambda: build_head({"name": "scalar", "hidden": 8}, 16),
         "head 'scalar' option hidden: expected a list of integers (widths >= 1), got 8"),
        (lambda: build_head({"name": "edge-tensor", "act": "gelu2"}, 16, "model.heads.eps"),
         "model.heads.eps.act: expected one of"),
    ],
)
def test_bad_options_are_one_line_errors_naming_option_and_value(build, message):
    with pytest.raises(ValueError) as exc:
        build()
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_numbers_written_the_yaml_1_1_way_are_read_as_numbers():
    bb = build_backbone({"name": "cgcnn", "width": 8, "n_conv": 1, "gaussian_step": "2e-1"})
    assert bb.config["gaussian_step"] == pytest.approx(0.2)


def test_model_options_are_checked_before_anything_is_built():
    """A bad head option fails before the (possibly expensive) backbone is built."""
    from matxfer.models.registry import build_model
    from matxfer.tasks import make_task

    built = []
    cls = BACKBONES["cgcnn"]
    orig = cls.__init__

    def spy(self, *a, **k):
        built.append(1)
        orig(self, *a, **k)

    cls.__init__ = spy
    try:
        with pytest.raises(ValueError, match=r"model.heads.band_gap.hidden\[0\]: expected an integer"):
            build_model({"backbone": {"name": "cgcnn"},
                         "heads": {"band_gap": {"name": "scalar", "hidden": [0]}}},
                        {"band_gap": make_task("band_gap")})
    finally:
        cls.__init__ = orig
    assert built == []
