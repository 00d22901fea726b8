"""Third-party pretrained models: original CGCNN checkpoints and the CHGNet backbone.

Importing this package registers the ``chgnet`` backbone (its ``chgnet`` dependency is only
imported when one is built) and the ``cgcnn`` checkpoint importer.
"""

from __future__ import annotations

from matxfer.pretrained.chgnet_backbone import (
    CachedBackbone,
    CHGNetBackbone,
    MissingDependencyError,
    attach_features,
    cache_features,
)

__all__ = [
    "CHGNetBackbone",
    "CachedBackbone",
    "MissingDependencyError",
    "attach_features",
    "cache_features",
]
