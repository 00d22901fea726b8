"""Periodic neighbour lists, crystal graphs, line graphs and the graph cache."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from matxfer import keys as K
from matxfer.data.atom_features import AtomFeaturizer
from matxfer.data.graph_cache import build_graphs, cache_path, fingerprint
from matxfer.data.graphs import (
    CrystalGraph,
    GraphSettings,
    bond_cosines,
    line_graph_index,
    neighbor_list,
    structure_to_graph,
)
from matxfer.nn.geometry import edge_vectors


@dataclass
class Rec:
    material_id: str
    structure: Structure


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def brute_force_pairs(structure: Structure, cutoff: float):
    """(i, j, image, distance) of every neighbour within ``cutoff`` by looping over images."""
    lat = structure.lattice.matrix
    cart = structure.cart_coords
    # enough images to cover the cutoff along each lattice direction
    recip = np.linalg.inv(lat).T
    reach = [int(np.ceil(cutoff * np.linalg.norm(recip[a]))) + 1 for a in range(3)]
    out = []
    for n in itertools.product(*(range(-r, r + 1) for r in reach)):
        shift = np.array(n) @ lat
        d = np.linalg.norm(cart[None, :, :] + shift - cart[:, None, :], axis=-1)  # [i, j]
        for i, j in zip(*np.nonzero(d <= cutoff)):
            if d[i, j] > 1e-8:
                out.append((int(i), int(j), tuple(n), float(d[i, j])))
    return out


# --- neighbour lists -------------------------------------------------------------------------


def test_single_atom_in_large_cell_uses_fallback():
    s = Structure(Lattice.cubic(20.0), ["Cu"], [[0, 0, 0]])
    nl = neighbor_list(s, cutoff=5.0, fallback_k=12)
    assert nl.n_fallback == 1
    assert len(nl.src) == 12
    assert (nl.src == 0).all() and (nl.dst == 0).all()  # its own periodic images
    np.testing.assert_allclose(np.sort(nl.dist), [20.0] * 6 + [20.0 * np.sqrt(2)] * 6)
    assert len({tuple(x) for x in nl.shift}) == 12
    g = structure_to_graph(s, GraphSettings(cutoff=5.0, fallback_k=12, keep_shell=False))
    assert int(g.n_fallback) == 1 and g.edge_index.shape == (2, 12)
    # keeping the shell: the 12 images at 20*sqrt(2) form one shell, so the fallback keeps
    # all of them (6 + 12) rather than 6 chosen by image order
    g = structure_to_graph(s, GraphSettings(cutoff=5.0, fallback_k=12))
    assert int(g.n_fallback) == 1 and g.edge_index.shape == (2, 18)


def test_bcc_cs_fallback():
    s = Structure(Lattice.cubic(6.14), ["Cs", "Cs"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert len(neighbor_list(s, cutoff=5.0, fallback_k=1).src) > 0
    nl = neighbor_list(s, cutoff=5.0, fallback_k=12)
    assert nl.n_fallback == 2
    counts = np.bincount(nl.dst, minlength=2)
    assert counts.tolist() == [12, 12]
    d1 = 6.14 * np.sqrt(3) / 2
    for i in range(2):
        d = np.sort(nl.dist[nl.dst == i])
        np.testing.assert_allclose(d[:8], d1)  # the 8 body-diagonal neighbours
        np.testing.assert_allclose(d[8:], 6.14)  # 4 of the 6 cube-edge neighbours
    again = neighbor_list(s, cutoff=5.0, fallback_k=12)
    np.testing.assert_array_equal(nl.shift, again.shift)
    # max_neighbors also caps what the fallback gives
    capped = neighbor_list(s, cutoff=5.0, max_neighbors=4, fallback_k=12)
    assert np.bincount(capped.dst).tolist() == [4, 4]


def test_200_atom_cell_matches_brute_force():
    rng = np.random.default_rng(3)
    base = Structure(
        Lattice.cubic(5.64),
        ["Na"] * 4 + ["Cl"] * 4,
        [
            [0, 0, 0],
            [0.5, 0.5, 0],
            [0.5, 0, 0.5],
            [0, 0.5, 0.5],
            [0.5, 0, 0],
            [0, 0.5, 0],
            [0, 0, 0.5],
            [0.5, 0.5, 0.5],
        ],
    )
    s = base * (5, 5, 1)
    s = Structure(s.lattice, s.species, s.frac_coords + rng.normal(0, 0.003, (len(s), 3)))
    assert len(s) == 200
    cutoff = 4.5
    nl = neighbor_list(s, cutoff)
    ref = brute_force_pairs(s, cutoff)
    assert nl.n_fallback == 0
    ours = sorted(zip(nl.dst.tolist(), nl.src.tolist(), map(tuple, nl.shift.tolist())))
    assert ours == sorted((i, j, n) for i, j, n, _ in ref)
    assert (nl.dist <= cutoff + 1e-8).all()
    # sorted by centre, then distance
    assert (np.diff(nl.dst) >= 0).all()
    same = nl.dst[1:] == nl.dst[:-1]
    assert (np.diff(nl.dist)[same] >= -1e-8).all()


@pytest.mark.parametrize("cutoff,cap", [(8.0, 12), (6.0, 4), (5.0, 1), (4.0, 40)])
def test_capped_list_matches_brute_force(cutoff, cap, skewed, batio3):
    rng = np.random.default_rng(11)
    cluster = Structure(Lattice.cubic(14.0), ["O"] * 6, rng.random((6, 3)) * 0.3)  # mostly vacuum
    for s in (skewed, batio3, cluster):
        nl = neighbor_list(s, cutoff, max_neighbors=cap, fallback_k=cap)
        ref = brute_force_pairs(s, cutoff)
        for i in range(len(s)):
            mine = [
                (j, tuple(n))
                for j, n, c in zip(nl.src.tolist(), nl.shift.tolist(), nl.dst)
                if c == i
            ]
            cand = sorted((round(d, 8), j, n) for c, j, n, d in ref if c == i)
            if not cand:  # fallback atom: checked elsewhere
                continue
            assert mine == [(j, n) for _, j, n in cand[:cap]], (s.formula, i)


def test_fallback_atom_gets_no_self_pair():
    # atom 2 is isolated; atoms 0 and 1 are bonded, so the isolated atom is not atom 0
    s = Structure(
        Lattice.cubic(20.0), ["Cu", "Cu", "Ag"], [[0, 0, 0], [0.1, 0, 0], [0.5, 0.5, 0.5]]
    )
    nl = neighbor_list(s, cutoff=3.0, fallback_k=5)
    assert nl.n_fallback == 1
    assert (nl.dist > 1e-6).all()
    assert np.bincount(nl.dst).tolist() == [1, 1, 5]
    ref = sorted(d for c, _, _, d in brute_force_pairs(s, 20.0) if c == 2)
    np.testing.assert_allclose(nl.dist[nl.dst == 2], ref[:5])


def test_slab_with_vacuum():
    bulk = Structure(
        Lattice.cubic(5.43),
        ["Si"] * 8,
        [
            [0, 0, 0],
            [0.5, 0.5, 0],
            [0.5, 0, 0.5],
            [0, 0.5, 0.5],
            [0.25, 0.25, 0.25],
            [0.75, 0.75, 0.25],
            [0.75, 0.25, 0.75],
            [0.25, 0.75, 0.75],
        ],
    )
    thick = 2 * 5.43
    c = thick + 15.0
    frac = bulk.frac_coords.copy()
    cart = np.concatenate([frac * 5.43, (frac + [0, 0, 1]) * 5.43])
    slab = Structure(
        Lattice.orthorhombic(5.43, 5.43, c), ["Si"] * 16, cart, coords_are_cartesian=True
    )
    g = structure_to_graph(slab, GraphSettings(cutoff=5.0))
    assert int(g.n_fallback) == 0
    vec = edge_vectors(g)
    # nothing reaches across the 15 A of vacuum
    assert vec[:, 2].abs().max() < 5.0 + 1e-5
    assert (g.cell_shift[:, 2] == 0).all()
    assert vec.norm(dim=1).max() <= 5.0 + 1e-4
    # every atom, surface ones included, has neighbours
    assert torch.bincount(g.edge_index[1], minlength=16).min() > 0


def test_max_neighbors_keeps_nearest_with_deterministic_ties():
    s = Structure(Lattice.cubic(3.0), ["Po"], [[0, 0, 0]])
    full = neighbor_list(s, 5.5)
    assert len(full.src) == 6 + 12 + 8  # 3, 4.24 and 5.20 A shells
    nl = neighbor_list(s, 5.5, max_neighbors=8)
    assert len(nl.src) == 8
    np.testing.assert_allclose(nl.dist[:6], 3.0)
    np.testing.assert_allclose(nl.dist[6:], 3.0 * np.sqrt(2))
    # ties in the second shell are broken by (neighbour index, image): the two smallest images
    shell2 = sorted(
        tuple(x) for x, d in zip(full.shift.tolist(), full.dist) if abs(d - 4.2426) < 1e-3
    )
    assert [tuple(x) for x in nl.shift[6:].tolist()] == shell2[:2]
    # the kept ones are never farther than a dropped one
    assert nl.dist.max() <= np.sort(full.dist)[8] + 1e-9
    for _ in range(3):
        np.testing.assert_array_equal(neighbor_list(s, 5.5, max_neighbors=8).shift, nl.shift)


def test_edge_vectors_exact_for_multiple_images(float64):
    s = Structure(
        Lattice.from_parameters(2.6, 2.9, 3.1, 80, 95, 105),
        ["Li", "H"],
        [[0, 0, 0], [0.4, 0.55, 0.45]],
    )
    cutoff = 7.0
    g = structure_to_graph(s, GraphSettings(cutoff=cutoff))
    nl = neighbor_list(s, cutoff)
    vec = edge_vectors(g)
    np.testing.assert_allclose(vec.norm(dim=1).numpy(), nl.dist, rtol=0, atol=1e-10)
    # many edges between the same pair of atoms, each with its own image and vector
    pairs = list(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist()))
    assert max(pairs.count(p) for p in set(pairs)) > 20
    c, p, images, d = s.get_neighbor_list(cutoff)
    expected = {
        (int(i), int(j), tuple(np.round(im).astype(int))): dd
        for i, j, im, dd in zip(c, p, images, d)
    }
    got = {
        (int(i), int(j), tuple(int(v) for v in n)): float(l)
        for j, i, n, l in zip(g.edge_index[0], g.edge_index[1], g.cell_shift, vec.norm(dim=1))
    }
    assert got.keys() == expected.keys()
    for key, dist in expected.items():
        assert abs(got[key] - dist) < 1e-10
    # r_ij = x_j + n L - x_i, exactly
    j, i = g.edge_index
    manual = s.cart_coords[j] + g.cell_shift.numpy() @ s.lattice.matrix - s.cart_coords[i]
    np.testing.assert_allclose(vec.numpy(), manual, atol=1e-12)


# --- graphs, features and the line graph -----------------------------------------------------


def test_structure_to_graph_fields(si):
    g = structure_to_graph(si, GraphSettings(cutoff=4.0), material_id="si")
    assert isinstance(g, CrystalGraph)
    assert g.num_nodes == 8 and g.material_id == "si"
    assert g.edge_index.shape[1] == g.cell_shift.shape[0]
    assert g.cell.shape == (1, 3, 3) and g.pos.shape == (8, 3)
    assert "x" not in g and "line_index" not in g
    # the graph equals one built attribute by attribute, alone and batched
    ref = CrystalGraph(**{k: g[k] for k in g.keys()})  # noqa: SIM118
    assert sorted(ref.keys()) == sorted(g.keys())
    a, b = Batch.from_data_list([g, g]), Batch.from_data_list([ref, ref])
    for key in a.keys():  # noqa: SIM118
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
    assert a.num_graphs == 2 and a.material_id == ["si", "si"]


def test_graph_atom_features(si, tmp_path):
    g = structure_to_graph(si, GraphSettings(cutoff=4.0, atom_features="cgcnn"))
    assert g.x.shape == (8, 92)
    np.testing.assert_array_equal(g.x.numpy(), AtomFeaturizer.cgcnn()([14] * 8))
    path = tmp_path / "atom_init.json"
    path.write_text(json.dumps({"14": [1.0, 2.0], "8": [0.0, 1.0]}))
    feat = AtomFeaturizer.from_spec("table", table_path=path)
    settings = GraphSettings(cutoff=4.0, atom_features=feat.spec)
    g = structure_to_graph(si, settings, featurizer=feat)
    assert g.x.shape == (8, 2)
    with pytest.raises(ValueError, match="pass the featurizer"):
        structure_to_graph(si, settings)
    with pytest.raises(ValueError, match="does not match"):
        structure_to_graph(si, GraphSettings(cutoff=4.0, atom_features="cgcnn"), featurizer=feat)
    with pytest.raises(ValueError, match="Fe"):
        fe = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        structure_to_graph(fe, settings, featurizer=feat)


def test_line_graph_index_matches_loop():
    rng = np.random.default_rng(0)
    ei = torch.tensor(np.stack([rng.integers(0, 6, 40), rng.integers(0, 6, 40)]))
    li = line_graph_index(ei, 40)
    expected = {
        (a, b) for a in range(40) for b in range(40) if a != b and int(ei[1, a]) == int(ei[1, b])
    }
    got = list(zip(li[0].tolist(), li[1].tolist()))
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected
    deg = torch.bincount(ei[1])
    assert li.shape[1] == int((deg * (deg - 1)).sum())
    assert line_graph_index(torch.zeros((2, 0), dtype=torch.long)).shape == (2, 0)
    with pytest.raises(ValueError):
        line_graph_index(ei, 41)


def test_bond_cosines_tetrahedral(si):
    g = structure_to_graph(si, GraphSettings(cutoff=2.5, line_graph=True))
    assert torch.bincount(g.edge_index[1]).tolist() == [4] * 8
    assert g.line_index.shape[1] == 8 * 4 * 3
    cos = bond_cosines(edge_vectors(g), g.line_index)
    np.testing.assert_allclose(cos.numpy(), -1.0 / 3.0, atol=1e-5)


def test_line_graph_batching_offsets(si, nacl):
    settings = GraphSettings(cutoff=4.0, line_graph=True)
    g1 = structure_to_graph(si, settings)
    g2 = structure_to_graph(nacl, settings)
    e1 = g1.edge_index.shape[1]
    batch = Batch.from_data_list([g1, g2])
    assert torch.equal(batch.line_index[:, : g1.line_index.shape[1]], g1.line_index)
    assert torch.equal(batch.line_index[:, g1.line_index.shape[1] :], g2.line_index + e1)
    assert torch.equal(batch.edge_index[:, e1:], g2.edge_index + g1.num_nodes)
    # the pairs still share their centre atom after batching
    assert torch.equal(
        batch.edge_index[1][batch.line_index[0]], batch.edge_index[1][batch.line_index[1]]
    )
    cos_batch = bond_cosines(edge_vectors(batch), batch.line_index)
    cos_sep = torch.cat([bond_cosines(edge_vectors(g), g.line_index) for g in (g1, g2)])
    torch.testing.assert_close(cos_batch, cos_sep)
    loader = DataLoader([g1, g2, g1], batch_size=3)
    b = next(iter(loader))
    assert int(b.line_index.max()) < b.edge_index.shape[1]
    assert torch.equal(
        b.line_index[:, -g1.line_index.shape[1] :], g1.line_index + e1 + g2.edge_index.shape[1]
    )


# --- cache -----------------------------------------------------------------------------------


def _records(si, nacl, zno):
    return [Rec("si", si), Rec("nacl", nacl), Rec("zno", zno)]


def test_cache_hit_miss_invalidation(tmp_path, monkeypatch, si, nacl, zno):
    monkeypatch.setenv("MATXFER_CACHE_DIR", str(tmp_path))
    import matxfer.data.graph_cache as gc

    recs = _records(si, nacl, zno)
    settings = GraphSettings(cutoff=4.0, line_graph=True, atom_features="cgcnn")
    calls = []
    real = gc._build
    monkeypatch.setattr(gc, "_build", lambda *a, **k: calls.append(1) or real(*a, **k))

    graphs, failures = build_graphs(recs, settings, "unit", progress=False)
    assert len(calls) == 1 and not failures and len(graphs) == 3
    path = cache_path("unit", settings, fingerprint(recs, AtomFeaturizer.cgcnn()))
    assert path.is_file() and path.parent == tmp_path / "graphs" / "unit"
    assert path.name.startswith(settings.key() + "-")
    torch.load(path, weights_only=True)  # plain tensors and dicts only

    again, _ = build_graphs(recs, settings, "unit", progress=False)  # hit
    assert len(calls) == 1
    assert [g.material_id for g in again] == ["si", "nacl", "zno"]
    for a, b in zip(graphs, again):
        assert isinstance(b, CrystalGraph)
        for key in (
            K.ATOMIC_NUMBERS,
            K.POSITIONS,
            K.CELL,
            K.EDGE_INDEX,
            K.CELL_SHIFT,
            K.ATOM_FEATURES,
            K.LINE_INDEX,
            "n_fallback",
        ):
            assert torch.equal(a[key], b[key]), key
            assert a[key].dtype == b[key].dtype, key
    batch = Batch.from_data_list(again)
    assert batch.line_index.shape[1] == sum(g.line_index.shape[1] for g in graphs)

    # order of records does not matter; the output follows the given order
    rev, _ = build_graphs(recs[::-1], settings, "unit", progress=False)
    assert len(calls) == 1 and [g.material_id for g in rev] == ["zno", "nacl", "si"]

    # any graph setting change -> miss
    build_graphs(
        recs,
        GraphSettings(cutoff=4.5, line_graph=True, atom_features="cgcnn"),
        "unit",
        progress=False,
    )
    assert len(calls) == 2
    build_graphs(recs, GraphSettings(cutoff=4.0, atom_features="cgcnn"), "unit", progress=False)
    assert len(calls) == 3
    # a changed structure -> miss
    moved = si.copy()
    moved.translate_sites([0], [0.01, 0, 0])
    build_graphs([Rec("si", moved), *recs[1:]], settings, "unit", progress=False)
    assert len(calls) == 4
    # a renamed record -> miss
    build_graphs([Rec("si-2", si), *recs[1:]], settings, "unit", progress=False)
    assert len(calls) == 5
    # and the original is still a hit
    build_graphs(recs, settings, "unit", progress=False)
    assert len(calls) == 5
    # no cache key: always built, nothing written
    n_files = len(list((tmp_path / "graphs").rglob("*.pt")))
    build_graphs(recs, settings, None, progress=False)
    assert len(calls) == 6 and len(list((tmp_path / "graphs").rglob("*.pt"))) == n_files


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, si, nacl, zno):
    monkeypatch.setenv("MATXFER_CACHE_DIR", str(tmp_path))
    recs = _records(si, nacl, zno)
    settings = GraphSettings(cutoff=4.0)
    build_graphs(recs, settings, "unit", progress=False)
    path = cache_path("unit", settings, fingerprint(recs))
    path.write_bytes(b"not a torch file")
    graphs, failures = build_graphs(recs, settings, "unit", progress=False)
    assert len(graphs) == 3 and not failures
    assert torch.load(path, weights_only=True)["format"] == 1


def test_failures_reported_not_raised(tmp_path, monkeypatch, si, nacl):
    monkeypatch.setenv("MATXFER_CACHE_DIR", str(tmp_path))
    disordered = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    far = Structure(Lattice.cubic(80.0), ["Ar"], [[0, 0, 0]])  # no neighbour within 30 A
    recs = [
        Rec("si", si),
        Rec("bad", disordered),
        Rec("none", None),
        Rec("far", far),
        Rec("nacl", nacl),
    ]
    settings = GraphSettings(cutoff=4.0)
    graphs, failures = build_graphs(recs, settings, "unit", progress=False)
    assert [g.material_id for g in graphs] == ["si", "nacl"]
    assert [mid for mid, _ in failures] == ["bad", "none", "far"]
    assert all(isinstance(why, str) and why for _, why in failures)
    assert "no neighbour" in dict(failures)["far"]
    # failures come back from the cache too
    graphs2, failures2 = build_graphs(recs, settings, "unit", progress=False)
    assert [g.material_id for g in graphs2] == ["si", "nacl"] and failures2 == failures


def test_missing_table_element_is_a_failure(tmp_path, monkeypatch, si, nacl):
    monkeypatch.setenv("MATXFER_CACHE_DIR", str(tmp_path))
    path = tmp_path / "atom_init.json"
    path.write_text(json.dumps({"14": [1.0, 0.0]}))
    feat = AtomFeaturizer.from_spec("table", table_path=path)
    settings = GraphSettings(cutoff=4.0, atom_features=feat.spec)
    graphs, failures = build_graphs(
        [Rec("si", si), Rec("nacl", nacl)], settings, "t", featurizer=feat, progress=False
    )
    assert [g.material_id for g in graphs] == ["si"]
    assert failures[0][0] == "nacl" and "Na (Z=11)" in failures[0][1]
    with pytest.raises(ValueError, match="pass the featurizer"):
        build_graphs([Rec("si", si)], settings, "t", progress=False)


def test_progress_bar_runs(tmp_path, monkeypatch, si, capsys):
    monkeypatch.setenv("MATXFER_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MATXFER_PROGRESS", "1")
    graphs, _ = build_graphs([Rec("si", si)], GraphSettings(cutoff=4.0), None, progress=True)
    assert len(graphs) == 1
