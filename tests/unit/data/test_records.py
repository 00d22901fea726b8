import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matxfer import keys as K
from matxfer.data.records import RecordError, make_record, symmetrize_indices


def test_missing_labels_are_absent(si):
    rec = make_record("x-1", si, {K.BAND_GAP: 1.1, K.FORMATION_ENERGY_PER_ATOM: None})
    assert rec.has(K.BAND_GAP) and not rec.has(K.FORMATION_ENERGY_PER_ATOM)


@pytest.mark.parametrize(
    "labels, match",
    [
        ({K.BAND_GAP: float("nan")}, "not finite"),
        ({K.DIELECTRIC_TOTAL: np.ones((3, 2))}, "shape"),
        ({K.DIELECTRIC_TOTAL: np.array([[1, 2, 0], [0, 1, 0], [0, 0, 1.0]])}, "index symmetry"),
        ({K.PIEZO_TENSOR: np.full((3, 3, 3), np.inf)}, "NaN or inf"),
        ({K.BAND_GAP: "abc"}, "not a number"),
    ],
)
def test_bad_labels_name_entry_and_reason(si, labels, match):
    with pytest.raises(RecordError, match=match) as exc:
        make_record("mp-bad", si, labels)
    assert "mp-bad" in str(exc.value)


def test_bad_structures(si):
    with pytest.raises(RecordError, match="empty"):
        make_record("e", Structure(Lattice.cubic(3), [], []), {})
    disordered = Structure(Lattice.cubic(3), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    with pytest.raises(RecordError, match="partial occupancy"):
        make_record("d", disordered, {})


def test_small_asymmetry_is_symmetrised(si):
    eps = np.diag([2.0, 3.0, 4.0])
    eps[0, 1] = 0.01
    rec = make_record("x", si, {K.DIELECTRIC_TOTAL: eps})
    np.testing.assert_allclose(rec.labels[K.DIELECTRIC_TOTAL], rec.labels[K.DIELECTRIC_TOTAL].T)


def test_symmetrize_elastic_is_group_average():
    rng = np.random.default_rng(0)
    c = symmetrize_indices(rng.normal(size=(3, 3, 3, 3)), "ijkl=jikl=klij")
    np.testing.assert_allclose(c, c.transpose(1, 0, 2, 3))
    np.testing.assert_allclose(c, c.transpose(0, 1, 3, 2))
    np.testing.assert_allclose(c, c.transpose(2, 3, 0, 1))
