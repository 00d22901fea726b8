"""``matxfer models``: the models that ship with matxfer and their test metrics."""

from __future__ import annotations

import argparse

from matxfer.cli import _print_json, register_command


def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default=None, help="print this model's card")
    p.add_argument("--json", action="store_true")


def _headline(metrics: dict) -> str:
    """``target: key=value, ...`` of the test metrics (the numbers a user compares)."""
    parts = []
    for target, m in (metrics or {}).items():
        if not isinstance(m, dict):
            continue
        keys = [k for k in ("mae", "mae_voigt", "k_vrh_mae", "g_vrh_mae", "mean_eig_mae",
                            "eij_max_mae", "r2")
                if isinstance(m.get(k), (int, float))]
        if keys:
            parts.append(f"{target}: " + ", ".join(f"{k}={m[k]:.4g}" for k in keys))
    return "; ".join(parts) or "-"


def cmd_models(args) -> int:
    from matxfer.shipped import card_path, load_index, shipped_dir

    index = load_index()
    if args.name:
        if args.name not in index:
            listed = ", ".join(sorted(index)) or "none"
            raise ValueError(f"no shipped model {args.name!r} (shipped: {listed})")
        if args.json:
            _print_json({"name": args.name, **index[args.name]})
            return 0
        card = card_path(args.name)
        print(card.read_text() if card and card.is_file() else index[args.name])
        return 0
    rows = [{"name": n, **e} for n, e in sorted(index.items())]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no shipped models in {shipped_dir()}")
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"shipped models ({shipped_dir()})")
    for c in ("name", "target", "description", "test metrics"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(r["name"], ", ".join(r.get("targets") or [r.get("target", "")]),
                  r.get("description", ""), _headline((r.get("metrics") or {}).get("test", {})))
    Console().print(t)
    return 0


register_command(
    "models", "list the models that ship with matxfer (names usable as checkpoints)",
    _add_models, cmd_models,
)
