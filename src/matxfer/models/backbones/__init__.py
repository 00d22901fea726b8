"""Built-in backbones (importing this package registers them).

Every other module placed in this package (e.g. ``alignn``) is imported too, so a backbone
registers itself just by living here.
"""

from __future__ import annotations

from matxfer.models.backbones.cgcnn import CGCNN, CGCNNAttention
from matxfer.models.backbones.equivariant import EquivariantBackbone
from matxfer.models.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["CGCNN", "CGCNNAttention", "EquivariantBackbone"]
