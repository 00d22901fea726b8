"""The on-disk graph store (LMDB): exact round trip, resumable chunked builds, refused
settings, recorded failures, DataLoader workers, and a training run streaming from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.loader import DataLoader

pytest.importorskip("lmdb")

from matxfer.data.graph_cache import build_graphs  # noqa: E402
from matxfer.data.graph_store import (  # noqa: E402
    GraphStore,
    GraphStoreDataset,
    StoreMismatch,
    build_store,
)
from matxfer.data.graphs import GraphSettings  # noqa: E402
from matxfer.data.records import CrystalRecord  # noqa: E402
from matxfer.tasks import make_task  # noqa: E402


def _records(n: int, seed: int = 0) -> list[CrystalRecord]:
    """Small rattled, strained rock-salt and bcc cells with a scalar label."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = 4.0 + 0.3 * rng.random()
        lat = Lattice(np.diag([a, a, a]) @ (np.eye(3) + 0.01 * rng.standard_normal((3, 3))))
        if i % 2:
            s = Structure(lat, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        else:
            s = Structure(lat, ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        s.perturb(0.05, min_distance=0.01, seed=int(rng.integers(1 << 30)))
        out.append(CrystalRecord(f"r{i:03d}", s, {"energy": float(rng.normal())}))
    return out


def _bad_record() -> CrystalRecord:
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.0, 0.0, 0.005]])
    return CrystalRecord("overlap", s, {"energy": 0.0})


def _assert_same_graph(a, b) -> None:
    assert a.material_id == b.material_id
    keys_a = {k for k in a.keys() if getattr(a, k) is not None}
    keys_b = {k for k in b.keys() if getattr(b, k) is not None}
    assert keys_a == keys_b
    assert a.num_nodes == b.num_nodes
    for k in keys_a:
        va, vb = getattr(a, k), getattr(b, k)
        if torch.is_tensor(va):
            assert va.dtype == vb.dtype, k
            assert torch.equal(va, vb), k
        else:
            assert va == vb, k


@pytest.mark.parametrize(
    "settings",
    [GraphSettings(cutoff=4.0), GraphSettings(cutoff=3.5, max_neighbors=8, line_graph=True,
                                              atom_features="cgcnn")],
    ids=["plain", "line-graph+cgcnn-features"],
)
def test_round_trip_equals_in_memory_graphs(tmp_path, settings):
    recs = _records(12)
    mem, failures = build_graphs(recs, settings, cache_key=None, progress=False)
    assert not failures
    report = build_store(recs, tmp_path / "store", settings, chunk_size=5, progress=False)
    assert (report.written, report.chunks, report.failed) == (12, 3, 0)
    store = GraphStore(tmp_path / "store", settings)
    assert sorted(store.ids()) == [r.material_id for r in recs]
    for g in mem:
        item = store.get(g.material_id)
        _assert_same_graph(item["graph"], g)
        rec = next(r for r in recs if r.material_id == g.material_id)
        assert item["labels"]["energy"] == rec.labels["energy"]
    ds = GraphStoreDataset(store, [g.material_id for g in mem])
    for g, h in zip(mem, ds):
        _assert_same_graph(h, g)


def test_labels_attached_like_the_in_memory_path(tmp_path):
    from matxfer.train.data import attach_labels

    recs = _records(6)
    tasks = {"energy": make_task("energy")}
    settings = GraphSettings(cutoff=4.0)
    build_store(recs, tmp_path / "s", settings, progress=False)
    mem, _ = build_graphs(recs, settings, cache_key=None, progress=False)
    # labels given by the run (the merged records), and the ones stored with the graphs
    given = GraphStoreDataset(tmp_path / "s", [r.material_id for r in recs], tasks,
                              labels={r.material_id: r.labels for r in recs})
    stored = GraphStoreDataset(tmp_path / "s", [r.material_id for r in recs], tasks)
    for rec, g, a, b in zip(recs, mem, given, stored):
        ref = attach_labels(g, rec, tasks)
        _assert_same_graph(a, ref)
        _assert_same_graph(b, ref)


def test_resume_after_a_stopped_build_writes_each_graph_once(tmp_path):
    recs = _records(10)
    settings = GraphSettings(cutoff=4.0)
    path = tmp_path / "store"
    first = build_store(recs, path, settings, chunk_size=4, max_chunks=1, progress=False)
    assert (first.written, first.chunks) == (4, 1)
    assert len(GraphStore(path)) == 4
    second = build_store(recs, path, settings, chunk_size=4, progress=False)
    assert (second.written, second.skipped, second.replaced) == (6, 4, 0)
    third = build_store(recs, path, settings, chunk_size=4, progress=False)
    assert (third.written, third.skipped) == (0, 10)
    store = GraphStore(path)
    assert sorted(store.ids()) == [r.material_id for r in recs]
    mem, _ = build_graphs(recs, settings, cache_key=None, progress=False)
    for g in mem:
        _assert_same_graph(store.get(g.material_id)["graph"], g)


def test_a_killed_build_keeps_only_complete_chunks(tmp_path):
    recs = _records(9)
    settings = GraphSettings(cutoff=4.0)

    def dies_in_the_second_chunk():
        for i, r in enumerate(recs):
            if i == 6:
                raise KeyboardInterrupt
            yield r

    with pytest.raises(KeyboardInterrupt):
        build_store(dies_in_the_second_chunk(), tmp_path / "s", settings, chunk_size=4,
                    progress=False)
    assert sorted(GraphStore(tmp_path / "s").ids()) == [r.material_id for r in recs[:4]]
    again = build_store(recs, tmp_path / "s", settings, chunk_size=4, progress=False)
    assert (again.written, again.skipped) == (5, 4)


def test_changed_structure_is_rebuilt(tmp_path):
    recs = _records(4)
    settings = GraphSettings(cutoff=4.0)
    build_store(recs, tmp_path / "s", settings, progress=False)
    moved = recs[1].structure.copy()
    moved.translate_sites([0], [0.01, 0.0, 0.0])
    recs[1] = CrystalRecord(recs[1].material_id, moved, recs[1].labels)
    again = build_store(recs, tmp_path / "s", settings, progress=False)
    assert (again.written, again.replaced, again.skipped) == (1, 1, 3)
    pos = GraphStore(tmp_path / "s").get(recs[1].material_id)["graph"].pos
    assert torch.allclose(pos, torch.tensor(moved.cart_coords, dtype=pos.dtype))


def test_other_settings_are_refused_naming_both(tmp_path):
    recs = _records(3)
    build_store(recs, tmp_path / "s", GraphSettings(cutoff=4.0), progress=False)
    with pytest.raises(StoreMismatch) as exc:
        build_store(recs, tmp_path / "s", GraphSettings(cutoff=5.0), progress=False)
    msg = str(exc.value)
    assert '"cutoff": 4.0' in msg and '"cutoff": 5.0' in msg and "settings.cutoff" in msg
    with pytest.raises(StoreMismatch, match="atom_features"):
        GraphStore(tmp_path / "s", GraphSettings(cutoff=4.0, atom_features="cgcnn"))
    with pytest.raises(FileNotFoundError, match="no graph store"):
        GraphStore(tmp_path / "nothing")


def test_bad_structure_is_recorded_and_skipped(tmp_path):
    recs = _records(5)
    recs.insert(2, _bad_record())
    settings = GraphSettings(cutoff=4.0)
    report = build_store(recs, tmp_path / "s", settings, chunk_size=2, progress=False)
    assert (report.written, report.failed) == (5, 1)
    assert report.failures[0][0] == "overlap" and "overlapping atoms" in report.failures[0][1]
    store = GraphStore(tmp_path / "s")
    assert "overlap" not in store.ids() and len(store) == 5
    assert "overlapping atoms" in store.failures()["overlap"]
    again = build_store(recs, tmp_path / "s", settings, progress=False)
    assert (again.written, again.failed, again.skipped) == (0, 0, 6)


def test_duplicate_ids_and_overlong_ids_are_errors(tmp_path):
    recs = _records(2)
    dup = [recs[0], CrystalRecord(recs[0].material_id, recs[1].structure, {})]
    with pytest.raises(ValueError, match="appears twice"):
        build_store(dup, tmp_path / "a", GraphSettings(cutoff=4.0), progress=False)
    long = [CrystalRecord("x" * 600, recs[0].structure, {})]
    with pytest.raises(ValueError, match="at most 511"):
        build_store(long, tmp_path / "b", GraphSettings(cutoff=4.0), progress=False)


def test_two_workers_give_the_same_batches(tmp_path):
    recs = _records(20)
    tasks = {"energy": make_task("energy")}
    build_store(recs, tmp_path / "s", GraphSettings(cutoff=4.0), chunk_size=7, progress=False)
    ds = GraphStoreDataset(tmp_path / "s", [r.material_id for r in recs], tasks)
    len(ds[0].pos)  # the parent has the store open when the workers fork

    def batches(workers):
        loader = DataLoader(ds, batch_size=6, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(5))
        return list(loader)

    ref, par = batches(0), batches(2)
    assert len(ref) == len(par) == 4
    for a, b in zip(ref, par):
        assert a.material_id == b.material_id
        for k in ("pos", "edge_index", "cell_shift", "batch", "y_energy", "m_energy"):
            assert torch.equal(a[k], b[k]), k


def test_cli_build_store(tmp_path, capsys):
    from matxfer.cli import main

    out = tmp_path / "store"
    args = ["data", "build-store", "emt-metals", "--out", str(out), "--limit", "12",
            "--chunk-size", "5", "--cutoff", "4.5", "--json"]
    assert main(args) == 0
    blob = json.loads(capsys.readouterr().out)
    assert blob["written"] == 12 and blob["graphs_in_store"] == 12 and blob["disk_bytes"] > 0
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 12


TINY = {
    "name": "tiny-store",
    "seed": 4,
    "data": {"datasets": ["emt-metals"], "targets": ["energy_per_atom"], "limit": 24,
             "split": {"fractions": [0.7, 0.15, 0.15]}},
    "model": {"backbone": {"name": "cgcnn", "width": 8, "n_conv": 1}},
    "optim": {"epochs": 2, "batch_size": 4, "lr": 3e-3, "patience": 0, "warmup_epochs": 1},
    "trainer": {"progress": False, "deterministic": True},
}


@pytest.mark.parametrize("workers", [2, 0], ids=["2-workers", "in-process"])
def test_training_through_the_store_matches_the_in_memory_path(tmp_path, workers):
    """Same seed, same loader workers: the same final weights and metrics. (Worker count
    itself changes a Lightning run's random stream, on the in-memory path too.)"""
    import copy

    from matxfer.config import config_from_dict
    from matxfer.train.loop import fit

    mem_cfg = copy.deepcopy(TINY)
    mem_cfg["out"] = str(tmp_path / "mem")
    mem_cfg["trainer"]["num_workers"] = workers
    store_cfg = copy.deepcopy(TINY)
    store_cfg["out"] = str(tmp_path / "store")
    store_cfg["data"]["graph_store"] = str(tmp_path / "graphs")
    store_cfg["trainer"]["num_workers"] = workers
    a = fit(config_from_dict(mem_cfg))
    b = fit(config_from_dict(store_cfg))
    assert len(GraphStore(tmp_path / "graphs")) == 24
    wa = torch.load(a.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    wb = torch.load(b.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for split in ("val", "test"):
        assert a.metrics[split] == b.metrics[split]


def test_build_store_from_a_run_config_serves_that_run(tmp_path, capsys):
    import copy

    import yaml

    from matxfer.cli import main
    from matxfer.config import config_from_dict
    from matxfer.train.loop import fit

    store = tmp_path / "graphs"
    cfg = copy.deepcopy(TINY)
    cfg["optim"]["epochs"] = 1
    cfg["out"] = str(tmp_path / "run")
    cfg["data"]["graph_store"] = str(store)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["data", "build-store", "emt-metals", "--out", str(store), "--config",
                 str(tmp_path / "run.yaml"), "--limit", "24", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 24
    mtime = (store / "data.mdb").stat().st_mtime_ns
    result = fit(config_from_dict(cfg))
    graph = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["graph"]
    assert GraphStore(store).meta["settings"] == graph
    assert (store / "data.mdb").stat().st_mtime_ns == mtime  # nothing was left to build
