"""Scale-aware tensor parameterisation against the linear one, on every route, same run.

Dielectric tensors are heavy-tailed (mean eigenvalues from ~2 to several hundred). The
``log_isotropic`` parameterisation has the model predict the log of the mean eigenvalue and
the anisotropy relative to it (``tasks.<target>.parameterization``). Each route is trained
twice on the same fixed split with the same budget, once per parameterisation:

- ``scratch``: the small equivariant network of the CPU study, random weights;
- ``chgnet-head``: CHGNet 0.3.0 frozen (features computed once), edge tensor head;
- ``sevennet-head``: SevenNet-0 frozen, e3nn tensor head on its irreps features (when the
  ``sevennet`` extra is installed); ``sevennet-product``: the same with the tensor-product
  head.

Test metrics come from the same path as ``matxfer train`` (point-group projected), with the
zero and training-mean predictors on the same crystals.

Usage: python benchmarks/tensor_parameterization.py [--target dielectric_total]
       [--routes scratch chgnet-head] [--epochs 40]
Writes benchmarks/results/tensor_parameterization.json (runs under runs/tensor_parameterization/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "tensor_parameterization.json"
RUNS = Path("runs/tensor_parameterization")

DATASETS = {
    "dielectric_total": "petousis-dielectric-2017",
    "dielectric_electronic": "petousis-dielectric-2017",
    "elastic_tensor": "mp-elastic-2024",
}
SMALL_EQ = {
    "name": "equivariant",
    "hidden_irreps": "8x0e+8x0o+4x1o+4x1e+2x2e+2x2o+1x3o+1x3e+1x4e",
    "n_layers": 2,
}
ROUTES = {
    "scratch": {"model": {"backbone": SMALL_EQ}, "optim": {"lr": 0.005}},
    "chgnet-head": {"import": "chgnet", "transfer": {"recipe": "head"}, "optim": {"lr": 0.01}},
    "sevennet-head": {"import": "sevennet", "transfer": {"recipe": "head"}, "optim": {"lr": 0.01}},
    "sevennet-product": {
        "import": "sevennet", "transfer": {"recipe": "head"}, "optim": {"lr": 0.01},
        "model": {"heads": {"__target__": {"name": "tensor-product"}}},
    },
}


def parent_checkpoint(kind: str) -> str:
    path = RUNS / "imported" / f"{kind}.ckpt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "chgnet":
            from matxfer.models.backbones.chgnet import export_chgnet_checkpoint

            export_chgnet_checkpoint(path, "0.3.0")
        else:
            from matxfer.models.backbones.sevennet import export_sevennet_checkpoint

            export_sevennet_checkpoint(path)
    return str(path)


def run(route: str, target: str, param: str, epochs: int, seed: int) -> dict:
    from matxfer.config import config_from_dict
    from matxfer.study.runner import deep_merge
    from matxfer.train.loop import fit

    spec = json.loads(json.dumps(ROUTES[route]).replace("__target__", target))
    imp = spec.pop("import", None)
    name = f"{route}-{target}-{param}-s{seed}"
    raw = {
        "name": name,
        "out": str(RUNS / name),
        "seed": seed,
        "data": {
            "datasets": [DATASETS[target]],
            "targets": [target],
            "split": {"fractions": [0.8, 0.1, 0.1], "seed": 0},
        },
        "tasks": {target: {"parameterization": param}},
        "optim": {"epochs": epochs, "batch_size": 16, "patience": 10, "warmup_epochs": 1},
        "trainer": {"progress": False},
    }
    raw = deep_merge(raw, spec)
    if imp:
        raw = deep_merge(raw, {"transfer": {"init_from": parent_checkpoint(imp)}})
    t0 = time.time()
    res = fit(config_from_dict(raw), command="benchmark")
    m = res.metrics["test"][target]
    return {
        "wall_s": round(time.time() - t0, 1),
        "best_epoch": res.best_epoch,
        "trainable_params": res.trainable_params,
        "test": {k: v for k, v in m.items() if not isinstance(v, dict)},
        "baselines": {b: {k: v for k, v in d.items() if k in ("mae_voigt", "fnorm", "ewt25", "mean_eig_mae", "k_vrh_mae", "g_vrh_mae")}
                      for b, d in (m.get("baselines") or {}).items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="dielectric_total", choices=list(DATASETS))
    ap.add_argument("--routes", nargs="*", default=["scratch", "chgnet-head"])
    ap.add_argument("--params", nargs="*", default=["linear", "log_isotropic"])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result.setdefault("runs", {})
    result["protocol"] = {
        "split": "80/10/10 by id hash, seed 0 (validated entries)",
        "epochs": args.epochs, "batch_size": 16, "patience": 10,
        "threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.platform(),
    }
    for route in args.routes:
        for param in args.params:
            for seed in range(args.seeds):
                key = f"{args.target}/{route}/{param}/s{seed}"
                row = run(route, args.target, param, args.epochs, seed)
                row["load_avg"] = os.getloadavg()
                # re-read before writing: several invocations may run at once
                result = {**result, **(json.loads(OUT.read_text()) if OUT.exists() else {})}
                result.setdefault("runs", {})[key] = row
                OUT.write_text(json.dumps(result, indent=1, default=float))
                r = row
                print(key, r["wall_s"], {k: round(r["test"][k], 4) for k in ("mae_voigt", "fnorm", "ewt25") if k in r["test"]}, flush=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
