"""``matxfer study CONFIG.yaml --out DIR`` and ``matxfer quickstart``."""

from __future__ import annotations

import argparse
from pathlib import Path

from matxfer.cli import register_command


def _add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="study YAML (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the study config")
    p.add_argument("--out", required=True, help="study directory (rerun to resume)")
    p.add_argument("--max-cells", type=int, default=None, help="run at most this many cells")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from results.csv")
    p.add_argument("--no-retry", action="store_true", help="on a rerun, keep failed cells as failed")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / jobs)")


def cmd_study(args) -> int:
    from matxfer.study.config import load_study
    from matxfer.study.report import write_report
    from matxfer.study.runner import StudyRunner

    study = load_study(args.config, args.overrides)
    if args.report_only:
        from matxfer.study.runner import StudyLock

        with StudyLock(args.out):
            path = write_report(args.out, study)
        print(f"report: {path}")
        return 0
    runner = StudyRunner(
        study, args.out, max_cells=args.max_cells, retry_failed=not args.no_retry,
        jobs=args.jobs, threads=args.threads,
    )
    runner.run()
    return _finish(runner)


def _finish(runner) -> int:
    """Print the report path; 1 and a summary line on stderr when any cell failed."""
    import sys

    print(f"report: {runner.out / 'report.md'}")
    if runner.failed:
        print(f"matxfer: error: {runner.failure_summary()}", file=sys.stderr)
        return 1
    return 0


def _add_quickstart(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--config", default=None, help="default: configs/quickstart.yaml")


def cmd_quickstart(args) -> int:
    from matxfer.study.config import load_study
    from matxfer.study.runner import StudyRunner

    cfg = args.config or _bundled_config("quickstart.yaml")
    runner = StudyRunner(load_study(cfg), args.out)
    runner.run()
    return _finish(runner)


def _bundled_config(name: str) -> Path:
    here = Path(__file__).resolve()
    for cand in (Path.cwd() / "configs" / name, here.parents[3] / "configs" / name):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"configs/{name} not found; pass --config")


register_command("study", "run a transfer-learning study and write its report", _add_study, cmd_study)
register_command("quickstart", "run the quickstart study (configs/quickstart.yaml)", _add_quickstart, cmd_quickstart)
