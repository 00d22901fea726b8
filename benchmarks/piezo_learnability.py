"""Are the de Jong piezoelectric tensors learnable as paired with their structures?

Four measurements on ``dejong-piezo-2015`` (the labels as matxfer pairs them: IEEE-frame
tensors with the conventional cell rotated into the IEEE frame):

1. Label statistics: the heavy tail (share of tensors under 0.1 C/m^2, share of the summed
   squared norm carried by the largest 10 %), centrosymmetric entries, and how many labels
   obey their structure's point group.
2. Polarity of wurtzite-type binaries: a point group cannot see the sign of a polar axis, so
   the sign of e33 is compared with the direction of the structure's cation -> anion bond
   along c (the textbook convention: e33 > 0, e31 < 0 for ZnO, GaN, AlN, CdS... when +c
   points from the cation to the anion along that bond).
3. Training, same model and budget (the small equivariant network of the CPU study),
   fixed 80/10/10 split: the normal loss; a sign-agnostic loss (each crystal scored by the
   better of y and -y); relative weighting (each crystal's loss divided by its label norm).
   Each model's test predictions are scored normally and sign-agnostically.
4. A scalar model of ``eij_max`` (sign- and frame-free) against the training-mean predictor.

Usage: python benchmarks/piezo_learnability.py [--epochs 40] [--only stats]
Writes benchmarks/results/piezo_learnability.json (runs under runs/piezo_learnability/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "piezo_learnability.json"
RUNS = Path("runs/piezo_learnability")

BASE = {
    "data": {
        "datasets": ["dejong-piezo-2015"],
        "targets": ["piezo_tensor"],
        "split": {"fractions": [0.8, 0.1, 0.1], "seed": 0},
    },
    "model": {
        "backbone": {
            "name": "equivariant",
            "hidden_irreps": "8x0e+8x0o+4x1o+4x1e+2x2e+2x2o+1x3o+1x3e+1x4e",
            "n_layers": 2,
        }
    },
    "optim": {"lr": 0.005, "batch_size": 16, "patience": 10, "warmup_epochs": 1},
    "trainer": {"progress": False},
}

VARIANTS = {
    "l1": {},
    "l1_sign_agnostic": {"tasks": {"piezo_tensor": {"sign_agnostic": True}}},
    "l1_relative": {"tasks": {"piezo_tensor": {"weighting": "relative"}}},
    # frozen foundation backbones (features computed once), the same split and budget
    "chgnet_head_edge": {"import": "chgnet", "transfer": {"recipe": "head"}, "optim": {"lr": 0.01}},
    "sevennet_head_product": {
        "import": "sevennet", "transfer": {"recipe": "head"}, "optim": {"lr": 0.01},
        "model": {"heads": {"piezo_tensor": {"name": "tensor-product"}}},
    },
    "sevennet_head_product_relative": {
        "import": "sevennet", "transfer": {"recipe": "head"}, "optim": {"lr": 0.01},
        "model": {"heads": {"piezo_tensor": {"name": "tensor-product"}}},
        "tasks": {"piezo_tensor": {"weighting": "relative"}},
    },
}


def label_stats() -> dict:
    from matxfer.data.registry import load_dataset
    from matxfer.data.validate import validate_dataset
    from matxfer.symmetry import structure_point_group
    from matxfer.tensors import cartesian_to_voigt, symmetry_error

    ds = load_dataset("dejong-piezo-2015")
    E = np.stack([r.labels["piezo_tensor"] for r in ds.records])
    V = np.stack([cartesian_to_voigt(e) for e in E])
    fn = np.sqrt((V**2).sum((1, 2)))
    sq = np.sort(fn**2)[::-1]
    centro, sym_err = 0, []
    for r, e in zip(ds.records, E):
        pg = structure_point_group(r.structure)
        centro += pg.centrosymmetric
        sym_err.append(symmetry_error(e, pg.rotations))
    sym_err = np.array(sym_err)
    val = validate_dataset(ds)
    return {
        "n": len(E),
        "share_voigt_fnorm_below": {str(t): float(np.mean(fn < t)) for t in (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)},
        "fnorm_quantiles": {str(q): float(np.quantile(fn, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)},
        "fnorm_max": float(fn.max()),
        "share_sum_sq_norm_top10pct": float(sq[: len(sq) // 10].sum() / sq.sum()),
        "zero_predictor_mae_voigt_all": float(np.abs(V).mean()),
        "centrosymmetric": int(centro),
        "point_group_consistent_rel_err_below_0.05": float(np.mean(sym_err < 0.05)),
        "validation_passed": len(val.passed_ids),
    }


def wurtzite_polarity() -> dict:
    from matxfer.data.registry import load_dataset
    from matxfer.tensors import cartesian_to_voigt

    rows = []
    for r in load_dataset("dejong-piezo-2015").records:
        s = r.structure
        if len(s) != 4 or len(s.composition) != 2 or str(r.meta.get("point_group")) != "6mm":
            continue
        e = cartesian_to_voigt(r.labels["piezo_tensor"])
        cat, an = sorted(s.composition.elements, key=lambda el: el.X)
        sign = None
        for site in s:
            if site.specie != cat:
                continue
            best = None
            for nb in s.get_neighbors(site, 3.5):
                if nb.specie != an:
                    continue
                v = nb.coords - site.coords
                d = float(np.linalg.norm(v))
                if abs(v[2]) / d > 0.95 and (best is None or d < best[0]):
                    best = (d, float(np.sign(v[2])))
            sign = None if best is None else best[1]
            break
        rows.append(
            {
                "id": r.material_id,
                "formula": s.composition.reduced_formula,
                "e33": float(e[2, 2]),
                "e31": float(e[2, 0]),
                "cation_to_anion_along_c": sign,
                "e33_times_polarity": None if sign is None else float(np.sign(e[2, 2]) * sign),
            }
        )
    prod = [r["e33_times_polarity"] for r in rows if r["e33_times_polarity"] is not None]
    return {
        "n": len(rows),
        "n_positive": int(sum(p > 0 for p in prod)),
        "n_negative": int(sum(p < 0 for p in prod)),
        "rows": rows,
    }


def _sign_scores(pred: np.ndarray, true: np.ndarray) -> dict:
    from matxfer.tensors import cartesian_to_voigt

    pv = np.stack([cartesian_to_voigt(p) for p in pred])
    tv = np.stack([cartesian_to_voigt(t) for t in true])
    tn = np.sqrt((tv**2).sum((1, 2)))
    e_plus = np.sqrt(((pv - tv) ** 2).sum((1, 2)))
    e_minus = np.sqrt(((pv + tv) ** 2).sum((1, 2)))
    best = np.minimum(e_plus, e_minus)
    return {
        "fnorm": float(e_plus.mean()),
        "fnorm_sign_agnostic": float(best.mean()),
        "fnorm_over_label": float(e_plus.mean() / tn.mean()),
        "fnorm_sign_agnostic_over_label": float(best.mean() / tn.mean()),
        "ewt25": float(np.mean(e_plus <= 0.25 * tn)),
        "ewt25_sign_agnostic": float(np.mean(best <= 0.25 * tn)),
        "share_closer_to_minus_y": float(np.mean(e_minus < e_plus)),
    }


def train_variant(name: str, extra: dict, epochs: int) -> dict:
    from matxfer.config import config_from_dict
    from matxfer.study.runner import deep_merge
    from matxfer.train.loop import fit

    extra = dict(extra)
    imp = extra.pop("import", None)
    raw = deep_merge(BASE, extra)
    raw = deep_merge(raw, {"name": name, "out": str(RUNS / name), "optim": {"epochs": epochs}})
    if imp:
        from tensor_parameterization import parent_checkpoint

        raw["transfer"]["init_from"] = parent_checkpoint(imp)
        raw["model"] = {k: v for k, v in raw["model"].items() if k != "backbone"}
    t0 = time.time()
    res = fit(config_from_dict(raw), command="benchmark")
    blob = json.loads((RUNS / name / "test_predictions.json").read_text())
    d = next(iter(blob.values()))
    key = next(iter(res.metrics["test"]))
    test = res.metrics["test"][key]
    return {
        "wall_s": round(time.time() - t0, 1),
        "best_epoch": res.best_epoch,
        "test": {k: v for k, v in test.items() if not isinstance(v, dict)},
        "test_baselines": test.get("baselines"),
        "sign_scores": _sign_scores(np.array(d["pred"]), np.array(d["true"])),
    }


def eij_max_model(epochs: int) -> dict:
    from matxfer.config import config_from_dict
    from matxfer.study.runner import deep_merge
    from matxfer.train.loop import fit

    raw = deep_merge(BASE, {
        "name": "eij_max", "out": str(RUNS / "eij_max"),
        "data": {"targets": ["eij_max"]}, "optim": {"epochs": epochs},
    })
    res = fit(config_from_dict(raw), command="benchmark")
    blob = json.loads((RUNS / "eij_max" / "test_predictions.json").read_text())["eij_max"]
    true = np.array(blob["true"])
    from matxfer.data.registry import load_dataset
    from matxfer.data.splits import Split

    split = Split.load(RUNS / "eij_max" / "split.json")
    train_ids = set(split.train)
    train_vals = [
        r.labels["eij_max"] for r in load_dataset("dejong-piezo-2015").records
        if r.material_id in train_ids and r.labels.get("eij_max") is not None
    ]
    mean = float(np.mean(train_vals))
    median = float(np.median(train_vals))
    return {
        "test": res.metrics["test"]["eij_max"],
        "mean_predictor_mae": float(np.abs(true - mean).mean()),
        "median_predictor_mae": float(np.abs(true - median).mean()),
        "log_space": {
            "model_mae_log10": float(np.abs(np.log10(np.clip(blob["pred"], 1e-4, None)) - np.log10(true)).mean()),
            "median_predictor_mae_log10": float(np.abs(np.log10(median) - np.log10(true)).mean()),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--only", choices=["stats", "train"], default=None)
    ap.add_argument("--variants", nargs="*", default=["l1", "l1_sign_agnostic", "l1_relative", "eij_max"])
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result["protocol"] = {
        "dataset": "dejong-piezo-2015 (validated entries), split 80/10/10 by id hash, seed 0",
        "model": BASE["model"],
        "optim": {**BASE["optim"], "epochs": args.epochs},
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.platform(),
        "load_avg": os.getloadavg(),
    }
    if args.only in (None, "stats"):
        result["labels"] = label_stats()
        result["wurtzite_polarity"] = wurtzite_polarity()
        OUT.write_text(json.dumps(result, indent=1))
    if args.only in (None, "train"):
        result.setdefault("training", {})
        for name in args.variants:
            row = eij_max_model(args.epochs) if name == "eij_max" else train_variant(
                name, VARIANTS[name], args.epochs
            )
            # re-read before writing: several invocations may run at once
            result = {**result, **(json.loads(OUT.read_text()) if OUT.exists() else {})}
            result.setdefault("training", {})[name] = row
            OUT.write_text(json.dumps(result, indent=1, default=float))
            print(name, json.dumps(result["training"][name], default=float)[:400], flush=True)
    OUT.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
