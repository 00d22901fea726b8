"""CGCNN's dense fixed-k path computes the same function as its sparse path."""

from __future__ import annotations

import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch.nn import functional as F
from torch_geometric.data import Batch

from matxfer.data.graphs import GraphSettings, structure_to_graph
from matxfer.models.backbones.cgcnn import CGCNNConv, neighbours_per_atom
from matxfer.models.registry import build_backbone


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _formula(conv: CGCNNConv, v, src, dst, u):
    """The CGCNN update written out edge by edge (concatenate, one Linear, BN over edges)."""
    z = torch.cat([v[dst], v[src], u], dim=-1)
    gate, core = conv.bn1(conv.fc_full(z)).chunk(2, dim=-1)
    msg = torch.sigmoid(gate) * F.softplus(core)
    summed = torch.zeros_like(v).index_add(0, dst, msg)
    return F.softplus(v + conv.bn2(summed))


def _fixed_k_edges(n: int, k: int, gen: torch.Generator):
    dst = torch.arange(n).repeat_interleave(k)
    src = torch.randint(0, n, (n * k,), generator=gen)
    return src, dst


@pytest.mark.parametrize("train", [True, False])
def test_dense_sparse_and_formula_agree(float64, train):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    n, k, width, g = 7, 5, 6, 4
    conv = CGCNNConv(width, g).train(train)
    for bn in (conv.bn1, conv.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    src, dst = _fixed_k_edges(n, k, gen)
    u = torch.rand(n * k, g, generator=gen)
    v0 = torch.randn(n, width, generator=gen)
    assert neighbours_per_atom(dst, n) == k

    outs, grads = [], []
    for mode in ("dense", "sparse", "formula"):
        v = v0.clone().requires_grad_(True)
        conv.zero_grad()
        if mode == "dense":
            out = conv(v, src, dst, u, k)
        elif mode == "sparse":
            out = conv(v, src, dst, u)
        else:
            out = _formula(conv, v, src, dst, u)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([v.grad.clone()] + [p.grad.clone() for p in conv.parameters()])
    for other in (1, 2):
        torch.testing.assert_close(outs[0], outs[other], rtol=1e-12, atol=1e-12)
        for a, b in zip(grads[0], grads[other]):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_sparse_path_is_order_independent(float64):
    gen = torch.Generator().manual_seed(1)
    n, k = 5, 3
    conv = CGCNNConv(4, 3).eval()
    src, dst = _fixed_k_edges(n, k, gen)
    u = torch.rand(n * k, 3, generator=gen)
    v = torch.randn(n, 4, generator=gen)
    perm = torch.randperm(n * k, generator=gen)
    assert neighbours_per_atom(dst[perm], n) is None  # shuffled: not centre by centre
    torch.testing.assert_close(conv(v, src[perm], dst[perm], u[perm]), conv(v, src, dst, u, k))


def test_neighbours_per_atom_detects_the_layout():
    assert neighbours_per_atom(torch.tensor([0, 0, 1, 1, 2, 2]), 3) == 2
    assert neighbours_per_atom(torch.tensor([0, 0, 0, 1, 1, 2]), 3) is None  # 3, 2, 1
    assert neighbours_per_atom(torch.tensor([0, 1, 0, 1]), 2) is None  # not grouped
    assert neighbours_per_atom(torch.tensor([0, 0, 1]), 2) is None  # E not a multiple of n
    assert neighbours_per_atom(torch.zeros(0, dtype=torch.long), 2) is None


def _structures():
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0] * 3, [0.5] * 3]
    )
    fe = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    odd = Structure(
        Lattice.from_parameters(4.1, 5.3, 6.2, 80, 95, 101),
        ["Si", "O", "O", "Mg"],
        [[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.4, 0.7, 0.15], [0.85, 0.55, 0.5]],
    )
    return [nacl, fe, odd]


@pytest.mark.parametrize("keep_shell", [False, True])
def test_backbone_dense_equals_sparse_on_crystal_graphs(float64, keep_shell):
    """A batch of graphs cut at 12 neighbours without keep_shell takes the dense path (12 per
    atom); with keep_shell NaCl keeps 18 (6 + 12), BCC Fe 14 (8 + 6) and the triclinic cell
    12, so the batch takes the sparse one. Forcing the sparse path changes nothing."""
    settings = GraphSettings(cutoff=8.0, max_neighbors=12, keep_shell=keep_shell)
    batch = Batch.from_data_list([structure_to_graph(s, settings) for s in _structures()])
    k = neighbours_per_atom(batch.edge_index[1], batch.num_nodes)
    assert k == (None if keep_shell else 12)

    torch.manual_seed(0)
    bb = build_backbone({"name": "cgcnn", "width": 8, "n_conv": 2}).train()
    out_dense = bb(batch)["node_feats"]
    bb.dense_neighbours = False
    out_sparse = bb(batch)["node_feats"]
    torch.testing.assert_close(out_dense, out_sparse, rtol=1e-12, atol=1e-12)


def test_checkpoint_keys_unchanged():
    bb = build_backbone({"name": "cgcnn", "n_conv": 2})
    keys = {k for k in bb.state_dict() if k.startswith("convs.0.")}
    assert keys == {
        "convs.0.fc_full.weight",
        "convs.0.fc_full.bias",
        *(
            f"convs.0.{bn}.{s}"
            for bn in ("bn1", "bn2")
            for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ),
    }
