"""Resuming a run: its directory, ``last.ckpt``, RNG states and the CSV log.

A rerun on a run directory continues from ``last.ckpt`` and ends with the same weights as an
uninterrupted run; a rerun with a different config is refused (naming the differing keys)
unless ``force`` is given, which starts afresh (see :mod:`matxfer.train.loop`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from matxfer.config import RunConfig, to_dict

LAST_CKPT = "last.ckpt"
#: config keys that may differ between a run and its rerun
_RESUME_IGNORED_KEYS = {"out"}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts (``out`` ignored)."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in _RESUME_IGNORED_KEYS)
    return [k for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")]


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state training draws from, as tensors, lists and numbers."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [t.clone() for t in torch.cuda.get_rng_state_all()]
    return {
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": [int(x) for x in py_state], "gauss": gauss},
        "generator": None if generator is None else generator.get_state().clone(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def prepare_run_dir(out: Path, cfg: RunConfig, force: bool = False) -> dict[str, Any] | None:
    """Check a run directory before training; return its ``last.ckpt`` to resume from, or None.

    A directory holding a run (``last.ckpt`` or ``config.yaml``) of a different config is
    refused unless ``force``. With ``force``, or when there is nothing to resume, the earlier
    checkpoints and metrics are removed and training starts afresh.

    Raises:
        ValueError: the config differs (the message names the differing keys), or
            ``last.ckpt`` is unreadable.
    """
    from matxfer.checkpoint import load_checkpoint

    last = out / LAST_CKPT
    new = to_dict(cfg)
    ckpt = None
    old = None
    if last.is_file() and not force:
        try:
            ckpt = load_checkpoint(last)
        except ValueError as exc:
            raise ValueError(f"{exc}; rerun with --force to start {out} afresh") from None
        if "resume" not in ckpt:
            raise ValueError(f"{last} holds no resume state; rerun with --force to start afresh")
        old = ckpt.get("config") or {}
    elif (out / "config.yaml").is_file() and not force:
        old = yaml.safe_load((out / "config.yaml").read_text()) or {}
    if old is not None:
        diff = config_differences(old, new)
        if diff:
            fo, fn = _flatten(old), _flatten(new)
            shown = ", ".join(
                f"{k} ({fo.get(k, '<absent>')!r} -> {fn.get(k, '<absent>')!r})" for k in diff[:8]
            )
            more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
            raise ValueError(
                f"{out} holds a run with a different config; differing keys: {shown}{more}. "
                "Use another --out, or --force to discard that run and start afresh"
            )
    if ckpt is None:  # a fresh start: nothing of an earlier run may pass for this one's
        for name in (LAST_CKPT, "best.ckpt", "model.ckpt", "metrics.json", "test_predictions.json"):
            (out / name).unlink(missing_ok=True)
    return ckpt


def start_at_epoch(trainer, epoch: int, global_step: int) -> None:
    """Make a fresh Lightning fit count on from ``epoch`` completed epochs."""
    prog = trainer.fit_loop.epoch_progress
    for tracker in (prog.total, prog.current):
        tracker.ready = tracker.started = tracker.processed = tracker.completed = epoch
    loop = trainer.fit_loop.epoch_loop
    if hasattr(loop, "_batches_that_stepped"):
        loop._batches_that_stepped = global_step  # the CSV log's step column continues


#: the CSV log of the epochs before a resume, kept until it is merged back
STASHED_CSV = "metrics.before_resume.csv"


def _csv_rows(text: str) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def _csv_text(rows: list[dict[str, str]]) -> str:
    """CSV of ``rows`` under the union of their columns (first-seen order)."""
    import csv
    import io

    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def stash_csv_log(logs: Path) -> str | None:
    """Move the CSV log of an interrupted run aside before resuming, and return its text.

    Lightning's CSV logger appends to an existing ``metrics.csv`` under a header of its own
    and fails when the old rows have other columns, so the file is moved to
    :data:`STASHED_CSV` (rows of an earlier stash, left by a run interrupted again before
    its merge, come first) and merged back after the fit (:func:`merge_csv_logs`).
    """
    texts = [p.read_text() for p in (logs / STASHED_CSV, logs / "metrics.csv") if p.is_file()]
    if not texts:
        return None
    text = _csv_text([r for t in texts for r in _csv_rows(t)])
    (logs / STASHED_CSV).write_text(text)
    (logs / "metrics.csv").unlink(missing_ok=True)
    return text


def merge_csv_logs(path: Path, earlier: str | None, start_epoch: int) -> None:
    """Put back the rows of the epochs before a resume (Lightning's CSV logger restarts its file)."""
    if not earlier:
        return
    old_rows = [
        r
        for r in _csv_rows(earlier)
        if r.get("epoch") not in (None, "") and int(float(r["epoch"])) < start_epoch
    ]
    new_rows = _csv_rows(path.read_text()) if path.is_file() else []
    path.write_text(_csv_text(old_rows + new_rows))
