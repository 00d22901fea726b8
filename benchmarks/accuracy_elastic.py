"""Elastic routes compared on one split and one budget, from the configs a user can run.

Every route is a run config under ``configs/elastic_routes/`` (its header comment names the
``matxfer train`` / ``matxfer finetune`` command that runs it alone); this script runs the
chosen routes one after the other through :func:`matxfer.train.loop.fit` (what those
commands run) with the same stratified 80/10/10 split by id (seed 0) and the same
``optim.budget_min`` (``--budget-min`` overrides the configs' own), and writes per route:

- test K_VRH / G_VRH MAE (GPa), log10 K / log10 G MAE and ``mae_voigt`` of the elastic
  tensor routes (derived from the point-group projected tensor predictions); for the scalar
  log10 K_VRH routes their log10 K MAE and the K_VRH MAE of ``10**prediction``;
- the fit's wall and CPU time (and the CPU share per thread), the one-time frozen-feature
  caching time apart from it (from the run's ``train.log``; 0 computed when the features
  came from the on-disk cache) and the budget plan (``provenance.budget`` of the checkpoint: measured throughput, epochs);
- the validation curve: per epoch ``elapsed_s`` (since the Lightning module was built: it
  includes the feature caching and the budget probe), ``train_s`` (the same with those two
  taken off), ``val_loss`` and ``val_mae/<target>`` (mean absolute error over the tensor's
  Cartesian components, physical units), from the CSV log;
- the test metrics per crystal system (the same projected predictions, grouped);
- the machine, its load, the config file and the exact command.

Published references on the same source (MatTen, derived K_VRH / G_VRH MAE 7.37 / 8.38 GPa)
and on Matbench (log10 K / G, other split) are kept in the JSON.

Usage:
    python benchmarks/accuracy_elastic.py [--routes scratch_equivariant,sevennet_product,...]
        [--budget-min 30] [--threads 2] [--limit N] [--runs-dir runs/elastic_routes] [--out FILE]

SevenNet / CHGNet routes need their parents first:
    matxfer import-sevennet --out runs/imported/sevennet-0.ckpt
    matxfer import-chgnet --out runs/imported/chgnet-0.3.0.ckpt
Writes benchmarks/results/accuracy_elastic.json (routes not rerun keep their earlier rows).
Use ``--out`` to another file for smoke runs (``--limit``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _budget import cpu_seconds, machine  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results" / "accuracy_elastic.json"
CONFIGS = ROOT / "configs" / "elastic_routes"
#: route order of a full run (every config in CONFIGS; others found there run after these)
ORDER = (
    "scratch_equivariant", "sevennet_product", "chgnet_edge", "sevennet_freeze",
    "cgcnn_log10_kvrh", "cgcnn_attention_log10_kvrh",
)
REFERENCE = {
    "matten_k_vrh_mae_gpa": 7.37,
    "matten_g_vrh_mae_gpa": 8.38,
    "matbench_best_log10_k_vrh_mae": 0.049,
    "matbench_best_log10_g_vrh_mae": 0.067,
    "matbench_cgcnn_log10_k_vrh_mae": 0.071,
}
TARGETS = {"k_vrh_mae": 7.0, "g_vrh_mae": 8.0, "log10_k_vrh_mae": 0.05, "log10_g_vrh_mae": 0.07}
#: metrics kept per target (when present)
HEADLINE = ("n", "mae", "rmse", "r2", "mae_voigt", "fnorm", "k_vrh_mae", "g_vrh_mae",
            "log10_k_vrh_mae", "log10_g_vrh_mae", "frac_pos_def")
#: keys of accuracy_elastic.json written by the earlier version of this script (run configs
#: as dicts in the script, unstratified split); kept under "earlier_dict_configs"
EARLIER_KEYS = ("equivariant_elastic", "cgcnn_log10_k_vrh", "cgcnn-attention_log10_k_vrh")
CACHE_LINE = re.compile(
    r"outputs of (\d+) crystals cached \((\d+) reused from disk, (\d+) computed\) in ([\d.]+) s"
)


def available_routes() -> list[str]:
    found = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    return [r for r in ORDER if r in found] + [r for r in found if r not in ORDER]


def parse_routes(text: str | None) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (None or ``"all"``: every route); unknown names are an
    error naming them and the valid ones."""
    valid = available_routes()
    if not text or text == "all":
        return valid
    routes = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in routes if r not in valid]
    if unknown:
        raise SystemExit(f"--routes: unknown route(s) {unknown}; valid: {valid} "
                         f"(one config each in {CONFIGS.relative_to(ROOT)}/)")
    if not routes:
        raise SystemExit(f"--routes: no route named; valid: {valid}")
    return routes


def headline(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    from matxfer.shipped.build import headline_metrics

    return headline_metrics(metrics, HEADLINE)


def summary(test: dict[str, dict[str, float]], k_from_log: float | None) -> dict[str, float | None]:
    """The comparison's numbers of one route (None where the route does not predict them)."""
    row: dict[str, float | None] = dict.fromkeys(
        ("k_vrh_mae", "g_vrh_mae", "log10_k_vrh_mae", "log10_g_vrh_mae", "mae_voigt"))
    if "elastic_tensor" in test:
        m = test["elastic_tensor"]
        row.update({k: m.get(k) for k in row})
    if "log10_bulk_modulus_vrh" in test:
        row["log10_k_vrh_mae"] = test["log10_bulk_modulus_vrh"].get("mae")
        row["k_vrh_mae"] = k_from_log
    if "log10_shear_modulus_vrh" in test:
        row["log10_g_vrh_mae"] = test["log10_shear_modulus_vrh"].get("mae")
    return row


def read_curve(run_dir: Path, offset_s: float) -> list[dict[str, float]]:
    """Validation rows of the run's CSV log (one per epoch)."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path) as fh:
        for r in csv.DictReader(fh):
            if not (r.get("val_loss") and r.get("elapsed_s")):
                continue
            row = {"epoch": int(r["epoch"]), "elapsed_s": float(r["elapsed_s"]),
                   "train_s": max(0.0, float(r["elapsed_s"]) - offset_s),
                   "val_loss": float(r["val_loss"])}
            for k, v in r.items():
                if k.startswith("val_mae/") and v:
                    row[k] = float(v)
            rows.append(row)
    return rows


def read_caching(run_dir: Path) -> dict[str, float] | None:
    """The frozen-feature caching line of the run's train.log (None: nothing was cached)."""
    path = run_dir / "train.log"
    if not path.is_file():
        return None
    found = None
    for line in path.read_text().splitlines():
        m = CACHE_LINE.search(line)
        if m:
            found = {"crystals": int(m.group(1)), "reused_from_disk": int(m.group(2)),
                     "computed": int(m.group(3)), "wall_s": float(m.group(4))}
    return found


def by_crystal_system(cfg, tasks, run_dir: Path) -> dict[str, Any]:
    """Test metrics per crystal system from the run's saved (projected) test predictions."""
    from matxfer.data.registry import load_dataset
    from matxfer.kinds import kind_of
    from matxfer.symmetry import crystal_system

    pairs = json.loads((run_dir / "test_predictions.json").read_text())
    ids = sorted({i for d in pairs.values() for i in d["ids"]})
    structures = {}
    for name in cfg.data.datasets:
        for rec in load_dataset(name, root=cfg.data.data_dir, ids=ids).records:
            structures.setdefault(rec.material_id, rec.structure)
    system = {i: crystal_system(structures[i]) for i in ids if i in structures}
    out: dict[str, Any] = {}
    for target, d in pairs.items():
        task = tasks[target]
        groups: dict[str, list[int]] = {}
        for j, i in enumerate(d["ids"]):
            groups.setdefault(system.get(i, "unknown"), []).append(j)
        for name, idx in sorted(groups.items()):
            p = [np.asarray(d["pred"][j]) for j in idx]
            t = [np.asarray(d["true"][j]) for j in idx]
            p = [float(x) for x in p] if task.kind != "tensor" else p
            t = [float(x) for x in t] if task.kind != "tensor" else t
            m = headline({target: kind_of(task.kind).metrics(p, t, task.formula)})[target]
            if target == "log10_bulk_modulus_vrh":
                m["k_vrh_mae_from_10pow"] = float(np.mean(np.abs(10.0 ** np.array(p) - 10.0 ** np.array(t))))
            out.setdefault(name, {"n": len(idx)})[target] = m
    return out


def k_vrh_from_log(run_dir: Path) -> float | None:
    """K_VRH MAE (GPa) of ``10**prediction`` for a log10 K_VRH route."""
    path = run_dir / "test_predictions.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text()).get("log10_bulk_modulus_vrh")
    if not d or not d["pred"]:
        return None
    p, t = np.asarray(d["pred"], dtype=float).ravel(), np.asarray(d["true"], dtype=float).ravel()
    return float(np.mean(np.abs(10.0 ** p - 10.0 ** t)))


def run_route(route: str, args) -> dict[str, Any]:
    from matxfer.checkpoint import load_checkpoint
    from matxfer.config import load_config, to_dict
    from matxfer.train.loop import build_tasks, fit

    config = CONFIGS / f"{route}.yaml"
    run_dir = Path(args.runs_dir) / route
    overrides = [f"out={run_dir}"]
    if args.budget_min is not None:
        overrides.append(f"optim.budget_min={args.budget_min:g}")
    if args.limit is not None:
        overrides.append(f"data.limit={args.limit}")
    cfg = load_config(config, overrides)
    if not cfg.optim.budget_min:
        raise SystemExit(f"{config}: optim.budget_min is not set; every route trains to a budget")
    parent = cfg.transfer.init_from
    if parent and not Path(parent).is_file():
        kind = "sevennet" if "sevennet" in parent else "chgnet"
        raise SystemExit(f"route {route}: parent checkpoint {parent} is missing; write it with "
                         f"`matxfer import-{kind} --out {parent}`")
    if run_dir.is_dir():  # a timed run starts afresh (a rerun would resume from last.ckpt)
        if not (run_dir / "config.yaml").is_file():
            raise SystemExit(f"{run_dir} exists and is not a run directory; choose --runs-dir")
        shutil.rmtree(run_dir)
    command = "matxfer {} {} --out {}{}".format(
        "finetune" if parent else "train", config.relative_to(ROOT), run_dir,
        "".join(f" {o}" for o in overrides[1:]))
    load0 = os.getloadavg()
    w0, c0 = time.time(), cpu_seconds()
    res = fit(cfg, command="benchmark accuracy_elastic " + route)
    wall, cpu = time.time() - w0, cpu_seconds() - c0
    load1 = os.getloadavg()
    prov = load_checkpoint(res.checkpoint).get("provenance") or {}
    plan = prov.get("budget") or {}
    caching = read_caching(run_dir)
    # the probe's time is what it took off the budget (unknown when it took all of it)
    probe_s = None
    if plan.get("budget_s", 0.0) > 0:
        probe_s = max(0.0, plan["budget_min"] * 60.0 - plan["budget_s"])
    offset = (caching["wall_s"] if caching else 0.0) + (probe_s or 0.0)
    tasks = build_tasks(cfg)
    test = headline(res.metrics.get("test") or {})
    k_log = k_vrh_from_log(run_dir)
    if k_log is not None:
        test["log10_bulk_modulus_vrh"]["k_vrh_mae_from_10pow"] = k_log
    row = summary(test, k_log)
    curve = read_curve(run_dir, offset)
    split = json.loads((run_dir / "split.json").read_text())
    return {
        "config_file": str(config.relative_to(ROOT)),
        "command": command,
        "config": to_dict(cfg),
        "summary": row,
        "meets_target": {k: (row[k] <= v if row.get(k) is not None else None)
                         for k, v in TARGETS.items()},
        "test": test,
        "val": headline(res.metrics.get("val") or {}),
        "test_by_crystal_system": by_crystal_system(cfg, tasks, run_dir),
        "val_curve": curve,
        "time": {
            "fit_wall_s": wall,
            "fit_cpu_s": cpu,
            # CPU seconds this process got per wall second and thread (below 1: shared cores)
            "cpu_share": cpu / max(wall * args.threads, 1e-9),
            "training_s": curve[-1]["train_s"] if curve else None,
            "feature_caching": caching,
            "budget_probe_s": probe_s,
            "prepare_s": plan.get("prepare_s"),
        },
        "budget": plan,
        "epochs_run": res.metrics.get("epochs_run"),
        "best_epoch": res.best_epoch,
        "trainable_params": res.trainable_params,
        "split_sizes": {k: len(split.get(k) or []) for k in ("train", "val", "test")},
        "machine": {**machine(), "loadavg_at_start": list(load0), "loadavg_at_end": list(load1)},
        "limit": args.limit,
        "run_dir": str(run_dir),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def load_results(out: Path) -> dict[str, Any]:
    results = json.loads(out.read_text()) if out.is_file() else {}
    earlier = {k: results.pop(k) for k in EARLIER_KEYS if k in results}
    if earlier:
        earlier["protocol"] = results.pop("protocol", None)
        earlier["note"] = ("run configs as dicts inside the earlier version of this script, "
                           "80/10/10 split by id without stratification, linear tensor "
                           "parameterisation")
        results["earlier_dict_configs"] = earlier
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", default=None,
                    help=f"comma-separated routes (default all: {','.join(available_routes())})")
    ap.add_argument("--budget-min", type=float, default=None,
                    help="training wall-clock budget per route in minutes (default: each "
                         "config's optim.budget_min)")
    ap.add_argument("--limit", type=int, default=None, help="use only this many entries (smoke runs)")
    ap.add_argument("--runs-dir", default="runs/elastic_routes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    words = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(words)
    if args.budget_min is not None and args.budget_min <= 0:
        ap.error(f"--budget-min must be > 0, got {args.budget_min}")
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit must be >= 1, got {args.limit}")
    routes = parse_routes(args.routes)
    from matxfer.jsonout import dumps
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = load_results(out)
    results["reference"] = REFERENCE
    results["targets"] = TARGETS
    results["protocol"] = (
        "mp-elastic-2024, entries passing `matxfer data validate`, 80/10/10 split by id "
        "stratified by crystal system (split seed 0, the same for every route); each route is "
        "its config in configs/elastic_routes/ run with matxfer.train.loop.fit; "
        "optim.budget_min sizes the warm-up and cosine schedule to the measured throughput and "
        "stops at the budget, patience 0, best-validation weights; test metrics after "
        "point-group projection; feature caching is timed apart from training"
    )
    routes_out = results.setdefault("routes", {})

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(dumps(results, indent=1) + "\n")

    for route in routes:
        row = run_route(route, args)
        row["script_command"] = "python benchmarks/accuracy_elastic.py " + shlex.join(words)
        row["threads"] = args.threads
        routes_out[route] = row
        save()
        print(dumps({route: {"summary": row["summary"], "time": row["time"]}}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
