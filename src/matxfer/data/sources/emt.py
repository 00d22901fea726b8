"""The synthetic EMT set (generated on first use, see :mod:`matxfer.data.emt`)."""

from __future__ import annotations

from matxfer.data.emt import emt_spec
from matxfer.data.registry import register

register(emt_spec())
