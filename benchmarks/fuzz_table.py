"""Bad inputs -> command -> exit code -> message: the fuzz folder of ``tests/fuzz`` through the CLI.

Writes the generated inputs (bad structure files, dataset rows, dataset files, run configs and
checkpoints beside good ones) to a temporary folder, trains the tiny model of the fuzz test on
the fuzz dataset with ``matxfer train``, and runs every input through the commands that read
it, in-process (``matxfer.cli.main``), plus ``python -m matxfer predict`` in a real process for
the hostile checkpoint. Structure files are predicted one at a time, so each has its own exit
code (1: nothing predicted); dataset rows are reported by one ``data validate`` run (its exit
code is the run's). Messages are the first line, with the temporary folder's path removed.

Usage::

    python benchmarks/fuzz_table.py [--out benchmarks/results/fuzz_table.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import fuzz_inputs as F  # noqa: E402


def _strip(text: str, root: Path) -> str:
    return text.replace(str(root) + os.sep, "").replace(str(root), ".")


def _message(run: F.CliRun, root: Path) -> str:
    skipped = [line[len("skipped "):] for line in run.err.splitlines() if line.startswith("skipped ")]
    warned = [line.split(": ", 1)[1] for line in run.err.splitlines() if line.startswith("WARNING ")]
    if skipped:
        text = skipped[0]
    elif run.rc == 0 and warned:
        text = f"{run.out.splitlines()[0]}; warning: {warned[0]}"
    elif run.rc == 0:
        text = run.out.splitlines()[0] if run.out.strip() else "ok"
    else:
        text = run.message
    return _strip(text, root)


def build_table(root: Path) -> tuple[list[dict], dict]:
    os.environ["MATXFER_CACHE_DIR"] = str(root / "cache")
    os.environ["MATXFER_PROGRESS"] = "0"
    paths = F.write_fuzz_inputs(root)
    cfg = F.write_train_config(root / "train.yaml", paths["data"])
    rows: list[dict] = []

    def add(input_: str, command: str, run: F.CliRun, message: str | None = None) -> None:
        rows.append({
            "input": input_,
            "command": command,
            "exit_code": run.rc,
            "message": message if message is not None else _message(run, root),
            "traceback": "Traceback" in run.out + run.err,
        })

    t0 = time.perf_counter()
    train = F.run_cli(["train", cfg, "--out", root / "run"])
    model = root / "run" / "model.ckpt"
    first_skip = next((ln for ln in train.err.splitlines() if "entries skipped" in ln), "")
    add("data/ (fuzz dataset, 12 good + 12 bad rows)", "train", train,
        _strip(first_skip.split(": ", 1)[-1], root) + f" -> exit {train.rc}, {model.name} written"
        if model.is_file() else None)
    ck = F.write_checkpoints(root / "checkpoints", model, paths["marker"])

    s = paths["structures"]
    folder = F.run_cli(["predict", model, s, "--out", root / "all.json"])
    blob = F.strict_json((root / "all.json").read_text())
    add("structures/ (folder)", "predict --out all.json", folder,
        f"{len(blob['predictions'])} predicted, {len(blob['errors'])} skipped with a message each")
    for name in sorted(F.STRUCTURE_CASES):
        run = F.run_cli(["predict", model, s / name, "--out", root / "one.json"])
        add(f"structures/{name}", "predict", run)

    validate = F.run_cli(["data", "validate", F.DATASET, "--data-dir", paths["data"], "--json",
                          "--out", root / "report.json", "--no-cache"])
    report = F.strict_json((root / "report.json").read_text())
    reasons = {f["id"]: f["reason"] for f in report["failures"]}
    for entry in sorted(F.DATASET_CASES, key=lambda e: (e.startswith("good"), e)):
        if entry.startswith("good") and entry != "good-0":
            continue
        add(f"data/ row {entry}" + (" (and the other 11 good rows)" if entry == "good-0" else ""),
            "data validate", validate, reasons.get(entry, "passed"))
    ev = F.run_cli(["evaluate", model, "--data", F.DATASET, "--data-dir", paths["data"],
                    "--split", "all", "--out", root / "metrics.json"])
    metrics = F.strict_json((root / "metrics.json").read_text()) if ev.rc == 0 else {}
    add("data/ (fuzz dataset)", "evaluate --split all", ev,
        f"n={metrics.get('n')}, dropped {metrics.get('dropped')}" if metrics else None)

    for d in sorted(F.DATASET_FILE_CASES):
        dd = root / d
        add(f"{d}/", "data validate", F.run_cli(["data", "validate", F.DATASET, "--data-dir", dd]))
        add(f"{d}/", "evaluate", F.run_cli(
            ["evaluate", model, "--data", F.DATASET, "--data-dir", dd, "--split", "all"]))
        add(f"{d}/", "train", F.run_cli(
            ["train", F.write_train_config(root / f"t_{d}.yaml", dd), "--out", root / f"r_{d}"]))

    configs = F.write_bad_configs(root / "configs")
    for name in sorted(configs):
        add(f"configs/{name}", "train", F.run_cli(
            ["train", root / "configs" / name, "--out", root / "r_cfg"]))

    good = s / "good_si.cif"
    for name in sorted(F.CHECKPOINT_CASES):
        add(f"checkpoints/{name}", "predict", F.run_cli(
            ["predict", ck / name, good, "--out", root / "p.json"]))
        add(f"checkpoints/{name}", "evaluate", F.run_cli(
            ["evaluate", ck / name, "--data", F.DATASET, "--data-dir", paths["data"]]))
        add(f"checkpoints/{name}", "inspect", F.run_cli(["inspect", ck / name]),
            None)
        if rows[-1]["exit_code"] == 0:
            rows[-1]["message"] = "metadata printed (weights are not read by inspect)"
    add("checkpoints/hostile.ckpt", "finetune --init-from", F.run_cli(
        ["finetune", cfg, "--init-from", ck / "hostile.ckpt", "--out", root / "ft"]))
    for name in ("hostile.pth.tar", "garbled_pickle.ckpt", "truncated.ckpt", "random.ckpt"):
        add(f"checkpoints/{name}", "import-cgcnn", F.run_cli(
            ["import-cgcnn", ck / name, "--atom-init", ck / "atom_init.json", "--out",
             root / "imported.ckpt"]))
    proc = subprocess.run(
        [sys.executable, "-m", "matxfer", "predict", str(ck / "hostile.ckpt"), str(s), "--out",
         str(root / "h.json")], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    add("checkpoints/hostile.ckpt", "python -m matxfer predict (own process)",
        F.CliRun([], proc.returncode, proc.stdout, proc.stderr))
    summary = {
        "wall_s": round(time.perf_counter() - t0, 1),
        "hostile_marker_created": paths["marker"].exists(),
        "rows": len(rows),
        "rows_with_traceback": sum(r["traceback"] for r in rows),
    }
    return rows, summary


def markdown(rows: list[dict]) -> str:
    out = ["| input | command | exit | message (first line) |", "|---|---|---|---|"]
    for r in rows:
        msg = r["message"].replace("|", "\\|")
        if len(msg) > 240:
            msg = msg[:237] + "..."
        out.append(f"| {r['input']} | {r['command']} | {r['exit_code']} | {msg} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_table.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory(prefix="matxfer-fuzz-") as tmp:
        rows, summary = build_table(Path(tmp))
    blob = {
        "benchmark": "fuzz_table",
        "command": "python benchmarks/fuzz_table.py",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "summary": summary,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(blob, indent=1) + "\n")
    print(markdown(rows))
    print(f"\n{json.dumps(summary)}\nwrote {args.out}")


if __name__ == "__main__":
    main()
