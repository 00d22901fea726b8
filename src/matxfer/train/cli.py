"""``matxfer train | finetune | evaluate | predict | inspect``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from matxfer.cli import _print_json, register_command


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML run config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3")
    p.add_argument("--out", default=None, help="run directory (default: runs/<name>); a rerun on "
                   "the same directory resumes from its last.ckpt")
    p.add_argument("--force", action="store_true",
                   help="start afresh in a run directory that holds a run of another config")


def _run_fit(args, command: str, extra: list[str]) -> int:
    from matxfer.config import load_config
    from matxfer.train.loop import fit

    overrides = list(args.overrides) + extra
    if args.out:
        overrides.append(f"out={args.out}")
    cfg = load_config(args.config, overrides)
    res = fit(cfg, command=command, force=args.force)
    print(f"checkpoint: {res.checkpoint}")
    print(json.dumps({"test": res.metrics.get("test"), "wall_time_s": round(res.wall_time_s, 1)}, indent=1, default=float))
    return 0


def cmd_train(args) -> int:
    return _run_fit(args, "train", [])


def _add_finetune(p: argparse.ArgumentParser) -> None:
    _add_train(p)
    p.add_argument(
        "--init-from", default=None,
        help="pretrained checkpoint or shipped model name (or transfer.init_from)",
    )
    p.add_argument("--recipe", default=None, help="scratch | head | full | freeze:K")


def cmd_finetune(args) -> int:
    extra = []
    if args.init_from:
        extra.append(f"transfer.init_from={args.init_from}")
    if args.recipe:
        extra.append(f"transfer.recipe={args.recipe}")
    return _run_fit(args, "finetune", extra)


_CKPT_HELP = "checkpoint file, or the name of a shipped model (matxfer models)"


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help=_CKPT_HELP)
    p.add_argument("--data", required=True, help="dataset name (matxfer data list)")
    p.add_argument("--split", choices=["test", "val", "train", "all"], default="test")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, help="write the metrics JSON here")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-validate", action="store_true", help="keep entries failing validation")
    _add_symmetry_args(p)


def _add_symmetry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--symprec", type=float, default=0.01,
        help="spglib tolerance (Angstrom) of the point group that tensor predictions are "
        "projected onto (default 0.01)",
    )
    p.add_argument(
        "--no-symmetrize", action="store_true",
        help="keep tensor predictions as the model gives them (no point-group projection)",
    )


def evaluate_checkpoint(
    ckpt_path: str,
    dataset: str,
    split: str = "test",
    data_dir: str | None = None,
    validate: bool = True,
    symprec: float | None = 0.01,
) -> dict:
    """Metrics of a checkpoint on a dataset (its saved split, or every entry).

    Tensor predictions are projected onto each crystal's point group (``symprec``; None
    scores them as predicted), and the metrics of the zero and training-mean predictors on
    the same crystals are given beside the model's (``baselines``; the training mean is the
    one stored in the checkpoint, absent for checkpoints written before it was stored).
    """
    import numpy as np

    from matxfer.config import DataConfig
    from matxfer.data.splits import Split
    from matxfer.inference import evaluate_graphs, load_predictor
    from matxfer.tasks import TENSOR
    from matxfer.train.data import prepare_data

    model, tasks, settings, feat, ckpt = load_predictor(ckpt_path)
    from matxfer.data.registry import get_spec

    spec = get_spec(dataset)
    usable = {t: task for t, task in tasks.items() if t in spec.targets}
    if not usable:
        raise ValueError(
            f"dataset {dataset!r} has none of the checkpoint's targets {sorted(tasks)} "
            f"(it has {sorted(spec.targets)})"
        )
    dcfg = DataConfig(datasets=[dataset], targets=list(usable), validate=validate, data_dir=data_dir)
    if split == "all":
        data = prepare_data(dcfg, usable, settings, feat, split=None)
        ids = data.split.train + data.split.val + data.split.test
    else:
        saved = ckpt.get("split") or {}
        if not saved.get(split):
            raise ValueError(f"the checkpoint has no saved {split!r} split; use --split all")
        # only the entries of the requested split are loaded, validated and graphed
        full = Split.from_dict(saved)
        part = [getattr(full, s) if s == split else [] for s in ("train", "val", "test")]
        try:
            data = prepare_data(dcfg, usable, settings, feat, split=Split(*part, full.seed))
        except ValueError as exc:
            if not str(exc).startswith("no entries with any of the targets"):
                raise
            data = None
        ids = getattr(data.split, split) if data is not None else []
        if not ids:
            raise ValueError(
                f"none of the checkpoint's {split} ids are in dataset {dataset!r}; use --split all"
            )
    means = (ckpt.get("provenance") or {}).get("train_label_means") or {}
    train_means = {k: np.asarray(v, dtype=float) for k, v in means.items()}
    for name, task in usable.items():  # checkpoints without stored means: the zero baseline
        if task.kind == TENSOR:
            train_means.setdefault(name, None)
    metrics, _ = evaluate_graphs(
        model, usable, data.subset(ids), symprec=symprec, train_means=train_means
    )
    return {
        "checkpoint": str(ckpt_path),
        "dataset": dataset,
        "split": split,
        "n": len(ids),
        "dropped": {k: v for k, v in data.dropped.items() if v},
        "metrics": metrics,
    }


def cmd_evaluate(args) -> int:
    from matxfer.metrics import finite_or_none

    symprec = None if args.no_symmetrize else args.symprec
    res = evaluate_checkpoint(
        args.checkpoint, args.data, args.split, args.data_dir, not args.no_validate, symprec
    )
    res["metrics"] = {k: finite_or_none(v) for k, v in res["metrics"].items()}
    if args.json or args.out:
        _print_json(res, args.out)
        if not args.json:
            print(f"wrote {args.out}")
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{Path(args.checkpoint).name} on {args.data} ({args.split}, n={res['n']})")
    base_names = sorted({b for m in res["metrics"].values() for b in (m.get("baselines") or {})},
                        key=["zero", "train_mean"].index)
    t.add_column("target")
    t.add_column("metric")
    t.add_column("model", justify="right")
    for b in base_names:
        t.add_column(f"{b.replace('_', '-')} predictor", justify="right")

    def cell(v):
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    for target, m in res["metrics"].items():
        base = m.get("baselines") or {}
        for k, v in m.items():
            if k == "baselines":
                continue
            t.add_row(target, k, cell(v), *(cell(base.get(b, {}).get(k)) for b in base_names))
    Console().print(t)
    return 0


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help=_CKPT_HELP)
    p.add_argument("inputs", nargs="+", help="CIF/POSCAR/pymatgen-JSON/extended-XYZ files or folders")
    p.add_argument("--out", required=True, help="FILE.json or FILE.csv")
    _add_symmetry_args(p)


def cmd_predict(args) -> int:
    from matxfer.predict import predict_files, write_predictions

    if not str(args.out).endswith((".json", ".csv")):
        raise ValueError(f"--out must end in .json or .csv, got {args.out}")
    symprec = None if args.no_symmetrize else args.symprec
    results, errors = predict_files(args.checkpoint, args.inputs, symprec)
    path = write_predictions(results, errors, args.out)
    print(f"{len(results)} structure(s) predicted -> {path}")
    for e in errors:
        print(f"skipped {e['input']}: {e['error']}", file=sys.stderr)
    return 0 if results else 1


def _add_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help=_CKPT_HELP)
    p.add_argument("--json", action="store_true")


def inspect_checkpoint(path: str) -> dict:
    from matxfer.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    sd = ck["state_dict"]
    n_params = sum(v.numel() for k, v in sd.items() if v.is_floating_point())
    for member in ck.get("members") or []:  # an ensemble's heads and normalisers
        n_params += sum(v.numel() for v in member["state_dict"].values() if v.is_floating_point())
    split = ck.get("split") or {}
    prov = dict(ck.get("provenance", {}))
    frozen = prov.pop("frozen", [])
    return {
        "path": str(path),
        "format_version": ck["format_version"],
        "versions": ck.get("versions"),
        "backbone": ck["model_config"]["backbone"],
        "heads": ck["model_config"]["heads"],
        "tasks": ck["tasks"],
        "graph": ck["graph"],
        "atom_features": None
        if not ck.get("atom_features")
        else {k: v for k, v in ck["atom_features"].items() if k in ("spec", "dim", "sha256")},
        "n_tensors": len(sd),
        "n_values": n_params,
        "split_sizes": {k: len(v) for k, v in split.items() if isinstance(v, list)},
        "frozen_parameters": len(frozen),
        "backbone_ref": ck.get("backbone_ref"),
        "members": len(ck.get("members") or []) or None,
        "provenance": prov,
        "metrics": ck.get("metrics", {}),
    }


def cmd_inspect(args) -> int:
    info = inspect_checkpoint(args.checkpoint)
    if args.json:
        _print_json(info)
        return 0
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(info))
    return 0


register_command("train", "train a model from a YAML config", _add_train, cmd_train)
register_command("finetune", "fine-tune a pretrained checkpoint (transfer recipes)", _add_finetune, cmd_finetune)
register_command("evaluate", "metrics of a checkpoint on a dataset", _add_evaluate, cmd_evaluate)
register_command("predict", "predict on structure files", _add_predict, cmd_predict)
register_command("inspect", "print a checkpoint's metadata", _add_inspect, cmd_inspect)
