"""Exceptions shared across the package."""

from __future__ import annotations


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed (also a ValueError, so the CLI reports it)."""
