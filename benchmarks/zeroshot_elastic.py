"""Zero-shot elastic tensors of a universal potential against the DFT labels.

For a subset of the fixed ``mp-elastic-2024`` test split (80/10/10 by id, stratified by
crystal system, seed 0: the split of ``configs/ship/elastic*.yaml``), each crystal's elastic
tensor is computed from the potential alone by finite strains (``matxfer.zeroshot``: matcalc's
``ElasticityCalc``; the parent relaxed with the potential, internal coordinates relaxed in
every strained cell unless ``--clamped-ion``). Results are kept in the zero-shot store under
the cache directory, so a rerun (or a larger ``--n``) computes only what is missing.

Reports derived K_VRH / G_VRH MAE, MAPE and log10 MAE (the published zero-shot MAPE on MP is
~27 % for SevenNet-0 and ~72 % for CHGNet), per crystal system, the cost per crystal and
every failure.

Usage: python benchmarks/zeroshot_elastic.py [--potential sevennet-0] [--n 100] [--part test]
Writes benchmarks/results/zeroshot_elastic.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "zeroshot_elastic.json"
DATASET = "mp-elastic-2024"


def split_records(part: str):
    from matxfer.config import DataConfig, SplitConfig
    from matxfer.train.data import gather_records, make_split

    cfg = DataConfig(datasets=[DATASET], targets=["elastic_tensor"],
                     split=SplitConfig(fractions=(0.8, 0.1, 0.1), seed=0, stratify="crystal_system"))
    records, _ = gather_records(cfg, ["elastic_tensor"])
    split = make_split(cfg, sorted(records), records)
    return records, getattr(split, part)


def scores(rows: list[dict], records: dict) -> dict:
    """The same test metrics as ``matxfer evaluate`` (``metrics.tensor_metrics``), plus the
    MAPE of K_VRH and G_VRH (how the zero-shot numbers are published), overall and per
    crystal system."""
    from matxfer.metrics import elastic_derived, tensor_metrics
    from matxfer.symmetry import crystal_system
    from matxfer.tensors import voigt_to_cartesian

    done = [r for r in rows if r.get("voigt") is not None]
    pred = np.stack([voigt_to_cartesian(np.asarray(r["voigt"]), 4) for r in done]) if done else np.zeros((0, 3, 3, 3, 3))
    true = np.stack([np.asarray(records[r["id"]].labels["elastic_tensor"]) for r in done]) if done else pred
    systems = np.array([crystal_system(records[r["id"]].structure) for r in done])

    def summary(sel: np.ndarray) -> dict:
        out = tensor_metrics(pred[sel], true[sel], "ijkl=jikl=klij")
        dp = [elastic_derived(c) for c in pred[sel]]
        dt = [elastic_derived(c) for c in true[sel]]
        for key in ("k_vrh", "g_vrh"):
            p, t = np.array([d[key] for d in dp]), np.array([d[key] for d in dt])
            ok = np.isfinite(p) & (t > 0)
            out[f"{key}_mape"] = float(np.mean(np.abs(p[ok] - t[ok]) / t[ok])) if ok.any() else None
            out[f"{key}_nonpositive"] = int((p <= 0).sum())
        return out

    return {"overall": summary(np.ones(len(done), dtype=bool)),
            "by_crystal_system": {s: summary(systems == s) for s in sorted(set(systems))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--potential", default="sevennet-0")
    ap.add_argument("--n", type=int, default=100, help="crystals of the part (in the split's seeded order)")
    ap.add_argument("--part", default="test", choices=["train", "val", "test"])
    ap.add_argument("--clamped-ion", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    from matxfer.data.splits import shuffled
    from matxfer.zeroshot import ZeroShotSettings, ZeroShotStore, compute

    records, ids = split_records(args.part)
    ids = shuffled(ids, 0)[: args.n]
    settings = ZeroShotSettings(potential=args.potential, relax_ions=not args.clamped_ion)
    store = ZeroShotStore.for_dataset(DATASET, settings)
    t0 = time.time()
    rows = list(compute([(i, records[i].structure) for i in ids], settings, store).values())
    wall = time.time() - t0
    secs = [r["seconds"] for r in rows if r.get("seconds") is not None]
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    key = f"{args.potential}/{settings.mode}/{args.part}{args.n}"
    result[key] = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()},
        "part": args.part, "n_requested": len(ids),
        "n_failed": sum(r.get("voigt") is None for r in rows),
        "failures": {r["id"]: r["error"] for r in rows if r.get("error")},
        "seconds_per_crystal": {"mean": statistics.fmean(secs) if secs else None,
                                "median": statistics.median(secs) if secs else None,
                                "max": max(secs) if secs else None},
        "atoms_per_crystal_mean": statistics.fmean(r["n_atoms"] for r in rows) if rows else None,
        "wall_s_this_run": round(wall, 1), "threads": args.threads,
        "load_avg": os.getloadavg(), "machine": platform.platform(),
        "published_mape": {"sevennet-0": 0.27, "chgnet-0.3.0": 0.72},
        **scores(rows, records),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: result[key][k] for k in ("n_failed", "seconds_per_crystal", "overall")}, indent=1, default=float))


if __name__ == "__main__":
    main()
