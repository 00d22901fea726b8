"""Type aliases of the core interfaces (for annotations; nothing here runs).

- :data:`OutSpec`: what a backbone declares in ``out_spec``: an ``int`` feature width
  (invariant backbones) or ``e3nn.o3.Irreps`` (equivariant ones; ``str`` irreps are
  accepted where heads read it).
- :data:`Graph`: a crystal graph or a batch of them (``torch_geometric`` ``Data`` /
  ``Batch``; fields in :mod:`matxfer.keys`).
- :data:`BackboneOutput`: ``{keys.NODE_FEATURES: [n_atoms, width or irreps.dim]}``, with an
  optional ``keys.EDGE_FEATURES: [n_edges, width]``.
- :data:`Predictions`: task name -> tensor (normalised from ``forward``, physical units and
  Cartesian from ``predict``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias, Union

from torch import Tensor

if TYPE_CHECKING:
    from e3nn import o3
    from torch_geometric.data import Data

OutSpec: TypeAlias = Union[int, "o3.Irreps", str]
Graph: TypeAlias = "Data"
BackboneOutput: TypeAlias = dict[str, Tensor]
Predictions: TypeAlias = dict[str, Tensor]

__all__ = ["BackboneOutput", "Graph", "OutSpec", "Predictions"]
