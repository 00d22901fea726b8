"""Re-train a shipped model from its card's command and check that it reproduces.

Usage:
    python benchmarks/reproduce_shipped.py NAME [--members K] [--work-dir DIR] [--out FILE]

Reads the shipped model NAME (its checkpoint in the package's shipped folder, or
$MATXFER_SHIPPED_DIR): the command recorded at shipping, its config file and overrides, the
member seeds, the ensemble's test metrics and every member's test metrics. Runs that same
command (``benchmarks/ship_model.py`` as a subprocess, from the repository root) with
``--shipped DIR/shipped`` and ``--work-dir DIR/members`` added, so the package's files are
never touched, and compares the new checkpoint's stored metrics with the shipped ones.

Comparison, for every headline test metric (matxfer.shipped.build.HEADLINE) of every label:

- ``ensemble``: the re-trained ensemble against the shipped ensemble (only when all the
  shipped members are re-trained; with ``--members K`` below that it is skipped and said so);
- ``members_mean``: the mean over the re-trained members against the shipped members' mean;
- per seed (for information, not part of the verdict): re-trained seed k against shipped seed k.

Criterion: a metric reproduces when ``|new - shipped| <= tol`` with
``tol = max(2 * std, 0.01 * |shipped|, floor)``, where ``std`` is the standard deviation of
the shipped members' metric over the seeds (population std, numpy's default, the one the
card prints), ``0.01 * |shipped|`` keeps a metric whose seeds agree to the last digit from
failing on float noise, and ``floor`` is ``1 / n`` (one test crystal) for the metrics that are
fractions of the test crystals (ewt25, frac_pos_def) and 0 otherwise.

When the config's parent checkpoint (``transfer.init_from``, e.g.
``runs/imported/chgnet-0.3.0.ckpt``) is missing, it is written into DIR/imported with
``matxfer import-chgnet`` / ``import-sevennet`` from the shipped backbone's recorded weights
and passed as a ``transfer.init_from=...`` override (recorded in the result); the backbone
reference (weights sha256) of the new checkpoint is compared with the shipped one.

Writes benchmarks/results/reproduce_NAME.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHIP_SCRIPT = "benchmarks/ship_model.py"
#: metrics that are a fraction of the test crystals: their resolution is one crystal (1/n)
FRACTION_METRICS = ("ewt25", "frac_pos_def")
SIGMAS = 2.0
REL_FLOOR = 0.01


# --------------------------------------------------------------------------- stored metrics


def metric_sets(ckpt: dict) -> dict[str, Any]:
    """The headline test metrics a shipped checkpoint stores: ``{"ensemble": {label:
    {metric: value}}, "members": [{label: {metric: value}}, ...], "seeds": [...], "n": int}``."""
    from matxfer.shipped.build import _headline

    m = ckpt.get("metrics") or {}
    if not m.get("test"):
        raise ValueError("the checkpoint stores no test metrics (metrics.test is empty); "
                         "it was not written by benchmarks/ship_model.py")
    members = m.get("members") or []
    seeds = [mem.get("seed") for mem in ckpt.get("members") or []]
    if members and len(seeds) != len(members):
        raise ValueError(f"the checkpoint stores metrics of {len(members)} member(s) but "
                         f"{len(seeds)} member seed(s)")
    head = _headline(m["test"])
    ensemble = {t: {k: v for k, v in row.items() if k != "n"} for t, row in head.items()}
    # checkpoints shipped before the metrics carried "n": the first label's test count
    n = m.get("n") or next((row["n"] for row in head.values() if "n" in row), 0)
    return {
        "ensemble": ensemble,
        "members": [{t: {k: v for k, v in row.items() if k != "n"}
                     for t, row in _headline(mem).items()} for mem in members],
        "seeds": seeds,
        "n": int(n),
        "wall_time_s": m.get("wall_time_s"),
    }


def tolerance(metric: str, std: float, ref: float, n: int) -> float:
    """The allowed |new - shipped| of one metric (see the module docstring)."""
    floor = 1.0 / n if metric in FRACTION_METRICS and n > 0 else 0.0
    return max(SIGMAS * std, REL_FLOOR * abs(ref), floor)


def _stats(values: list[float]) -> tuple[float, float]:
    import numpy as np

    return float(np.mean(values)), float(np.std(values))


def _row(label: str, metric: str, kind: str, shipped: float, new: float, std: float,
         n: int) -> dict[str, Any]:
    tol = tolerance(metric, std, shipped, n)
    diff = new - shipped
    ok = bool(math.isfinite(diff) and abs(diff) <= tol)
    return {"label": label, "metric": metric, "compare": kind, "shipped": shipped, "new": new,
            "diff": diff, "shipped_member_std": std, "tolerance": tol,
            "diff_over_std": diff / std if std > 0 else None, "pass": ok}


def compare(shipped: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Compare two :func:`metric_sets` (the shipped model's and the re-trained one's).

    The re-trained members are matched to the shipped ones by seed. The ensemble rows are
    compared only when every shipped seed was re-trained.

    Returns ``{"rows": [...], "per_seed": [...], "ensemble_compared": bool, "note": str,
    "pass": bool}``; every row carries shipped, new, diff, tolerance and pass.
    """
    if not shipped["members"]:
        raise ValueError("the shipped model stores no per-member metrics: no seed spread to "
                         "compare against")
    if not new["members"]:
        raise ValueError("the re-trained model stores no per-member metrics")
    by_seed = dict(zip(shipped["seeds"], shipped["members"]))
    missing = [s for s in new["seeds"] if s not in by_seed]
    if missing:
        raise ValueError(f"re-trained seed(s) {missing} are not among the shipped model's "
                         f"seeds {shipped['seeds']}")
    n = int(shipped.get("n") or 0)
    rows: list[dict[str, Any]] = []
    per_seed: list[dict[str, Any]] = []
    full = sorted(new["seeds"]) == sorted(shipped["seeds"])
    for label, ens_row in shipped["ensemble"].items():
        for metric, ens_value in ens_row.items():
            old_vals = [m[label][metric] for m in shipped["members"]
                        if math.isfinite(m.get(label, {}).get(metric, math.nan))]
            new_vals = [m[label][metric] for m in new["members"]
                        if math.isfinite(m.get(label, {}).get(metric, math.nan))]
            if not old_vals or not new_vals:
                continue
            old_mean, old_std = _stats(old_vals)
            if full:
                new_ens = new["ensemble"].get(label, {}).get(metric, math.nan)
                rows.append(_row(label, metric, "ensemble", ens_value, new_ens, old_std, n))
            new_mean, new_std = _stats(new_vals)
            r = _row(label, metric, "members_mean", old_mean, new_mean, old_std, n)
            r["new_member_std"] = new_std
            r["k_members"] = len(new_vals)
            rows.append(r)
            for seed, mem in zip(new["seeds"], new["members"]):
                v = mem.get(label, {}).get(metric, math.nan)
                old = by_seed[seed].get(label, {}).get(metric, math.nan)
                if math.isfinite(old):
                    per_seed.append({**_row(label, metric, "seed", old, v, old_std, n),
                                     "seed": seed})
    if not rows:
        raise ValueError("no headline metric is present in both the shipped and the "
                         "re-trained metrics")
    note = ("ensemble compared (all shipped seeds re-trained)" if full else
            f"ensemble comparison skipped: only seed(s) {new['seeds']} of the shipped "
            f"{shipped['seeds']} were re-trained; their mean is compared with the shipped "
            "members' mean and spread")
    return {"rows": rows, "per_seed": per_seed, "ensemble_compared": full, "note": note,
            "pass": all(r["pass"] for r in rows)}


CRITERION = (f"pass when |new - shipped| <= max({SIGMAS:g} x std, {REL_FLOOR:g} x |shipped|, "
             "floor); std = population standard deviation of the shipped members' metric over "
             "the seeds; floor = 1/n_test for fraction metrics (" + ", ".join(FRACTION_METRICS)
             + "), else 0. 'ensemble' = re-trained ensemble vs shipped ensemble; "
             "'members_mean' = mean of the re-trained members vs mean of all shipped members.")


# --------------------------------------------------------------------------- the command


def stored_command(ckpt: dict) -> dict[str, Any]:
    """The ship_model.py invocation a shipped checkpoint records, parsed."""
    prov = ckpt.get("provenance") or {}
    command = prov.get("command") or ""
    words = shlex.split(command)
    if SHIP_SCRIPT not in words:
        raise ValueError(f"the recorded command {command!r} does not run {SHIP_SCRIPT}")
    argv = words[words.index(SHIP_SCRIPT) + 1:]
    p = argparse.ArgumentParser(prog=SHIP_SCRIPT, add_help=False)
    p.add_argument("name")
    p.add_argument("--config")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--shipped")
    p.add_argument("--work-dir")
    p.add_argument("--description", default="")
    p.add_argument("overrides", nargs="*")
    try:
        args = p.parse_intermixed_args(argv)
    except SystemExit as e:
        raise ValueError(f"the recorded command {command!r} cannot be parsed") from e
    if not args.config:
        raise ValueError(f"the recorded command {command!r} names no --config")
    stored_overrides = list(prov.get("overrides") or [])
    if stored_overrides != list(args.overrides):
        raise ValueError(f"the recorded command's overrides {args.overrides} differ from the "
                         f"provenance's {stored_overrides}")
    return {"command": command, "name": args.name, "config": args.config,
            "members": args.members, "description": args.description,
            "overrides": list(args.overrides), "parent": prov.get("parent"),
            "parent_sha256": prov.get("parent_sha256")}


def import_command(ckpt: dict, out: Path) -> list[str]:
    """The ``matxfer import-*`` command that writes the shipped model's frozen parent."""
    bb = ckpt["model_config"]["backbone"]
    ref = ckpt.get("backbone_ref") or {}
    name = bb.get("name")
    exe = [str(Path(sys.executable).with_name("matxfer"))]
    if name == "chgnet":
        cmd = exe + ["import-chgnet", "--weights", str(ref.get("weights") or "0.3.0"),
                     "--out", str(out)]
        if bb.get("readout_norm") is False:
            cmd.append("--no-readout-norm")
        return cmd
    if name == "sevennet":
        return exe + ["import-sevennet", "--model", str(ref.get("weights") or "7net-0"),
                      "--parity", str(bb.get("parity") or "natural"), "--out", str(out)]
    raise ValueError(f"backbone {name!r}: the parent {ckpt['provenance'].get('parent')!r} is "
                     "missing and only chgnet / sevennet parents can be re-imported")


def _config_parent(config: str, overrides: list[str]) -> str | None:
    from matxfer.config import load_config

    return load_config(ROOT / config, overrides).transfer.init_from


def _git_commit() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.rstrip("\n")

    return {"commit": git("rev-parse", "HEAD").strip(),
            "dirty_files": [ln[3:] for ln in git("status", "--porcelain").splitlines()
                            if ln and not ln.startswith("??")]}


class LoadSampler:
    """1-minute load average sampled every ``every`` seconds while a run is going."""

    def __init__(self, every: float = 15.0):
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, Any]:
        s = self.samples
        return {"loadavg_1min_start": round(s[0], 2), "loadavg_1min_end": round(s[-1], 2),
                "loadavg_1min_mean": round(sum(s) / len(s), 2),
                "loadavg_1min_max": round(max(s), 2), "samples": len(s),
                "cpus": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


# --------------------------------------------------------------------------- report


def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    return str(v)


def markdown(result: dict[str, Any]) -> str:
    cmp_ = result["comparison"]
    lines = [f"## reproduce {result['name']}: {'PASS' if cmp_['pass'] else 'FAIL'}", "",
             f"- {cmp_['note']}", f"- criterion: {result['criterion']}",
             f"- re-trained seeds {result['retrained_seeds']} in {result['wall_time_s']:.0f} s "
             f"(shipped: {result['shipped_wall_time_s']:.0f} s for "
             f"{len(result['shipped_seeds'])} members), load "
             f"{result['machine_load']['loadavg_1min_mean']} mean / "
             f"{result['machine_load']['loadavg_1min_max']} max on "
             f"{result['machine_load']['cpus']} CPUs", "",
             "| label | metric | compare | shipped | new | diff | shipped std | tol | pass |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in cmp_["rows"]:
        lines.append(f"| {r['label']} | {r['metric']} | {r['compare']} | {_f(r['shipped'])} | "
                     f"{_f(r['new'])} | {_f(r['diff'])} | {_f(r['shipped_member_std'])} | "
                     f"{_f(r['tolerance'])} | {'yes' if r['pass'] else 'NO'} |")
    if cmp_["per_seed"]:
        lines += ["", "Per seed (information only):", "",
                  "| label | metric | seed | shipped | new | diff | within tol |",
                  "|---|---|---|---|---|---|---|"]
        for r in cmp_["per_seed"]:
            lines.append(f"| {r['label']} | {r['metric']} | {r['seed']} | {_f(r['shipped'])} | "
                         f"{_f(r['new'])} | {_f(r['diff'])} | {'yes' if r['pass'] else 'no'} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def reproduce(name: str, members: int | None, work_dir: Path) -> dict[str, Any]:
    from matxfer.checkpoint import load_checkpoint
    from matxfer.shipped import load_index, shipped_dir

    index = load_index()
    if name not in index:
        raise ValueError(f"no shipped model {name!r} in {shipped_dir()} "
                         f"(shipped: {', '.join(sorted(index)) or 'none'})")
    old_path = shipped_dir() / index[name]["file"]
    old_ckpt = load_checkpoint(old_path)
    old = metric_sets(old_ckpt)
    stored = stored_command(old_ckpt)
    k = stored["members"] if members is None else members
    if not 1 <= k <= len(old["seeds"]):
        raise ValueError(f"--members {k}: must be between 1 and the shipped model's "
                         f"{len(old['seeds'])} members")
    if old["seeds"][:k] != list(range(k)):
        raise ValueError(f"shipped seeds {old['seeds']}: ship_model.py trains seeds 0..K-1, "
                         "so the first K cannot be re-trained")

    work_dir = work_dir.resolve()
    shipped_out, members_dir = work_dir / "shipped", work_dir / "members"
    if shipped_out.resolve() == shipped_dir().resolve():
        raise ValueError(f"{shipped_out} is the shipped folder itself; choose another --work-dir")
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "ship_model.log"
    overrides = list(stored["overrides"])
    extra: list[str] = []
    parent_note = None
    parent = _config_parent(stored["config"], overrides)
    if parent and not (ROOT / parent).exists():
        target = work_dir / "imported" / Path(parent).name
        if not target.exists():
            cmd = import_command(old_ckpt, target)
            print("importing the parent:", shlex.join(cmd), flush=True)
            with open(log_path, "w") as fh:
                subprocess.run(cmd, cwd=ROOT, check=True, stdout=fh, stderr=subprocess.STDOUT)
        extra.append(f"transfer.init_from={target}")
        parent_note = (f"{parent} is not in the repository; written to {target} from the "
                       "shipped backbone's recorded weights and passed as an override")

    words = [stored["name"], *overrides, *extra, "--config", stored["config"],
             "--members", str(k), "--description", stored["description"],
             "--shipped", str(shipped_out), "--work-dir", str(members_dir)]
    argv = [sys.executable, SHIP_SCRIPT, *words]
    command = "python " + SHIP_SCRIPT + " " + shlex.join(words)
    print("running:", command, flush=True)
    t0 = time.time()
    with LoadSampler() as load, open(log_path, "a") as fh:
        proc = subprocess.run(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False)
    wall = time.time() - t0
    if proc.returncode != 0:
        tail = log_path.read_text().splitlines()[-30:]
        raise RuntimeError(f"ship_model.py exited with {proc.returncode}; last lines of "
                           f"{log_path}:\n" + "\n".join(tail))
    new_ckpt = load_checkpoint(shipped_out / f"{stored['name']}.ckpt")
    new = metric_sets(new_ckpt)
    comparison = compare(old, new)
    new_prov = new_ckpt.get("provenance") or {}
    return {
        "name": name,
        "shipped_checkpoint": str(old_path.relative_to(ROOT) if old_path.is_relative_to(ROOT)
                                  else old_path),
        "shipped_command": stored["command"],
        "command": command,
        "config": stored["config"],
        "overrides": overrides,
        "extra_overrides": extra,
        "parent_note": parent_note,
        "parent_sha256": {"shipped": stored["parent_sha256"],
                          "new": new_prov.get("parent_sha256")},
        "backbone_ref_same": (old_ckpt.get("backbone_ref") or {}).get("sha256")
        == (new_ckpt.get("backbone_ref") or {}).get("sha256"),
        "backbone_config_same": old_ckpt["model_config"]["backbone"]
        == new_ckpt["model_config"]["backbone"],
        "split_same": old_ckpt.get("split") == new_ckpt.get("split"),
        "data_fingerprint": {"shipped": (old_ckpt.get("provenance") or {}).get("data_fingerprint"),
                             "new": new_prov.get("data_fingerprint")},
        "shipped_seeds": old["seeds"],
        "retrained_seeds": new["seeds"],
        "n_test": old["n"],
        "n_test_new": new["n"],
        "criterion": CRITERION,
        "comparison": comparison,
        "shipped_metrics": old,
        "new_metrics": new,
        "wall_time_s": round(wall, 1),
        "shipped_wall_time_s": old["wall_time_s"],
        "new_stored_wall_time_s": new["wall_time_s"],
        "machine_load": load.summary(),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "matxfer_git": _git_commit(),
        "work_dir": str(work_dir),
        "log": str(log_path),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="a shipped model (matxfer models lists them)")
    p.add_argument("--members", type=int, default=None,
                   help="re-train only the first K seeds (default: all the shipped members)")
    p.add_argument("--work-dir", default=None,
                   help="member runs, the new shipped folder and the log "
                        "(default runs/reproduce-NAME)")
    p.add_argument("--out", default=None,
                   help="result JSON (default benchmarks/results/reproduce_NAME.json)")
    args = p.parse_args(argv)
    from matxfer.jsonout import json_safe

    work = Path(args.work_dir) if args.work_dir else ROOT / "runs" / f"reproduce-{args.name}"
    result = reproduce(args.name, args.members, work)
    out = Path(args.out) if args.out else RESULTS / f"reproduce_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(result), indent=1) + "\n")
    print(markdown(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
