"""Atom featurisers: the computed CGCNN table, user tables, specs and checkpoint state."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from matxfer.data.atom_features import (
    CGCNN_BLOCKS,
    CGCNN_DIM,
    AtomFeaturizer,
    cgcnn_block_slices,
    cgcnn_feature_table,
    cgcnn_features,
    element_properties,
    load_atom_table,
)
from matxfer.paths import pretrained_dir

ATOM_INIT = pretrained_dir() / "cgcnn" / "atom_init.json"


@pytest.fixture(scope="module")
def reference():
    if not ATOM_INIT.is_file():
        pytest.skip(f"CGCNN atom_init.json not found at {ATOM_INIT}")
    return load_atom_table(ATOM_INIT)


@pytest.fixture
def small_table(tmp_path):
    content = {"1": [1.0, 0.0, 0.5], "8": [0.0, 1.0, -2.0], "14": [0.25, 0.25, 0.25]}
    path = tmp_path / "atom_init.json"
    path.write_text(json.dumps(content))
    return path, content


def test_cgcnn_table_shape_and_determinism():
    a = cgcnn_feature_table()
    b = cgcnn_feature_table()
    assert a.shape == (101, 92) and CGCNN_DIM == 92
    assert sum(blk.size for blk in CGCNN_BLOCKS) == 92
    np.testing.assert_array_equal(a, b)
    assert not a[0].any()  # row 0 is no element
    assert set(np.unique(a)) <= {0.0, 1.0}
    x = cgcnn_features([8, 26, 8, 1])
    assert x.shape == (4, 92) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], x[2])
    np.testing.assert_array_equal(x, cgcnn_features([8, 26, 8, 1]))


def test_each_block_is_one_hot_or_zero():
    table = cgcnn_feature_table()
    for name, sl in cgcnn_block_slices().items():
        sums = table[1:, sl].sum(axis=1)
        assert set(np.unique(sums)) <= {0.0, 1.0}, name
        if name in ("group", "period", "block", "valence_electrons", "first_ionization_energy"):
            assert (sums == 1).all(), f"{name} should be defined for Z=1..100"


def test_known_elements():
    table = cgcnn_feature_table()
    sl = cgcnn_block_slices()

    def slot(z, name):
        nz = np.flatnonzero(table[z, sl[name]])
        return int(nz[0]) if len(nz) else None

    assert slot(8, "group") == 16 and slot(8, "period") == 1 and slot(8, "block") == 1
    assert slot(26, "group") == 8 and slot(26, "block") == 2 and slot(26, "valence_electrons") == 7
    assert slot(57, "group") == 0 and slot(57, "block") == 3  # f-block: no group number
    assert slot(2, "block") == 0  # He counted as s-block
    assert slot(9, "electronegativity") == 9  # F, the most electronegative
    assert slot(55, "first_ionization_energy") == 0  # Cs, the lowest IE


def test_missing_property_gives_zero_block():
    # pymatgen has no Pauling electronegativity for He and no covalent radius for Fm
    assert element_properties(2)["electronegativity"] is None
    assert element_properties(100)["covalent_radius"] is None
    table = cgcnn_feature_table()
    sl = cgcnn_block_slices()
    assert not table[2, sl["electronegativity"]].any()
    assert not table[100, sl["covalent_radius"]].any()
    assert table[100, sl["group"]].sum() == 1  # the rest of the row is still filled


def test_layout_matches_atom_init(reference):
    ref, present, _ = reference
    ours = cgcnn_feature_table()
    assert ref.shape == ours.shape
    assert present[1:].all()
    for name, sl in cgcnn_block_slices().items():
        # the reference is one-hot (or empty) inside exactly the same column blocks
        assert set(np.unique(ref[1:, sl].sum(axis=1))) <= {0.0, 1.0}, name
    # categorical blocks are fully determined by the element: identical to the reference
    for name in ("group", "period", "block"):
        np.testing.assert_array_equal(
            ours[1:, cgcnn_block_slices()[name]], ref[1:, cgcnn_block_slices()[name]], err_msg=name
        )


def test_load_table_dense_and_hash(small_table, tmp_path):
    path, content = small_table
    table, present, sha = load_atom_table(path)
    assert table.shape == (101, 3)
    assert present.sum() == 3 and present[[1, 8, 14]].all()
    np.testing.assert_array_equal(table[8], [0.0, 1.0, -2.0])
    assert not table[2].any()
    # the hash is of the content, not of the file's formatting
    other = tmp_path / "reformatted.json"
    other.write_text(json.dumps(dict(reversed(list(content.items()))), indent=4))
    assert load_atom_table(other)[2] == sha
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**content, "8": [0.0, 1.0, -2.5]}))
    assert load_atom_table(changed)[2] != sha


def test_bad_tables(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"1": [1.0, 2.0], "8": [1.0]}))
    with pytest.raises(ValueError, match="has 1 values"):
        load_atom_table(p)
    p.write_text(json.dumps({"H": [1.0]}))
    with pytest.raises(ValueError, match="not an atomic number"):
        load_atom_table(p)


def test_from_spec(small_table):
    path, _ = small_table
    assert AtomFeaturizer.from_spec("none") is None
    assert AtomFeaturizer.from_spec("cgcnn").dim == 92
    feat = AtomFeaturizer.from_spec("table", table_path=path)
    _, _, sha = load_atom_table(path)
    assert feat.spec == f"table:{sha}" and feat.dim == 3 and feat.sha256 == sha
    same = AtomFeaturizer.from_spec(feat.spec, table_path=path)
    np.testing.assert_array_equal(same([1, 8]), feat([1, 8]))
    with pytest.raises(ValueError, match="needs the table content"):
        AtomFeaturizer.from_spec(feat.spec)
    with pytest.raises(ValueError, match="sha256"):
        AtomFeaturizer.from_spec("table:" + "0" * 64, table_path=path)
    with pytest.raises(ValueError, match="unknown atom_features"):
        AtomFeaturizer.from_spec("magpie")


def test_table_missing_element_named(small_table):
    path, _ = small_table
    feat = AtomFeaturizer.from_spec("table", table_path=path)
    np.testing.assert_allclose(feat([8, 1]), [[0.0, 1.0, -2.0], [1.0, 0.0, 0.5]])
    with pytest.raises(ValueError, match=r"Fe \(Z=26\)"):
        feat([8, 26, 1])
    with pytest.raises(ValueError, match="no entry"):
        AtomFeaturizer.cgcnn()([118])


@pytest.mark.parametrize("spec", ["cgcnn", "table"])
def test_state_roundtrip_weights_only(spec, small_table):
    path, _ = small_table
    feat = AtomFeaturizer.from_spec(spec, table_path=path if spec == "table" else None)
    state = feat.to_state()
    assert {"spec", "dim", "sha256", "table"} <= set(state)
    buf = io.BytesIO()
    torch.save({"atom_features": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["atom_features"]
    back = AtomFeaturizer.from_state(loaded)
    assert back.spec == feat.spec and back.dim == feat.dim and back.sha256 == feat.sha256
    z = [1, 8, 14]
    np.testing.assert_array_equal(back(z), feat(z))
    tampered = json.loads(json.dumps(state))
    tampered["table"]["8"][0] += 1.0
    with pytest.raises(ValueError, match="sha256"):
        AtomFeaturizer.from_state(tampered)
