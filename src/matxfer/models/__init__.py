"""Backbones, heads and the multi-task :class:`PropertyModel`.

Classes are looked up by name through :mod:`matxfer.models.registry` only.
"""

from __future__ import annotations

from matxfer.models.base import Backbone, Head, PropertyModel
from matxfer.models.registry import (
    BACKBONES,
    HEADS,
    build_backbone,
    build_head,
    build_model,
    register_backbone,
    register_head,
)

__all__ = [
    "BACKBONES",
    "HEADS",
    "Backbone",
    "Head",
    "PropertyModel",
    "build_backbone",
    "build_head",
    "build_model",
    "register_backbone",
    "register_head",
]
