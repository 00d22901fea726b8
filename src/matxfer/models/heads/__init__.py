"""Built-in heads (importing this package registers them).

Every other module placed in this package (e.g. ``edge_tensor``) is imported too, so a head
registers itself just by living here.
"""

from __future__ import annotations

from matxfer.models.heads.scalar import ScalarHead
from matxfer.models.heads.tensor import BornHead, TensorHead
from matxfer.models.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["BornHead", "ScalarHead", "TensorHead"]
