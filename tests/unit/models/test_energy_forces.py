"""Energy head, direct and conservative forces, and the EMT energy/force dataset."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch import nn
from torch_geometric.data import Batch

from matxfer.data.emt import (
    EMT_DATASET,
    EMT_FILE,
    EMT_SOURCE,
    generate_emt_dataset,
    read_emt_records,
    record_forces,
    register_emt_dataset,
)
from matxfer.data.graphs import GraphSettings, structure_to_graph
from matxfer.models.backbones.local_frame import LocalFrameBackbone
from matxfer.models.heads.energy_forces import (
    DirectForceHead,
    EnergyHead,
    conservative_forces,
)
from matxfer.models.registry import HEADS, build_backbone, build_model
from matxfer.tasks import make_task

CUTOFF = 4.5
SETTINGS = GraphSettings(cutoff=CUTOFF)
TINY_BB = {"width": 12, "n_layers": 2, "num_radial": 6, "cutoff": CUTOFF, "n_frames": 4}


def _graph(structure, settings=SETTINGS):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return structure_to_graph(structure, settings)
    finally:
        torch.set_default_dtype(old)


def _orthogonal(seed: int, proper: bool) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return torch.tensor(q, dtype=torch.float64)


def _rotated(g, R):
    h = g.clone()
    h.pos = g.pos @ R.T
    h.cell = g.cell @ R.T
    return h


class EnergyModel(nn.Module):
    """Backbone + energy head (+ optional direct-force head), returning a dict."""

    def __init__(self, backbone, forces: bool = False):
        super().__init__()
        self.backbone = backbone
        self.energy = EnergyHead(backbone.out_spec, hidden=[12])
        self.forces = DirectForceHead(backbone.out_spec, hidden=[12], cutoff=CUTOFF) if forces else None

    def forward(self, data):
        out = self.backbone(data)
        res = {"energy": self.energy(out, data)}
        if self.forces is not None:
            res["forces"] = self.forces(out, data)
        return res


def _model(seed=0, forces=True, **kw):
    torch.manual_seed(seed)
    return EnergyModel(LocalFrameBackbone(**{**TINY_BB, **kw}), forces).double().eval()


@pytest.fixture(scope="module")
def rattled():
    """A rattled 2-species fcc cell (8 atoms, no equidistant neighbours)."""
    rng = np.random.default_rng(11)
    base = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.9), ["Cu"], [[0, 0, 0]])
    base.make_supercell([2, 1, 1])
    species = ["Cu", "Au", "Cu", "Cu", "Au", "Cu", "Au", "Cu"]
    cart = base.cart_coords + rng.normal(0, 0.08, size=(8, 3))
    return Structure(base.lattice, species, cart, coords_are_cartesian=True)


# --------------------------------------------------------------------------------------
# heads
# --------------------------------------------------------------------------------------


def test_heads_registered_and_rebuildable():
    assert HEADS["energy"] is EnergyHead and HEADS["direct-forces"] is DirectForceHead
    e = EnergyHead(16)
    assert e.config == {"hidden": [64], "act": "silu", "reduce": "sum",
                        "species_offsets": True, "num_species": 119}
    assert EnergyHead(16, **e.config).state_dict().keys() == e.state_dict().keys()
    f = DirectForceHead(16)
    assert DirectForceHead(16, **f.config).state_dict().keys() == f.state_dict().keys()
    assert f.per_atom and f.row_shape == (3,)
    with pytest.raises(ValueError, match="median"):
        EnergyHead(16, reduce="median")
    with pytest.raises(ValueError, match="-2"):
        DirectForceHead(16, cutoff=-2.0)


def test_energy_invariant_and_extensive(rattled):
    m = _model()
    g = _graph(rattled)
    with torch.no_grad():
        e0 = m(g)["energy"]
        assert e0.shape == (1,)
        for seed, proper in ((0, True), (1, False), (2, True)):
            assert abs(float(m(_rotated(g, _orthogonal(seed, proper)))["energy"] - e0)) < 1e-10
        h = g.clone()
        h.pos = g.pos + torch.tensor([1.1, -0.4, 2.9], dtype=torch.float64)
        assert abs(float(m(h)["energy"] - e0)) < 1e-10
        # sum pooling: a 1x2x1 supercell has twice the energy
        sc = rattled.copy()
        sc.make_supercell([1, 2, 1])
        assert abs(float(m(_graph(sc))["energy"] - 2 * e0)) < 1e-9


def test_energy_head_on_any_int_backbone(rattled):
    torch.manual_seed(0)
    bb = build_backbone({"name": "cgcnn", "width": 8, "n_conv": 1}).double().eval()
    head = EnergyHead(bb.out_spec, hidden=[8]).double()
    g = _graph(rattled, GraphSettings(cutoff=8.0, max_neighbors=12))
    with torch.no_grad():
        e0 = head(bb(g), g)
        e1 = head(bb(_rotated(g, _orthogonal(3, False))), g)
    assert e0.shape == (1,) and abs(float(e1 - e0)) < 1e-10


def test_direct_forces_equivariant_translation_invariant_and_balanced(rattled):
    m = _model()
    g = _graph(rattled)
    with torch.no_grad():
        f0 = m(g)["forces"]
        assert f0.shape == (len(rattled), 3) and float(f0.abs().max()) > 1e-6
        assert float(f0.sum(0).abs().max()) < 1e-12  # f_ij = f_ji: Newton's third law
        for seed, proper in ((0, True), (1, False), (4, True)):
            R = _orthogonal(seed, proper)
            torch.testing.assert_close(m(_rotated(g, R))["forces"], f0 @ R.T, atol=1e-10, rtol=0)
        h = g.clone()
        h.pos = g.pos + torch.tensor([0.2, 0.3, -5.0], dtype=torch.float64)
        torch.testing.assert_close(m(h)["forces"], f0, atol=1e-10, rtol=0)
        perm = [5, 2, 7, 0, 1, 6, 3, 4]
        out = m(_graph(Structure.from_sites([rattled[i] for i in perm])))["forces"]
        torch.testing.assert_close(out, f0[perm], atol=1e-10, rtol=0)


def test_conservative_forces_match_finite_differences(rattled):
    m = _model(forces=False)
    g = _graph(rattled)
    _, forces = conservative_forces(m, g)
    assert forces.shape == (len(rattled), 3) and not forces.requires_grad
    assert float(forces.sum(0).abs().max()) < 1e-10  # translation invariance of E
    h = 1e-5
    pos0 = g.pos.detach().clone()
    fd = torch.zeros_like(pos0)
    with torch.no_grad():
        for i in range(len(rattled)):
            for a in range(3):
                e = []
                for sign in (1.0, -1.0):
                    p = pos0.clone()
                    p[i, a] += sign * h
                    g.pos = p
                    e.append(float(m(g)["energy"]))
                fd[i, a] = -(e[0] - e[1]) / (2 * h)
    assert float((forces - fd).abs().max()) < 1e-6
    # conservative forces rotate with the crystal, improper rotations included
    g.pos = pos0
    for seed, proper in ((0, True), (1, False)):
        R = _orthogonal(seed, proper)
        _, fr = conservative_forces(m, _rotated(g, R))
        torch.testing.assert_close(fr, forces @ R.T, atol=1e-10, rtol=0)


def test_conservative_forces_through_property_model(rattled):
    """The de-normalised energy is differentiated: forces scale with the normaliser's std."""
    task = make_task("energy")
    torch.manual_seed(0)
    model = build_model(
        {"backbone": {"name": "local-frame", **TINY_BB}, "heads": {"energy": {"name": "energy"}}},
        {"energy": task},
    ).double()
    g = _graph(rattled)
    model.eval()
    e1, f1 = conservative_forces(model, g)
    model.normalizers["energy"].std.fill_(2.0)
    model.normalizers["energy"].mean.fill_(-7.0)
    e2, f2 = conservative_forces(model, g)
    torch.testing.assert_close(f2, 2 * f1)
    torch.testing.assert_close(e2, 2 * e1 - 7.0)
    model.train()
    _, f3 = conservative_forces(model, g)
    assert f3.requires_grad  # create_graph in training: a force loss can be backpropagated
    with pytest.raises(ValueError, match="no head 'enthalpy'"):
        conservative_forces(model, g, energy_key="enthalpy")


# --------------------------------------------------------------------------------------
# EMT data
# --------------------------------------------------------------------------------------


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def emt_file(tmp_path_factory):
    return generate_emt_dataset(tmp_path_factory.mktemp("emt") / "emt.xyz.gz", n_configs=20, seed=0)


def test_emt_generation_is_reproducible(emt_file, tmp_path):
    again = generate_emt_dataset(tmp_path / "again.xyz.gz", n_configs=20, seed=0)
    other = generate_emt_dataset(tmp_path / "other.xyz.gz", n_configs=20, seed=1)
    assert _sha(again) == _sha(emt_file)
    assert _sha(other) != _sha(emt_file)
    plain = generate_emt_dataset(tmp_path / "plain.xyz", n_configs=3, seed=0)
    assert f'source="{EMT_SOURCE}"' in plain.read_text().splitlines()[1]
    with pytest.raises(ValueError, match="Fe"):
        generate_emt_dataset(tmp_path / "x.xyz", n_configs=2, elements=("Cu", "Fe"))
    with pytest.raises(ValueError, match="0"):
        generate_emt_dataset(tmp_path / "x.xyz", n_configs=0)


def test_emt_records(emt_file):
    recs = read_emt_records(emt_file)
    assert len(recs) == 20 and len({r.material_id for r in recs}) == 20
    sizes = {len(r.structure) for r in recs}
    assert sizes <= {4, 8, 16, 24, 32}
    elements = {el.symbol for r in recs for el in r.structure.composition}
    assert elements <= {"Cu", "Al", "Ni", "Pd", "Ag", "Pt", "Au"} and len(elements) >= 4
    assert any(len(r.structure.composition) == 2 for r in recs)  # alloys
    for r in recs:
        f = record_forces(r)
        assert f.shape == (len(r.structure), 3) and np.all(np.isfinite(f))
        assert np.isclose(r.labels["energy_per_atom"] * len(r.structure), r.labels["energy"])
        assert r.meta["source"] == EMT_SOURCE
        assert np.abs(f.sum(0)).max() < 1e-6  # EMT forces of a periodic cell balance


def test_emt_registry_entry(emt_file, tmp_path):
    from matxfer.data.registry import REGISTRY, load_dataset

    had = EMT_DATASET in REGISTRY
    try:
        spec = register_emt_dataset()
        assert register_emt_dataset() is spec  # idempotent
        assert spec.files == (EMT_FILE,) and "not DFT" in spec.source
        dest = tmp_path / EMT_FILE
        dest.parent.mkdir(parents=True)
        dest.write_bytes(emt_file.read_bytes())
        ds = load_dataset(EMT_DATASET, root=tmp_path, limit=5)
        assert len(ds.records) == 5 and not ds.failures
        assert ds.records[0].labels["energy"] == read_emt_records(emt_file)[0].labels["energy"]
    finally:
        if not had:
            REGISTRY.pop(EMT_DATASET, None)


def _emt_batch(path, n=8, max_atoms=16):
    recs = [r for r in read_emt_records(path) if len(r.structure) <= max_atoms][:n]
    graphs = []
    for r in recs:
        g = _graph(r.structure, GraphSettings(cutoff=4.0))
        g.energy = torch.tensor([r.labels["energy"]], dtype=torch.float64)
        g.forces = torch.tensor(record_forces(r), dtype=torch.float64)
        graphs.append(g)
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize("direct", [False, True], ids=["conservative", "direct"])
def test_energy_force_training_lowers_the_loss(emt_file, direct):
    batch = _emt_batch(emt_file)
    n_atoms = torch.bincount(batch.batch).to(torch.float64)
    torch.manual_seed(0)
    bb = LocalFrameBackbone(width=16, n_layers=1, n_frames=3, num_radial=6, cutoff=4.0)
    model = EnergyModel(bb, forces=direct).double().train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)

    def loss_fn():
        if direct:
            out = model(batch)
            energy, forces = out["energy"], out["forces"]
        else:
            energy, forces = conservative_forces(model, batch, create_graph=True)
        e_loss = (((energy - batch.energy) / n_atoms) ** 2).mean()
        return e_loss + ((forces - batch.forces) ** 2).mean()

    first = float(loss_fn().detach())
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    last = float(loss_fn().detach())
    assert np.isfinite(last) and last < 0.6 * first
