"""Backbones and tensor heads compared on the same splits under the same CPU budget.

Part ``scalar``: ``cgcnn``, ``cgcnn-attention``, ``alignn`` and ``local-frame`` (each at its
default configuration and graph settings, plus ``alignn-w64``, a smaller ALIGNN) on ``flla-2015`` formation energy per atom and on
the Castelli perovskite heat of formation (``castelli-perovskites``, eV per 5-atom cell).

Part ``heads``: the e3nn tensor head against the edge (outer-product) tensor head on
``dielectric_total`` (``petousis-dielectric-2017``) and ``piezo_tensor``
(``dejong-piezo-2015``): the same equivariant backbone with either head, which isolates the
head, and CGCNN with the edge head (an invariant backbone, graphs of every neighbour within
5 A so that the graph keeps the crystal's point group).

Every case: 80/10/10 split by material id (seed 0, the same for every model of a dataset),
batch 32, AdamW, a cosine schedule sized to the budget from the measured throughput, no early
stopping, best-validation weights, ``--minutes`` of wall clock on ``--threads`` CPU threads
(see ``_budget.py``). Test metrics in physical units. One seed per case.

Usage::

    python benchmarks/backbone_comparison.py [--parts scalar,heads] [--minutes 10]
        [--threads 1] [--cases NAME,...] [--out benchmarks/results/backbone_comparison.json]

Results are merged into the JSON file case by case; a rerun skips cases already there with
the same budget (``--force`` reruns them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _budget import budgeted_fit, machine  # noqa: E402

log = logging.getLogger("backbone_comparison")

SPLIT = {"fractions": [0.8, 0.1, 0.1], "seed": 0}
SCALAR_DATA = {
    "flla": ("flla-2015", "formation_energy_per_atom", "eV/atom"),
    "perovskites": ("castelli-perovskites", "formation_energy", "eV/cell"),
}
BACKBONES = ("cgcnn", "cgcnn-attention", "alignn", "local-frame")
#: a smaller ALIGNN beside the default one (width 256, 4 + 4 layers, 4M parameters), which
#: manages about one epoch of these sets in ten CPU minutes
VARIANTS = {"alignn-w64": {"name": "alignn", "width": 64, "n_alignn": 2, "n_gcn": 2}}
TENSOR_DATA = {
    "dielectric": ("petousis-dielectric-2017", "dielectric_total", "ij=ji"),
    "piezo": ("dejong-piezo-2015", "piezo_tensor", "ijk=ikj"),
}


def scalar_cases() -> dict[str, dict]:
    cases = {}
    for dname, (dataset, target, _units) in SCALAR_DATA.items():
        backbones = {bb: {"name": bb} for bb in BACKBONES} | VARIANTS
        for label, bb_cfg in backbones.items():
            cases[f"{dname}/{label}"] = {
                "data": {"datasets": [dataset], "targets": [target], "split": SPLIT},
                "model": {"backbone": dict(bb_cfg)},
                "optim": {"lr": 2e-3, "batch_size": 32, "warmup_epochs": 1},
            }
    return cases


def head_cases() -> dict[str, dict]:
    cases = {}
    for dname, (dataset, target, formula) in TENSOR_DATA.items():
        data = {"datasets": [dataset], "targets": [target], "split": SPLIT}
        optim = {"lr": 3e-3, "batch_size": 32, "warmup_epochs": 1}
        cases[f"{dname}/equivariant+tensor"] = {
            "data": data,
            "model": {"backbone": {"name": "equivariant"}, "heads": {target: {"name": "tensor", "formula": formula}}},
            "optim": optim,
        }
        cases[f"{dname}/equivariant+edge"] = {
            "data": data,
            "model": {
                "backbone": {"name": "equivariant"},
                "heads": {target: {"name": "edge-tensor", "formula": formula, "cutoff": 5.0,
                                   "avg_num_neighbors": 34.0}},
            },
            "optim": optim,
        }
        cases[f"{dname}/cgcnn+edge"] = {
            "data": data,
            "graph": {"cutoff": 5.0, "max_neighbors": 1000},
            "model": {
                "backbone": {"name": "cgcnn", "gaussian_stop": 5.0},
                "heads": {target: {"name": "edge-tensor", "formula": formula, "cutoff": 5.0,
                                   "avg_num_neighbors": 34.0}},
            },
            "optim": optim,
        }
    return cases


def summary(case: dict) -> dict:
    """The headline numbers of one finished case."""
    (task, m), = case["test"].items()
    keys = ("mae", "rmse", "r2", "mae_voigt", "fnorm_rel", "mean_eig_mae", "eij_max_mae")
    return {
        "task": task,
        **{k: m[k] for k in keys if k in m},
        "params": case["total_params"],
        "epochs_run": case["epochs_run"],
        "train_structures_per_s": round(case["train_structures_per_s"], 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="scalar,heads")
    ap.add_argument("--cases", default=None, help="only these case names (comma-separated)")
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per case")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/backbone_comparison.json")
    ap.add_argument("--workdir", default=None, help="run directories (default: a temp dir)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    import matxfer.models.backbones.local_frame  # noqa: F401  (registers "local-frame")

    cases: dict[str, dict] = {}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if "scalar" in parts:
        cases.update(scalar_cases())
    if "heads" in parts:
        cases.update(head_cases())
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",")]
        unknown = set(wanted) - set(cases)
        if unknown:
            raise SystemExit(f"unknown case(s) {sorted(unknown)}; valid: {sorted(cases)}")
        cases = {k: v for k, v in cases.items() if k in wanted}

    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.update({
        "benchmark": "backbone_comparison",
        "protocol": "80/10/10 split by id (seed 0); batch 32; AdamW + cosine sized to the budget; "
                    "no early stopping; best-validation weights; one seed",
        "budget": {"minutes_per_case": args.minutes, "threads": args.threads},
        "machine": machine(),
    })
    result.setdefault("cases", {})
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        for name, raw in cases.items():
            prev = result["cases"].get(name)
            if prev and prev.get("budget_minutes") == args.minutes and not args.force:
                log.info("%s: done already", name)
                continue
            log.info("%s: %.1f min on %d thread(s)", name, args.minutes, args.threads)
            run = {**raw, "name": name.replace("/", "-"), "seed": 0,
                   "out": str(workdir / name.replace("/", "-"))}
            try:
                case = budgeted_fit(run, args.minutes)
            except Exception as exc:  # record and go on: one case never loses the others
                log.exception("%s failed", name)
                result["cases"][name] = {"budget_minutes": args.minutes, "error": f"{type(exc).__name__}: {exc}"}
            else:
                case.pop("out_dir", None)
                result["cases"][name] = {"budget_minutes": args.minutes, "config": raw,
                                         "summary": summary(case), **case}
                log.info("%s: %s", name, result["cases"][name]["summary"])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
