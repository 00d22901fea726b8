"""Strict JSON output: NaN and infinities become ``null``, never the non-standard ``NaN``."""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (dicts, lists, tuples, numpy
    scalars and arrays walked recursively; other objects left to the encoder)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, int, bool, type(None))):
        return obj
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalars and arrays, tensors
        return json_safe(obj.tolist())
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`json_safe` (``obj``) with ``allow_nan=False``."""
    kwargs.setdefault("default", float)
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
