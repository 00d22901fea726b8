"""Model, graph settings and atom features for a run, from its config or a parent checkpoint.

A fine-tune inherits the parent's backbone architecture, graph settings and atom-feature
table; a config that asks for different ones is an error (so preprocessing always matches
the pretrained weights).
"""

from __future__ import annotations

import logging
from typing import Any

from matxfer.config import RunConfig
from matxfer.data.graphs import GraphSettings
from matxfer.kinds import kind_of
from matxfer.tasks import Task, default_head

log = logging.getLogger(__name__)


def graph_settings_for(
    cfg: RunConfig, backbone_cls, parent: dict | None, backbone_cfg: dict | None = None
) -> GraphSettings:
    """Graph settings: parent checkpoint's, else backbone defaults with config overrides.

    Without ``graph.cutoff`` a cutoff given in the backbone config (``backbone_cfg``) is
    the graph cutoff: there is one cutoff (see :mod:`matxfer.models.cutoff`).
    """
    from matxfer.models.cutoff import cutoff_arg

    graph_cutoff = cfg.graph.cutoff
    arg = cutoff_arg(backbone_cls)
    if graph_cutoff is None and parent is None and arg and (backbone_cfg or {}).get(arg) is not None:
        graph_cutoff = float(backbone_cfg[arg])  # type: ignore[index]
    user = {
        k: v
        for k, v in {
            "cutoff": graph_cutoff,
            "max_neighbors": cfg.graph.max_neighbors,
            "line_graph": cfg.graph.line_graph,
            "keep_shell": cfg.graph.keep_shell,
            "atom_features": cfg.graph.atom_features,
        }.items()
        if v is not None
    }
    if parent is not None:
        base = dict(parent["graph"])
        for k, v in user.items():
            pv = base.get(k)
            if k == "atom_features" and isinstance(pv, str) and pv.startswith(str(v)):
                continue  # "table" matches "table:<sha>"
            if pv != v:
                raise ValueError(
                    f"graph.{k}={v!r} differs from the pretrained checkpoint's {pv!r}; a "
                    "fine-tune must build graphs exactly as the backbone was trained"
                )
        return GraphSettings.from_dict(base)
    base = dict(getattr(backbone_cls, "graph_defaults", {}))
    base.update(user)
    base["fallback_k"] = cfg.graph.fallback_k
    if base.get("atom_features") == "table":
        if not cfg.graph.atom_table:
            raise ValueError("graph.atom_features=table needs graph.atom_table (an atom_init.json)")
    known = GraphSettings.__dataclass_fields__
    return GraphSettings(**{k: v for k, v in base.items() if k in known})


#: mean neighbour count within 5 A of Materials Project crystals (all neighbours)
MEAN_NEIGHBORS_5A = 34.0


def with_graph_defaults(head_cfg: dict, settings: GraphSettings, where: str = "model.heads") -> dict:
    """Fill a head's ``cutoff`` and ``avg_num_neighbors`` from the graphs.

    Heads with a radial basis over the graph's edges (a ``cutoff`` argument: the edge tensor
    heads, ``direct-forces``) take the graph cutoff; a config that gives another cutoff is
    an error naming both. Heads that sum over edges (an ``avg_num_neighbors`` argument)
    divide the sum by the typical neighbour count (the Materials Project mean within 5 A
    scaled with the cutoff volume, or the neighbour cap when that is smaller) unless the
    config gives one.
    """
    import inspect

    from matxfer.models.cutoff import with_graph_cutoff
    from matxfer.models.registry import HEADS

    cls = HEADS.get(str(head_cfg.get("name")))
    if cls is None:
        return head_cfg
    out = with_graph_cutoff(dict(head_cfg), cls, float(settings.cutoff), where)
    takes_avg = "avg_num_neighbors" in inspect.signature(cls).parameters
    if takes_avg and "avg_num_neighbors" not in out:
        avg = MEAN_NEIGHBORS_5A * (float(settings.cutoff) / 5.0) ** 3
        if settings.max_neighbors:
            avg = min(avg, float(settings.max_neighbors))
        out["avg_num_neighbors"] = round(avg, 1)
    return out


def resolve_atom_table(path: str | None) -> str | None:
    """An ``atom_init.json`` path as given, else relative to the pretrained-weights directory
    (so ``cgcnn/atom_init.json`` finds the original CGCNN table wherever it is installed)."""
    from pathlib import Path

    from matxfer.paths import pretrained_dir

    if path is None or Path(path).expanduser().is_file():
        return path
    alt = pretrained_dir() / path
    if alt.is_file():
        return str(alt)
    raise FileNotFoundError(
        f"graph.atom_table={path!r}: no such file (nor {alt}); give the path of an atom_init.json"
    )


def featurizer_for(cfg: RunConfig, settings: GraphSettings, parent: dict | None):
    """(featurizer or None, its plain state, final settings with the table hash)."""
    from matxfer.data.atom_features import AtomFeaturizer

    spec = settings.atom_features
    if spec == "none":
        return None, None, settings
    if parent is not None and parent.get("atom_features") is not None:
        parent_feat = AtomFeaturizer.from_state(parent["atom_features"])
        return parent_feat, parent["atom_features"], settings
    feat: AtomFeaturizer | None
    if spec == "table":
        feat = AtomFeaturizer.from_spec("table", table_path=resolve_atom_table(cfg.graph.atom_table))
    else:
        feat = AtomFeaturizer.from_spec(spec)
    if feat is None:  # pragma: no cover - only "none" has no featurizer
        return None, None, settings
    state = feat.to_state()
    final = GraphSettings(**{**settings.to_dict(), "atom_features": feat.spec})
    return feat, state, final


def build_run_model(cfg: RunConfig, tasks: dict[str, Task], parent: dict | None):
    """Build the model of a run; load and freeze pretrained parts for a fine-tune.

    Returns:
        (model, graph settings, featurizer, atom-feature state, provenance dict)
    """
    from matxfer.models.cutoff import check_parent_cutoff, with_graph_cutoff
    from matxfer.models.registry import BACKBONES, build_model
    from matxfer.transfer import apply_recipe, load_backbone_into, load_heads_into, parse_recipe

    provenance: dict[str, Any] = {}
    user_bb = dict(cfg.model.get("backbone") or {})
    if parent is not None and (parent.get("backbone_ref") or parent.get("members")):
        from matxfer.checkpoint import full_checkpoint

        # a shipped parent: backbone from its package, the first member of an ensemble
        parent = full_checkpoint(parent)
    if parent is not None:
        bb_cfg = dict(parent["model_config"]["backbone"])
        for k, v in user_bb.items():
            if bb_cfg.get(k) != v:
                raise ValueError(
                    f"model.backbone.{k}={v!r} differs from the pretrained checkpoint's "
                    f"{bb_cfg.get(k)!r}; leave model.backbone out of a fine-tune config"
                )
    else:
        if "name" not in user_bb:
            raise ValueError("model.backbone.name is required (or transfer.init_from a checkpoint)")
        bb_cfg = user_bb
    name = bb_cfg["name"]
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    backbone_cls = BACKBONES[name]
    settings = graph_settings_for(cfg, backbone_cls, parent, bb_cfg)
    if parent is None:
        bb_cfg = with_graph_cutoff(bb_cfg, backbone_cls, float(settings.cutoff), "model.backbone")
    else:  # the weights were trained with the stored cutoff: kept (a warning if it differs)
        check_parent_cutoff(bb_cfg, backbone_cls, float(settings.cutoff))
    featurizer, atom_state, settings = featurizer_for(cfg, settings, parent)
    if featurizer is not None and "atom_feature_dim" not in bb_cfg:
        bb_cfg = {**bb_cfg, "atom_feature_dim": int(featurizer.dim)}

    keep = list(cfg.transfer.keep_heads)
    user_heads = dict(cfg.model.get("heads") or {})
    unknown = set(user_heads) - set(tasks)
    if unknown:
        raise ValueError(f"model.heads names {sorted(unknown)} that are not tasks {sorted(tasks)}")
    equivariant = bool(getattr(backbone_cls, "equivariant", False))
    heads = {}
    for t, task in tasks.items():
        if t in keep:
            if parent is None or t not in parent["model_config"]["heads"]:
                raise ValueError(f"transfer.keep_heads: the checkpoint has no head {t!r}")
            heads[t] = dict(parent["model_config"]["heads"][t])
        else:
            heads[t] = with_graph_defaults(
                user_heads.get(t) or default_head(task, equivariant), settings, f"model.heads.{t}"
            )
    model = build_model({"backbone": bb_cfg, "heads": heads}, tasks)
    check = getattr(model.backbone, "check_graph_settings", None)
    if check is not None:
        check(settings)

    if parent is not None:
        kind, _ = parse_recipe(cfg.transfer.recipe)
        provenance["recipe"] = cfg.transfer.recipe
        if kind != "scratch":
            load_backbone_into(model, parent)
            provenance["kept_heads"] = load_heads_into(model, parent, keep)
            provenance["swapped_heads"] = [t for t in tasks if t not in keep]
            info = apply_recipe(model, cfg.transfer.recipe, cfg.transfer.reinit_after_frozen)
            provenance["frozen"] = info["frozen"]
            provenance["reinitialised"] = info["reinitialised"]
    else:
        provenance["recipe"] = "scratch"
    return model, settings, featurizer, atom_state, provenance


def fit_normalizers(model, tasks: dict[str, Task], records, keep: list[str] | tuple = ()) -> None:
    """Fit each task's normaliser on the training labels (kept pretrained heads keep theirs)."""
    import torch

    for name, task in tasks.items():
        if name in keep:
            continue
        vals = [r.labels[name] for r in records if name in r.labels]
        if not vals:
            raise ValueError(f"no training labels for task {name!r}")
        norm = model.normalizers[name]
        norm.fit(kind_of(task.kind).fit_values(vals, torch.get_default_dtype()))
