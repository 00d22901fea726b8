"""matxfer: transfer learning for crystal-property prediction."""

from __future__ import annotations

from matxfer._version import __version__

__all__ = ["__version__"]
