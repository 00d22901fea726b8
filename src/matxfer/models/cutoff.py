"""One cutoff: backbones and heads whose radial basis or envelope spans the graph's edges
read the graph cutoff.

A class takes part when its constructor has a ``cutoff`` argument (the convention of every
built-in radial network: the ``equivariant``, ``alignn`` and ``local-frame`` backbones, the
``edge-tensor``, ``edge-atom-tensor`` and ``direct-forces`` heads); a class names another
argument with ``graph_cutoff_arg = "..."``, or opts out with ``graph_cutoff_arg = None``.
Backbones whose cutoff is a fixed part of pretrained weights (SevenNet) have no such
argument and check the graphs themselves (``check_graph_settings``).

When a run's model is built (:func:`matxfer.train.setup.build_run_model`), the graph
cutoff is filled into every such config; a config that gives a different value is an error
naming both (already when the config is read: :func:`matxfer.config.check_cutoffs`).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

log = logging.getLogger(__name__)


def cutoff_arg(cls: type | None) -> str | None:
    """The constructor argument of ``cls`` that must equal the graph cutoff, or None."""
    if cls is None:
        return None
    name = getattr(cls, "graph_cutoff_arg", "cutoff")
    if not name:
        return None
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    return name if name in params else None


def _same(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-9
    except (TypeError, ValueError):
        return False


def with_graph_cutoff(cfg: dict[str, Any], cls: type | None, cutoff: float, where: str) -> dict[str, Any]:
    """``cfg`` with the graph cutoff filled in, if ``cls`` reads one.

    Args:
        cfg: a backbone or head config (``{"name": ..., ...}``).
        cls: its registered class.
        cutoff: the graph cutoff (Angstrom).
        where: the config key, for the error message (``model.backbone``).

    Raises:
        ValueError: ``cfg`` gives a different cutoff (the message names both values).
    """
    arg = cutoff_arg(cls)
    if arg is None:
        return cfg
    given = cfg.get(arg)
    if given is not None:
        if not _same(given, cutoff):
            raise ValueError(
                f"{where}.{arg}={given!r} disagrees with the graph cutoff {float(cutoff):g} A "
                f"(graph.cutoff); one cutoff serves the graphs, the backbone and the heads: "
                f"drop {where}.{arg} or set graph.cutoff={given}"
            )
        return cfg
    return {**cfg, arg: float(cutoff)}


def check_parent_cutoff(bb_cfg: dict[str, Any], cls: type | None, cutoff: float) -> None:
    """Log a warning when a pretrained backbone's stored cutoff differs from its graphs'.

    Checkpoints written before the cutoffs were tied together (or imported models) may
    have such a mismatch; their weights were trained with it, so it is kept as it is.
    """
    arg = cutoff_arg(cls)
    if arg is None or bb_cfg.get(arg) is None or _same(bb_cfg[arg], cutoff):
        return
    log.warning(
        "the pretrained backbone's %s=%g differs from its graph cutoff %g A; kept as trained "
        "(edges between the two radii contribute as they did in pretraining)",
        arg, float(bb_cfg[arg]), float(cutoff),
    )
