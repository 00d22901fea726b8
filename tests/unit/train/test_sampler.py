"""The task-balanced sampler of multi-property training: rare tasks are not starved."""

from __future__ import annotations

import torch
from torch_geometric.data import Data

from matxfer.keys import mask_key
from matxfer.tasks import make_task
from matxfer.train.lightning import task_balanced_sampler


def _graph(has_eform: bool, has_bulk: bool) -> Data:
    g = Data(x=torch.zeros(2, 1))
    g[mask_key("formation_energy_per_atom")] = torch.tensor([has_eform])
    g[mask_key("bulk_modulus_vrh")] = torch.tensor([has_bulk])
    return g


def test_rare_task_drawn_as_often_as_common_one():
    tasks = {t: make_task(t) for t in ("formation_energy_per_atom", "bulk_modulus_vrh")}
    # 900 crystals with a formation energy only, 100 with a bulk modulus only
    graphs = [_graph(True, False) for _ in range(900)] + [_graph(False, True) for _ in range(100)]
    sampler = task_balanced_sampler(graphs, tasks, torch.Generator().manual_seed(0))
    w = sampler.weights
    assert torch.allclose(w[:900], torch.full((900,), 1 / 900, dtype=w.dtype))
    assert torch.allclose(w[900:], torch.full((100,), 1 / 100, dtype=w.dtype))
    draws = torch.tensor(list(iter(sampler)))
    assert len(draws) == len(graphs)
    frac_rare = (draws >= 900).double().mean().item()
    assert 0.4 < frac_rare < 0.6  # uniform sampling would give 0.1


def test_crystal_weight_follows_its_rarest_task_and_unlabelled_never_drawn():
    tasks = {t: make_task(t) for t in ("formation_energy_per_atom", "bulk_modulus_vrh")}
    graphs = [_graph(True, False)] * 6 + [_graph(True, True)] * 2 + [_graph(False, False)] * 2
    sampler = task_balanced_sampler(graphs, tasks, torch.Generator().manual_seed(1))
    w = sampler.weights
    # formation energy: 8 crystals, bulk modulus: 2 crystals
    assert torch.allclose(w[0], torch.tensor(1 / 8, dtype=w.dtype))
    assert torch.allclose(w[6], torch.tensor(1 / 2, dtype=w.dtype))
    assert w[8] == 0 and w[9] == 0
    assert not any(i >= 8 for i in iter(sampler))
