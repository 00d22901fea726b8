"""Train, evaluate and ship a model: K members, one slim ensemble checkpoint, a model card.

:func:`ship_model` is what ``benchmarks/ship_model.py`` runs. The members are trained with
:func:`matxfer.train.loop.fit` on one run config with seeds ``0..K-1`` (the data split
comes from the config's ``data.split`` and is the same for every member), combined with
:func:`~matxfer.models.ensemble.make_ensemble` (a frozen ``chgnet`` / ``sevennet``
backbone is stored by reference), evaluated on the test split (overall and per crystal
system) and written as ``<name>.ckpt`` + ``<name>.md`` into the shipped folder, whose
``index.json`` gets the model's entry.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from matxfer.symmetry import crystal_system

log = logging.getLogger(__name__)

#: metrics put in index.json and the card's tables, per kind of target (when present)
HEADLINE = (
    "mae", "rmse", "r2", "mae_voigt", "fnorm", "ewt25", "k_vrh_mae", "g_vrh_mae",
    "log10_k_vrh_mae", "log10_g_vrh_mae", "mean_eig_mae", "eij_max_mae", "frac_pos_def",
)
#: reference predictors scored on the same crystals (metrics.tensor_metrics' baselines)
BASELINES = {"zero": "predict zero", "train_mean": "training mean"}


def headline_metrics(metrics: dict, keys: tuple[str, ...] = HEADLINE) -> dict[str, dict[str, float]]:
    """target -> {metric: value} for the ``keys`` each target's metrics have (``n`` as int)."""
    out = {}
    for target, m in metrics.items():
        if isinstance(m, dict):
            row = {k: float(m[k]) for k in keys if isinstance(m.get(k), (int, float))}
            if "n" in m:
                row["n"] = int(m["n"])
            out[target] = row
    return out


def evaluate_ensemble(ckpt: dict, cfg) -> dict[str, Any]:
    """Test metrics of a (member or ensemble) checkpoint dict on its saved test split:
    ``{"split", "n", "overall": {task: metrics}, "by_crystal_system": {system: {...}}}``."""
    import numpy as np

    from matxfer.data.splits import Split
    from matxfer.inference import evaluate_graphs, load_predictor
    from matxfer.train.data import prepare_data

    model, tasks, settings, feat, _ = load_predictor(ckpt)
    split = Split.from_dict(ckpt["split"])
    which = "test" if split.test else "val"
    data = prepare_data(cfg.data, tasks, settings, feat, split=split)
    ids = [i for i in getattr(data.split, which) if i in data.graphs]
    means = (ckpt.get("provenance") or {}).get("train_label_means") or {}
    train_means = {k: np.asarray(v, dtype=float) for k, v in means.items()}
    symprec = cfg.trainer.symprec
    overall, _ = evaluate_graphs(model, tasks, data.subset(ids), symprec=symprec,
                                 train_means=train_means)
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(crystal_system(data.records[i].structure), []).append(i)
    by_system = {}
    for system, sub in sorted(groups.items()):
        m, _ = evaluate_graphs(model, tasks, data.subset(sub), symprec=symprec)
        by_system[system] = {"n": len(sub), "metrics": headline_metrics(m)}
    return {"split": which, "n": len(ids), "overall": overall, "by_crystal_system": by_system}


def member_spread(members: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation over the members' own test metrics (the seed spread)."""
    import numpy as np

    out: dict[str, dict[str, tuple[float, float]]] = {}
    for m in members:
        for t, row in headline_metrics(m).items():
            for k, v in row.items():
                if k != "n" and np.isfinite(v):
                    out.setdefault(t, {}).setdefault(k, []).append(v)  # type: ignore[arg-type]
    return {t: {k: (float(np.mean(v)), float(np.std(v))) for k, v in row.items()}
            for t, row in out.items()}


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"  # undefined (e.g. the moduli of the zero tensor)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(name: str, ckpt: dict, evaluation: dict, info: dict) -> str:
    """The Markdown model card of a shipped model."""
    from matxfer.data.registry import get_spec

    prov = ckpt.get("provenance") or {}
    split = ckpt.get("split") or {}
    bb = ckpt["model_config"]["backbone"]
    ref = ckpt.get("backbone_ref")
    lines = [f"# {name}", "", info.get("description") or "", ""]
    lines += ["## Model", ""]
    lines.append(f"- backbone: `{bb.get('name')}`" + (
        f", frozen, stored by reference ({ref['version']}, sha256 `{ref['sha256'][:16]}...`)"
        if ref else ""))
    heads = ckpt["model_config"]["heads"]
    lines.append("- heads: " + ", ".join(f"{t}: `{h.get('name')}`" for t, h in heads.items()))
    lines.append(f"- ensemble: {len(ckpt.get('members') or [1])} member(s), seeds "
                 f"{[m.get('seed') for m in ckpt.get('members') or []]}; predictions are the "
                 "member mean with the member standard deviation beside each number")
    lines.append(f"- recipe: {prov.get('recipe')}")
    lines += ["", "## Labels", ""]
    for t, task in ckpt["tasks"].items():
        lines.append(f"- `{t}` ({task.get('kind')}, {task.get('formula') or 'scalar'}) in "
                     f"{task.get('units')}")
    lines += ["", "## Data", ""]
    for ds in prov.get("datasets", []):
        try:
            spec = get_spec(ds)
            lines.append(f"- `{ds}`: {spec.description}. {spec.citation}")
        except Exception:  # noqa: BLE001 - a dataset no longer registered is still named
            lines.append(f"- `{ds}`")
    lines.append(f"- split (seed {split.get('seed')}): {len(split.get('train', []))} train / "
                 f"{len(split.get('val', []))} val / {len(split.get('test', []))} test")
    lines.append(f"- data fingerprint: `{prov.get('data_fingerprint')}`")
    dropped = {k: v for k, v in (prov.get("dropped") or {}).items() if v}
    if dropped:
        lines.append(f"- dropped entries: {dropped}")
    lines += ["", "## Training", ""]
    lines.append(f"- command: `{info['command']}`")
    lines.append(f"- config: `{info['config']}`")
    lines.append(f"- wall time: {info['wall_time_s']:.0f} s ({info['members']} member(s))")
    lines.append(f"- written: {info['created']}, matxfer {ckpt.get('versions', {}).get('matxfer')}")
    lines += ["", f"## Test metrics ({evaluation['split']} split, n={evaluation['n']})", ""]
    head = headline_metrics(evaluation["overall"])
    spread = member_spread(evaluation.get("members") or [])
    for t, row in head.items():
        base = evaluation["overall"][t].get("baselines") or {}
        cols = [b for b in BASELINES if isinstance(base.get(b), dict)]
        lines.append(f"**{t}**")
        lines.append("")
        lines.append("| metric | ensemble | members (mean ± std) | "
                     + " | ".join(BASELINES[b] for b in cols) + " |")
        lines.append("|---|---|---|" + "---|" * len(cols))
        for k, v in row.items():
            if k == "n":
                continue
            ms = spread.get(t, {}).get(k)
            cells = [_fmt(base[b].get(k, "-")) for b in cols]
            lines.append(f"| {k} | {_fmt(v)} | "
                         + (f"{ms[0]:.4g} ± {ms[1]:.2g}" if ms else "-") + " | "
                         + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### By crystal system", ""]
    keys = sorted({k for s in evaluation["by_crystal_system"].values()
                   for row in s["metrics"].values() for k in row if k != "n"})
    lines.append("| crystal system | n | " + " | ".join(keys) + " |")
    lines.append("|---|---|" + "---|" * len(keys))
    for system, s in evaluation["by_crystal_system"].items():
        row = next(iter(s["metrics"].values()), {})
        lines.append(f"| {system} | {s['n']} | " + " | ".join(_fmt(row.get(k, "-")) for k in keys)
                     + " |")
    lines += ["", "## Known limits", ""]
    elements = prov.get("train_elements") or []
    lines.append(f"- elements in the training data ({len(elements)}): {', '.join(elements)}; "
                 "predictions for other elements are extrapolations (the output column "
                 "`unseen_elements` names them)")
    lines.append("- the labels are DFT values of the datasets above (their functional and "
                 "settings), in the frame of the stored structures; the model reproduces them, "
                 "not experiment")
    lines.append("- tensor predictions are projected onto each crystal's point group "
                 "(symprec 0.01 A by default)")
    return "\n".join(lines) + "\n"


def ship_model(
    name: str,
    config: str | Path,
    members: int = 5,
    overrides: list[str] | None = None,
    shipped: str | Path | None = None,
    work_dir: str | Path | None = None,
    description: str = "",
    command: str | None = None,
) -> dict[str, Any]:
    """Train ``members`` seeds of ``config``, ensemble them and ship the result.

    Args:
        name: the shipped model's name (a bare word: usable wherever a checkpoint path is).
        config: the run config (YAML); its ``data.split`` is the split of every member.
        members: ensemble size K (seeds 0..K-1).
        overrides: dotted ``key=value`` overrides of the config.
        shipped: the folder to write into (default: :func:`matxfer.shipped.shipped_dir`).
        work_dir: where the member runs go (default ``runs/ship-<name>``).
        description: one line for the index and the card.
        command: the command recorded in the card (default: this process's argv).

    Returns:
        The model's index entry.
    """
    from matxfer.checkpoint import save_checkpoint
    from matxfer.config import load_config
    from matxfer.jsonout import json_safe
    from matxfer.models.ensemble import make_ensemble
    from matxfer.shipped import looks_like_name, shipped_dir
    from matxfer.train.loop import fit

    if not looks_like_name(name):
        raise ValueError(f"shipped model name {name!r} must be a bare word (no folder, no suffix)")
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    folder = Path(shipped or shipped_dir())
    work = Path(work_dir or f"runs/ship-{name}")
    overrides = list(overrides or [])
    command = command or " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    t0 = time.time()
    paths, member_metrics = [], []
    cfg = None
    for k in range(members):
        cfg = load_config(config, overrides + [f"seed={k}", f"out={work / f'member{k}'}",
                                               f"name={name}-member{k}"])
        res = fit(cfg, command=f"ship {name} member {k}")
        paths.append(res.checkpoint)
        member_metrics.append(res.metrics.get("test") or res.metrics.get("val") or {})
    ckpt = make_ensemble(paths)
    evaluation = evaluate_ensemble(ckpt, cfg)
    wall = time.time() - t0
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    ckpt["metrics"] = json_safe({
        "test": evaluation["overall"],
        "split": evaluation["split"],
        "n": evaluation["n"],
        "by_crystal_system": evaluation["by_crystal_system"],
        "members": member_metrics,
        "wall_time_s": wall,
    })
    ckpt["provenance"] = {**ckpt["provenance"], "command": command, "shipped_as": name,
                          "config_file": str(config), "overrides": overrides}
    folder.mkdir(parents=True, exist_ok=True)
    ck_path = save_checkpoint(ckpt, folder / f"{name}.ckpt")
    entry = {
        "file": ck_path.name,
        "card": f"{name}.md",
        "targets": list(ckpt["tasks"]),
        "target": next(iter(ckpt["tasks"]), ""),
        "description": description,
        "backbone": ckpt["model_config"]["backbone"].get("name"),
        "members": members,
        "size_bytes": ck_path.stat().st_size,
        "created": created,
    }
    entry = write_card(name, folder, ckpt, entry)
    log.info("shipped %s -> %s (%d bytes)", name, ck_path, entry["size_bytes"])
    return entry


def write_card(name: str, folder: Path, ckpt: dict, entry: dict[str, Any]) -> dict[str, Any]:
    """Write a shipped model's card and its index entry (with the headline test metrics)
    from the metrics, provenance and description its checkpoint and entry carry; returns
    the entry."""
    from matxfer.jsonout import json_safe
    from matxfer.shipped import load_index, write_index

    m = ckpt.get("metrics") or {}
    prov = ckpt.get("provenance") or {}
    evaluation = {"split": m.get("split", "test"), "overall": m.get("test") or {},
                  "by_crystal_system": m.get("by_crystal_system") or {},
                  "members": m.get("members") or []}
    # checkpoints shipped before the metrics carried "n": the index entry's, else the first task's
    evaluation["n"] = m.get("n") or entry.get("metrics", {}).get("n") or next(
        (r.get("n") for r in evaluation["overall"].values() if isinstance(r, dict)), 0)
    info = {"description": entry.get("description", ""), "command": prov.get("command", ""),
            "config": prov.get("config_file", ""), "wall_time_s": float(m.get("wall_time_s", 0)),
            "members": entry.get("members", len(ckpt.get("members") or [1])),
            "created": entry.get("created", "")}
    (folder / entry.get("card", f"{name}.md")).write_text(model_card(name, ckpt, evaluation, info))
    entry = {**entry, "metrics": json_safe({"split": evaluation["split"], "n": evaluation["n"],
                                            "test": headline_metrics(evaluation["overall"])})}
    index = load_index(folder)
    index[name] = entry
    write_index(index, folder)
    return entry


def refresh_card(name: str, shipped: str | Path | None = None) -> Path:
    """Rewrite a shipped model's card and index entry from the metrics stored in its
    checkpoint (no training, no evaluation): for a card format that changed."""
    from matxfer.checkpoint import load_checkpoint
    from matxfer.shipped import load_index, shipped_dir

    folder = Path(shipped or shipped_dir())
    index = load_index(folder)
    if name not in index:
        raise ValueError(f"no shipped model {name!r} in {folder} (shipped: {sorted(index)})")
    entry = write_card(name, folder, load_checkpoint(folder / index[name]["file"]), index[name])
    return folder / entry.get("card", f"{name}.md")
