"""Third-party pretrained models: original CGCNN checkpoints, and the CHGNet and SevenNet
backbones (defined beside the other backbones, in :mod:`matxfer.models.backbones`).

- :mod:`matxfer.pretrained.cgcnn_import`: ``matxfer import-cgcnn`` turns a released CGCNN
  ``*.pth.tar`` into a matxfer checkpoint (``cgcnn`` backbone + ``scalar`` head, normaliser,
  element table inside) and reproduces the original neighbour lists for exact parity.
- :mod:`matxfer.models.backbones.chgnet`: CHGNet 0.3.0 as the ``chgnet`` backbone
  (:mod:`matxfer.models.registry` imports that module, which registers it; its ``chgnet``
  dependency is imported only when a backbone is built), and feature caching for frozen
  backbones.
- :mod:`matxfer.models.backbones.sevennet`: SevenNet-0 (``sevenn`` wheel) as the
  equivariant ``sevennet`` backbone (per-atom irreps of every interaction block; ``sevenn``
  is imported only when a backbone is built; registered the same way).

The names below are imported from their submodules on first access.
"""

from __future__ import annotations

#: public name -> the submodule that defines it (imported on first access, so that the
#: command line can import ``matxfer.pretrained.cli`` without torch)
_LAZY = {
    "CompatPredictor": "cgcnn_import",
    "cgcnn_compat_graph": "cgcnn_import",
    "cgcnn_neighbor_list": "cgcnn_import",
    "import_cgcnn": "cgcnn_import",
    "read_original_checkpoint": "cgcnn_import",
    "CachedBackbone": "matxfer.models.backbones.chgnet",
    "CHGNetBackbone": "matxfer.models.backbones.chgnet",
    "MissingDependencyError": "matxfer.models.backbones.chgnet",
    "attach_features": "matxfer.models.backbones.chgnet",
    "cache_features": "matxfer.models.backbones.chgnet",
    "SevenNetBackbone": "matxfer.models.backbones.sevennet",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = _LAZY[name]
        module = module if "." in module else f"{__name__}.{module}"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
