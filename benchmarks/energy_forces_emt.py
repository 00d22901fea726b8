"""Energy and force accuracy on the EMT data set (``emt-metals``; ASE EMT, not DFT).

The local-frame backbone (default configuration, graphs of every neighbour within 5 A)
learns the energy per atom and the forces together, with direct forces
(``F_i = sum_j f_ij r_ij``) or conservative ones (``-dE/dx``); loss weights 1 (energy) and
1 (forces) on normalised units. Split 80/10/10 of the 300 configurations (seed 0), batch 8,
a budget of ``--minutes`` of wall clock on ``--threads`` threads per case, cosine schedule
sized to it, best-validation weights. Baseline in the same run: predicting zero forces and
each training set's mean energy per atom.

Usage: python benchmarks/energy_forces_emt.py [--minutes 6] [--threads 1]
Writes benchmarks/results/energy_forces_emt.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _budget import budgeted_fit, machine  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "energy_forces_emt.json"
HEADS = {
    "direct": {"name": "direct-forces", "cutoff": 5.0},
    "conservative": {"name": "conservative-forces", "energy": "energy_per_atom"},
}


def baseline(run_dir: Path) -> dict:
    """Zero forces and the training-mean energy per atom, on the same test split."""
    from matxfer.data.registry import load_dataset
    from matxfer.data.splits import Split

    split = Split.load(run_dir / "split.json")
    recs = {r.material_id: r for r in load_dataset("emt-metals").records}
    e_train = np.mean([recs[i].labels["energy_per_atom"] for i in split.train])
    e_test = np.array([recs[i].labels["energy_per_atom"] for i in split.test])
    f_test = np.concatenate([recs[i].labels["forces"] for i in split.test])
    return {
        "energy_per_atom_mae_eV": float(np.abs(e_test - e_train).mean()),
        "forces_mae_eV_per_A": float(np.abs(f_test).mean()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs-dir", default="runs/benchmarks/emt")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"benchmark": "energy_forces_emt", "dataset": "emt-metals (ASE EMT, not DFT)",
              "budget_minutes_per_case": args.minutes, "threads": args.threads, "machine": machine(),
              "cases": {}}
    for name, head in HEADS.items():
        raw = {
            "name": f"emt-{name}", "seed": 0, "out": str(Path(args.runs_dir) / name),
            "data": {"datasets": ["emt-metals"], "targets": ["energy_per_atom", "forces"],
                     "split": {"fractions": [0.8, 0.1, 0.1], "seed": 0}},
            "graph": {"cutoff": 5.0},
            "model": {"backbone": {"name": "local-frame", "cutoff": 5.0},
                      "heads": {"energy_per_atom": {"name": "energy", "reduce": "mean"}, "forces": head}},
            "optim": {"lr": 2e-3, "batch_size": 8, "warmup_epochs": 1},
        }
        res = budgeted_fit(raw, args.minutes)
        t = res["test"]
        result["cases"][name] = {
            "energy_per_atom_mae_meV": 1000 * t["energy_per_atom"]["mae"],
            "forces_mae_eV_per_A": t["forces"]["mae"],
            "forces_mae_norm_eV_per_A": t["forces"]["mae_norm"],
            "forces_cos_mean": t["forces"]["cos_mean"],
            "epochs_run": res["epochs_run"],
            "train_structures_per_s": res["train_structures_per_s"],
            "params": res["total_params"],
            "test": t,
        }
        if "baseline_same_split" not in result:  # every case uses the same split (seed 0)
            result["baseline_same_split"] = baseline(Path(res["out_dir"]))
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(result, indent=1, default=float))
        print(name, json.dumps({k: v for k, v in result["cases"][name].items() if k != "test"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
