"""Third-party pretrained models: original CGCNN checkpoints and the CHGNet backbone.

- :mod:`matxfer.pretrained.cgcnn_import`: ``matxfer import-cgcnn`` turns a released CGCNN
  ``*.pth.tar`` into a matxfer checkpoint (``cgcnn`` backbone + ``scalar`` head, normaliser,
  element table inside) and reproduces the original neighbour lists for exact parity.
- :mod:`matxfer.pretrained.chgnet_backbone`: CHGNet 0.3.0 as the ``chgnet`` backbone
  (importing this package registers it; its ``chgnet`` dependency is imported only when a
  backbone is built), and feature caching for frozen backbones.
- :mod:`matxfer.pretrained.sevennet_backbone`: SevenNet-0 (``sevenn`` wheel) as the
  equivariant ``sevennet`` backbone (per-atom irreps of every interaction block; ``sevenn``
  is imported only when a backbone is built).
"""

from __future__ import annotations

from matxfer.pretrained.cgcnn_import import (
    CompatPredictor,
    cgcnn_compat_graph,
    cgcnn_neighbor_list,
    import_cgcnn,
    read_original_checkpoint,
)
from matxfer.pretrained.chgnet_backbone import (
    CachedBackbone,
    CHGNetBackbone,
    MissingDependencyError,
    attach_features,
    cache_features,
)
from matxfer.pretrained.sevennet_backbone import SevenNetBackbone

__all__ = [
    "CHGNetBackbone",
    "CachedBackbone",
    "CompatPredictor",
    "MissingDependencyError",
    "SevenNetBackbone",
    "attach_features",
    "cache_features",
    "cgcnn_compat_graph",
    "cgcnn_neighbor_list",
    "import_cgcnn",
    "read_original_checkpoint",
]
