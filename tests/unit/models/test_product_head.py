"""The tensor-product head: exact O(3) equivariance in float64, irreps it can create from
products (3o from 1o x 2e), and a clear error when even products cannot make the target."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch, Data

from matxfer.models.heads.tensor import ProductTensorHead

SEVENNET_LIKE = "16x0e+8x1o+4x2e"  # no l = 3, as SevenNet-0's features



@pytest.mark.parametrize("formula", ["ij=ji", "ijk=ikj", "ijkl=jikl=klij"])
def test_equivariant_under_proper_and_improper_rotations(f64, formula):
    torch.manual_seed(0)
    head = ProductTensorHead(SEVENNET_LIKE, formula, mul=4, product_mul=4)
    irreps_in = o3.Irreps(SEVENNET_LIKE)
    x = torch.randn(7, irreps_in.dim)
    data = Batch.from_data_list([Data(num_nodes=3), Data(num_nodes=4)])
    y = head({"node_feats": x}, data)
    assert y.shape == (2, head.irreps_out.dim)
    for r in (o3.rand_matrix(), -o3.rand_matrix()):
        yr = head({"node_feats": x @ irreps_in.D_from_matrix(r).T}, data)
        torch.testing.assert_close(yr, y @ head.irreps_out.D_from_matrix(r).T, rtol=1e-10, atol=1e-10)


def test_piezo_irreps_come_from_products_only(f64):
    # the features have no 2o / 3o: a linear head cannot give them, the product head does
    torch.manual_seed(1)
    head = ProductTensorHead(SEVENNET_LIKE, "ijk=ikj", mul=4, product_mul=4)
    x = torch.randn(5, o3.Irreps(SEVENNET_LIKE).dim)
    y = head({"node_feats": x}, Batch.from_data_list([Data(num_nodes=5)]))
    blocks = head.irreps_out.slices()
    odd_high = [sl for (mul, ir), sl in zip(head.irreps_out, blocks) if ir.l >= 2]
    assert all(float(y[0, sl].abs().max()) > 0 for sl in odd_high)
    from matxfer.models.heads.tensor import TensorHead

    with pytest.raises(ValueError, match="lack"):
        TensorHead(SEVENNET_LIKE, "ijk=ikj")


def test_unreachable_irreps_are_a_clear_error():
    with pytest.raises(ValueError, match="cannot make"):
        ProductTensorHead("8x0e", "ijk=ikj")
    with pytest.raises(ValueError, match="irreps"):
        ProductTensorHead(64, "ij=ji")
