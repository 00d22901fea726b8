import pytest

from matxfer.data.splits import Split, remove_overlap, split_ids, subsample


def test_split_is_deterministic_and_disjoint(tmp_path):
    ids = [f"mp-{i}" for i in range(1000)]
    a = split_ids(ids, seed=3)
    b = split_ids(list(reversed(ids)), seed=3)
    assert a.to_dict() == b.to_dict()
    a.check_disjoint()
    assert (len(a.train), len(a.val), len(a.test)) == (800, 100, 100)
    assert split_ids(ids, seed=4).test != a.test
    path = a.save(tmp_path / "split.json")
    assert Split.load(path).to_dict() == a.to_dict()


def test_adding_ids_does_not_move_others():
    ids = [f"mp-{i}" for i in range(500)]
    s1 = split_ids(ids, seed=0, sizes=(None, 0, 100))
    s2 = split_ids(ids + ["mp-new"], seed=0, sizes=(None, 0, 100))
    # the hash order of existing ids is unchanged; at most one test id is displaced
    assert len(set(s1.test) & set(s2.test)) >= 99


def test_sizes_and_errors():
    ids = [str(i) for i in range(10)]
    s = split_ids(ids, sizes=(3, 3, None))
    assert len(s.test) == 4
    with pytest.raises(ValueError, match="need 20"):
        split_ids(ids, sizes=(10, 10, None))
    with pytest.raises(ValueError):
        split_ids(ids, sizes=(None, None, 1))


def test_overlap_and_subsample():
    assert remove_overlap(["a", "b", "c"], {"b"}) == ["a", "c"]
    ids = [str(i) for i in range(100)]
    small, big = subsample(ids, 10, 1), subsample(ids, 50, 1)
    assert set(small) <= set(big)
    with pytest.raises(ValueError):
        subsample(ids, 101, 0)


def test_stratified_split_gives_every_group_its_share():
    ids = [f"mp-{i}" for i in range(400)]
    # a rare group (10 ids) and a large one: a plain split can miss the rare one in test
    groups = {i: ("rare" if k < 10 else "common") for k, i in enumerate(ids)}
    s = split_ids(ids, (0.8, 0.1, 0.1), seed=3, groups=groups)
    s.check_disjoint()
    assert sorted(s.train + s.val + s.test) == sorted(ids)
    for part, frac in ((s.test, 0.1), (s.val, 0.1), (s.train, 0.8)):
        for g, n in (("rare", 10), ("common", 390)):
            got = sum(groups[i] == g for i in part)
            assert abs(got - frac * n) <= 1, (g, got, frac * n)
    # deterministic, and independent of input order
    assert split_ids(list(reversed(ids)), (0.8, 0.1, 0.1), seed=3, groups=groups) == s
    with pytest.raises(ValueError, match="fractions, not sizes"):
        split_ids(ids, sizes=(10, 10, None), groups=groups)


def test_stratified_split_by_crystal_system_from_config():
    from pymatgen.core import Lattice, Structure

    from matxfer.config import DataConfig, SplitConfig
    from matxfer.data.records import CrystalRecord
    from matxfer.train.data import make_split

    cubic = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    tetra = Structure(Lattice.tetragonal(4.0, 5.5), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    records = {}
    for k in range(60):
        mid = f"id-{k}"
        records[mid] = CrystalRecord(mid, cubic if k % 6 else tetra, {})
    cfg = DataConfig(split=SplitConfig(fractions=(0.5, 0.25, 0.25), stratify="crystal_system"))
    s = make_split(cfg, sorted(records), records)
    tet = {m for m, r in records.items() if r.structure is tetra}
    assert len(tet) == 10
    assert [sum(i in tet for i in p) for p in (s.train, s.val, s.test)] in ([5, 2, 3], [5, 3, 2], [4, 3, 3], [6, 2, 2])
