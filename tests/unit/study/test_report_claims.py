"""The report's published-claims table and its record of how a study was run."""

from __future__ import annotations

import json

import pandas as pd

from matxfer.study.report import claims_section, run_section


def _rows(recipe: str, values: list[float]) -> list[dict]:
    return [{"recipe": recipe, "size": 100, "seed": i, "y.mae": v} for i, v in enumerate(values)]


def test_claims_follow_the_published_direction_against_scratch():
    df = pd.DataFrame(
        _rows("scratch", [1.00, 1.02, 0.98])
        + _rows("a", [0.80, 0.81, 0.79])  # clearly better
        + _rows("b", [1.20, 1.21, 1.19])  # clearly worse
        + _rows("c", [0.99, 1.03, 0.97])  # within noise
    )
    published = {"scratch": 0.8, "a": 0.7, "b": 0.7, "c": 0.9}
    text = "\n".join(claims_section(df, "y.mae", published))
    assert "| a | 0.875 (better) | 0.800 | better | reproduced |" in text
    assert "| b | 0.875 (better) | 1.200 | worse | contradicted |" in text
    assert "| c | 1.125 (worse) | 0.997 | within noise | not resolved |" in text
    assert "Claims: 1 reproduced, 1 contradicted, 1 not resolved." in text


def test_run_section_reports_sittings_and_summed_run_times(tmp_path):
    sittings = [
        {"command": "matxfer study s.yaml --out d", "started": "2026-01-01T00:00:00Z", "elapsed_s": 600.0,
         "cells_run": 4, "jobs": 2, "threads": 1, "machine": {"cpus": 2, "cpu": "X", "torch": "2", "matxfer": "1", "platform": "P"}},
        {"command": "matxfer study s.yaml --out d", "started": "2026-01-02T00:00:00Z", "elapsed_s": 300.0,
         "cells_run": 2, "jobs": 2, "threads": 1, "machine": {"cpus": 2, "cpu": "X", "torch": "2", "matxfer": "1", "platform": "P"}},
    ]
    (tmp_path / "sittings.json").write_text(json.dumps(sittings))
    df = pd.DataFrame([
        {"kind": "pretrain", "status": "ok", "wall_time_s": 120.0},
        {"kind": "cell", "status": "ok", "wall_time_s": 60.0},
        {"kind": "cell", "status": "failed", "wall_time_s": 999.0},
    ])
    text = "\n".join(run_section(tmp_path, df))
    assert "Hardware: 2 CPU cores (X), no GPU; torch 2; matxfer 1; P." in text
    assert text.count("`matxfer study s.yaml --out d`") == 2
    assert "Wall time: 15.0 min over 2 sitting(s)." in text
    assert "add up to 3.0 min (pretraining 2.0 min, fine-tuning cells 1.0 min)" in text


def test_run_section_without_sittings_says_so(tmp_path):
    (tmp_path / "sittings.json").write_text("not json")
    text = "\n".join(run_section(tmp_path, pd.DataFrame([{"status": "ok", "wall_time_s": 60.0}])))
    assert "No sittings were recorded" in text and "add up to 1.0 min" in text
