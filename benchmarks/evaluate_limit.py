"""Wall time of ``matxfer train ... data.limit=N`` then ``matxfer evaluate CKPT --split test``.

Each run uses a fresh (cold) cache directory, so every parse, validation and graph build
happens inside the timed commands. The same commands are timed with one or more source
trees (``--src``; e.g. a checkout of the commit before the change and the current tree),
back to back in one invocation, and the load average is recorded before and after each
command (the machine is shared: wall times are noisy, the ratio here is large).

Usage::

    python benchmarks/evaluate_limit.py --src base=/path/to/old/src --src new=src \
        [--limit 20] [--out benchmarks/results/evaluate_limit.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict) -> dict:
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return {
        "cmd": " ".join(cmd[2:]),
        "rc": proc.returncode,
        "wall_s": round(wall, 2),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "stdout_tail": proc.stdout[-600:],
        "stderr_tail": proc.stderr[-600:] if proc.returncode else "",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", action="append", required=True, help="label=path/to/src")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--dataset", default="mp-elastic-2024")
    ap.add_argument("--config", default="configs/examples/train_elastic.yaml")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/evaluate_limit.json"))
    args = ap.parse_args(argv)
    results = {}
    for item in args.src:
        label, src = item.split("=", 1)
        src = str(Path(src).resolve())
        work = Path(tempfile.mkdtemp(prefix=f"evalbench-{label}-"))
        env = dict(os.environ)
        env.update(
            PYTHONPATH=src,
            MATXFER_CACHE_DIR=str(work / "cache"),
            MATXFER_PROGRESS="0",
            OMP_NUM_THREADS="2",
        )
        run_dir = work / "run"
        train = _run(
            [sys.executable, "-m", "matxfer", "train", str(ROOT / args.config),
             f"data.limit={args.limit}", "optim.epochs=1", "optim.batch_size=8",
             "--out", str(run_dir)],
            env,
        )
        ckpt = run_dir / "best.ckpt"
        if not ckpt.is_file():
            cands = sorted(run_dir.glob("*.ckpt"))
            ckpt = cands[0] if cands else ckpt
        evaluate = _run(
            [sys.executable, "-m", "matxfer", "evaluate", str(ckpt), "--data", args.dataset,
             "--split", "test", "--json"],
            env,
        )
        # a second evaluate: warm cache
        evaluate_warm = _run(
            [sys.executable, "-m", "matxfer", "evaluate", str(ckpt), "--data", args.dataset,
             "--split", "test", "--json"],
            env,
        )
        results[label] = {
            "src": src,
            "train": train,
            "evaluate_cold": evaluate,
            "evaluate_warm": evaluate_warm,
        }
        print(label, train["wall_s"], evaluate["wall_s"], evaluate_warm["wall_s"], flush=True)
    out = {
        "benchmark": "evaluate_limit",
        "dataset": args.dataset,
        "limit": args.limit,
        "cpus": os.cpu_count(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
