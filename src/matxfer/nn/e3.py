"""Generic e3nn building blocks: a fast gate nonlinearity, the grouped edge tensor product
and e3nn-style re-initialisation.

Used by the ``equivariant`` backbone (:mod:`matxfer.models.backbones.equivariant`), the
tensor heads and the SevenNet adapter; they know nothing about backbones or targets.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from e3nn import o3
from torch import Tensor, nn
from torch.nn import functional as F

_ACTS = {"silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


@functools.cache
def second_moment_scale(act: str) -> float:
    """``1 / sqrt(E[act(z)^2])`` for ``z ~ N(0, 1)`` (Gauss-Hermite quadrature, cached)."""
    x, w = np.polynomial.hermite_e.hermegauss(120)
    fx = _ACTS[act](torch.tensor(x, dtype=torch.float64)).numpy()
    return float(1.0 / np.sqrt(np.sum(w * fx**2) / np.sqrt(2.0 * np.pi)))


class Gate(nn.Module):
    """Gate nonlinearity: activations on scalars, sigmoid gates multiplying ``l > 0`` irreps.

    Input layout ``scalars + gates + gated`` (:attr:`irreps_in`), output ``scalars + gated``
    (:attr:`irreps_out`). Even scalars get SiLU, odd scalars tanh (odd, so parity is kept),
    each gate (one ``0e`` per gated irrep) a sigmoid; every activation is rescaled to unit
    second moment for unit-normal inputs. Same function as ``e3nn.nn.Gate`` with these
    activations, built without its sampling-based normalisation (much faster to construct).

    Args:
        irreps_gated_out: irreps to produce (scalars ``0e``/``0o`` and gated ``l > 0``).
    """

    def __init__(self, irreps_gated_out: o3.Irreps):
        super().__init__()
        irreps = o3.Irreps(irreps_gated_out)
        scalars = o3.Irreps([(m, ir) for m, ir in irreps if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in irreps if ir.l > 0])
        gates = o3.Irreps([(gated.num_irreps, (0, 1))]) if gated.num_irreps else o3.Irreps("")
        self.irreps_in = scalars + gates + gated
        self.irreps_out = scalars + gated
        self.n_scalars = scalars.dim
        self.n_gates = gates.dim
        scale = []
        for mul, ir in scalars:
            act = "silu" if ir.p == 1 else "tanh"
            scale += [second_moment_scale(act)] * mul
        is_odd = [ir.p == -1 for mul, ir in scalars for _ in range(mul)]
        dt = torch.get_default_dtype()
        self.register_buffer("scalar_scale", torch.tensor(scale, dtype=dt), persistent=False)
        self.register_buffer("odd", torch.tensor(is_odd, dtype=torch.bool), persistent=False)
        self.gate_scale = second_moment_scale("sigmoid")
        # gate index of every gated component
        repeat = [ir.dim for mul, ir in gated for _ in range(mul)]
        index = torch.repeat_interleave(
            torch.arange(len(repeat)), torch.tensor(repeat, dtype=torch.long)
        )
        self.register_buffer("gate_index", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., irreps_in.dim]`` -> ``[..., irreps_out.dim]``."""
        n_v = x.shape[-1] - self.n_scalars - self.n_gates
        s, g, v = x.split([self.n_scalars, self.n_gates, n_v], dim=-1)
        s = torch.where(self.odd, torch.tanh(s), F.silu(s)) * self.scalar_scale.to(x.dtype)
        if self.n_gates == 0:
            return s
        g = torch.sigmoid(g) * self.gate_scale
        return torch.cat([s, v * g.index_select(-1, self.gate_index)], dim=-1)


@torch.no_grad()
def reset_e3nn_parameters(module: nn.Module) -> int:
    """Re-draw the weights of the e3nn layers inside ``module`` as e3nn initialises them.

    e3nn's ``o3.Linear`` and ``FullyConnectedNet`` layers have no ``reset_parameters``;
    their weights are standard normal (the normalisation is applied in ``forward``) and
    ``o3.Linear`` biases start at zero. Returns the number of layers reset.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, o3.Linear):
            if m.weight.numel():
                m.weight.normal_()
            if getattr(m, "bias", None) is not None and m.bias.numel():
                m.bias.zero_()
            n += 1
        elif type(m).__name__ == "_Layer" and isinstance(getattr(m, "weight", None), nn.Parameter):
            m.weight.normal_()  # a FullyConnectedNet layer
            n += 1
    return n


def _keep_path(l1: int, l2: int, l3: int, max_path_l: int | None, sh_l_nonscalar: int) -> bool:
    """Whether the path ``l1 x l2 -> l3`` is built.

    Scalar inputs (``l1 = 0``) and plain neighbour sums (``l2 = 0``) are always kept;
    other paths need ``l2 <= sh_l_nonscalar`` and ``l1 + l2 + l3 <= max_path_l``.
    """
    if l1 == 0 or l2 == 0:
        return True
    if l2 > sh_l_nonscalar:
        return False
    return max_path_l is None or l1 + l2 + l3 <= max_path_l


class EdgeTensorProduct(nn.Module):
    """``uvu`` tensor product of neighbour irreps with edge harmonics, summed over neighbours.

    For every input block ``(mul, l1 p1)`` (channels ``u``), every harmonic degree ``l2`` and
    every output ``l3`` allowed by the triangle rule whose irrep ``(l3, p1 (-1)^l2)`` is in
    ``wanted``, the path output of edge ``e = (j -> i)`` is

        out[e, u, :] = w[e, path, u] sqrt(2 l3 + 1) sum_ab C(l1,l2,l3)[a, b, :] x_j[u, a] Y[e, b]

    with ``C`` e3nn's Wigner-3j symbols: exactly ``e3nn.o3.TensorProduct`` with ``uvu``
    instructions, ``irrep_normalization="component"`` and ``path_normalization="element"``
    (each path writes its own output block). It is computed per input block as
    ``M = Y @ C_big`` (edge geometry only, shared by every layer with the same paths),
    a ``(2 l1 + 1)``-term contraction with the channels, the path weights broadcast over
    each ``l3`` segment, and a scatter-sum to the centre atoms, instead of one einsum per
    path: on CPU this is several times faster and avoids slicing every path.

    Args:
        irreps_in: irreps of the node features (sorted and simplified).
        l_max_sh: highest harmonic degree.
        wanted: output irreps to produce.
        max_path_l: drop paths of non-scalar inputs (``l1 > 0``) with ``l1 + l2 + l3``
            above this (``None``: keep all). Paths of scalar inputs are always kept (they
            are cheap and the only way harmonics of every degree enter), and so are the
            ``l2 = 0`` paths (a radial-weighted neighbour sum of every irrep).
        sh_l_nonscalar: highest harmonic degree ``l2`` combined with non-scalar inputs
            (``None``: ``l_max_sh``).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        l_max_sh: int,
        wanted: set,
        max_path_l: int | None = None,
        sh_l_nonscalar: int | None = None,
    ):
        super().__init__()
        if sh_l_nonscalar is None:
            sh_l_nonscalar = l_max_sh
        irreps_in = o3.Irreps(irreps_in)
        if irreps_in != irreps_in.sort().irreps.simplify():
            raise ValueError(f"EdgeTensorProduct needs sorted, simplified irreps, got {irreps_in}")
        self.irreps_in = irreps_in
        n_sh = (l_max_sh + 1) ** 2
        dtype = torch.get_default_dtype()
        self.groups: list[dict] = []
        mid: list[tuple[int, o3.Irrep]] = []
        mid_cols: list[list[int]] = []
        self.paths: list[tuple[int, int, int]] = []  # (block, l2, unsorted output index)
        raw_offset = 0
        w_offset = 0
        x_offset = 0
        for block, (mul, ir_in) in enumerate(irreps_in):
            l1, a = ir_in.l, ir_in.dim
            by_l3: dict[int, list[int]] = {}
            for l2 in range(l_max_sh + 1):
                for l3 in range(abs(l1 - l2), l1 + l2 + 1):
                    if o3.Irrep(l3, ir_in.p * (-1) ** l2) not in wanted:
                        continue
                    if not _keep_path(l1, l2, l3, max_path_l, sh_l_nonscalar):
                        continue
                    by_l3.setdefault(l3, []).append(l2)
            x_slice = (x_offset, x_offset + mul * a)
            x_offset += mul * a
            if not by_l3:
                continue
            # columns: l3 segments in increasing l3; inside, paths (l2 increasing) x (2 l3 + 1)
            n_k = sum(len(l2s) * (2 * l3 + 1) for l3, l2s in by_l3.items())
            cbig = torch.zeros(n_sh, a, n_k, dtype=torch.float64)
            segments = []
            k0 = 0
            # raw layout of this block: per segment [mul, n_paths, 2 l3 + 1]
            for l3 in sorted(by_l3):
                l2s = by_l3[l3]
                d3 = 2 * l3 + 1
                seg_raw = raw_offset
                for q, l2 in enumerate(l2s):
                    c = o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * d3**0.5
                    kq = k0 + q * d3
                    cbig[l2 * l2 : l2 * l2 + 2 * l2 + 1, :, kq : kq + d3] = c.permute(1, 0, 2)
                    cols = [
                        seg_raw + (u * len(l2s) + q) * d3 + m for u in range(mul) for m in range(d3)
                    ]
                    self.paths.append((block, l2, len(mid)))
                    mid.append((mul, o3.Irrep(l3, ir_in.p * (-1) ** l2)))
                    mid_cols.append(cols)
                segments.append(
                    {
                        "l3": l3,
                        "n_paths": len(l2s),
                        "k": (k0, k0 + len(l2s) * d3),
                        "w": (w_offset, w_offset + len(l2s) * mul),
                    }
                )
                k0 += len(l2s) * d3
                raw_offset += mul * len(l2s) * d3
                w_offset += len(l2s) * mul
            self.register_buffer(
                f"cbig_{block}", cbig.reshape(n_sh, a * n_k).to(dtype), persistent=False
            )
            key = (l1, tuple((l3, tuple(by_l3[l3])) for l3 in sorted(by_l3)))
            self.groups.append(
                {
                    "block": block,
                    "key": key,
                    "mul": mul,
                    "a": a,
                    "n_k": n_k,
                    "x_slice": x_slice,
                    "segments": segments,
                }
            )
        if not mid:
            raise ValueError(f"no tensor-product path from {irreps_in} reaches {sorted(wanted)}")
        self._x_sizes = [mul * ir.dim for mul, ir in irreps_in]
        self._w_sizes = []
        for g in self.groups:
            g["x_part"] = g["block"]
            g["k_sizes"] = [seg["k"][1] - seg["k"][0] for seg in g["segments"]]
            for seg in g["segments"]:
                seg["w_part"] = len(self._w_sizes)
                self._w_sizes.append(seg["w"][1] - seg["w"][0])
        self.raw_dim = raw_offset
        self.weight_numel = w_offset
        irreps_mid = o3.Irreps(mid)
        sorted_mid, perm, inv = irreps_mid.sort()
        gather = [c for k in range(len(mid)) for c in mid_cols[inv[k]]]
        self.register_buffer("mid_index", torch.tensor(gather, dtype=torch.long), False)
        #: output irreps (sorted, simplified)
        self.irreps_out = sorted_mid.simplify()
        #: output irreps before simplification (one entry per path)
        self.irreps_mid = sorted_mid
        #: (block, l2, index in :attr:`irreps_mid`) of every path, in weight order
        self.paths = [(blk, l2, perm[k]) for blk, l2, k in self.paths]

    def edge_basis(self, sh: Tensor, cache: dict | None = None) -> list[Tensor]:
        """``M = Y @ C_big`` of every input block: ``[E, 2 l1 + 1, K]`` each.

        Cached by path set, so later layers with the same paths reuse it.

        Args:
            sh: ``[E, (l_max_sh + 1)^2]`` edge spherical harmonics.
            cache: dict shared by the layers of one forward pass.
        """
        out = []
        for g in self.groups:
            key = g["key"]
            if cache is not None and key in cache:
                out.append(cache[key])
                continue
            cbig = getattr(self, f"cbig_{g['block']}").to(sh.dtype)
            m = (sh @ cbig).view(sh.shape[0], g["a"], g["n_k"])
            if cache is not None:
                cache[key] = m
            out.append(m)
        return out

    def forward(
        self,
        x: Tensor,
        edge_src: Tensor,
        edge_dst: Tensor,
        basis: list[Tensor],
        weight: Tensor,
        num_nodes: int,
    ) -> Tensor:
        """Sum of the path outputs over each atom's incoming edges.

        Args:
            x: ``[n_atoms, irreps_in.dim]`` node features.
            edge_src: ``[E]`` neighbour index ``j``.
            edge_dst: ``[E]`` centre index ``i``.
            basis: :meth:`edge_basis` of the edges.
            weight: ``[E, weight_numel]`` per-edge path weights.
            num_nodes: number of atoms.

        Returns:
            ``[n_atoms, irreps_out.dim]`` (sorted, simplified layout).
        """
        n_e = edge_src.shape[0]
        # split (not slice): the backward of one split is one concatenation
        xs_all = x.split(self._x_sizes, dim=1)
        ws_all = weight.split(self._w_sizes, dim=1)
        outs = []
        for g, m in zip(self.groups, basis):
            mul, a = g["mul"], g["a"]
            # neighbour channels, component-major: a x [E, mul]
            xs = xs_all[g["x_part"]].index_select(0, edge_src).view(n_e, mul, a)
            xa = xs.transpose(1, 2).contiguous().unbind(dim=1)
            ma = m.unbind(dim=1)  # a x [E, K]
            y = xa[0].unsqueeze(-1) * ma[0].unsqueeze(1)
            for i in range(1, a):
                y = y.addcmul(xa[i].unsqueeze(-1), ma[i].unsqueeze(1))
            # path weights, broadcast over the 2 l3 + 1 components of each path
            for seg, yk in zip(g["segments"], y.split(g["k_sizes"], dim=2)):
                n_p, d3 = seg["n_paths"], 2 * seg["l3"] + 1
                w = ws_all[seg["w_part"]].view(n_e, n_p, mul).transpose(1, 2)
                yw = (yk.reshape(n_e, mul, n_p, d3) * w.unsqueeze(-1)).reshape(n_e, -1)
                outs.append(yw.new_zeros((num_nodes, yw.shape[1])).index_add_(0, edge_dst, yw))
        raw = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return raw.index_select(1, self.mid_index)
