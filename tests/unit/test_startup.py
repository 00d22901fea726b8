"""Start-up: the command line imports torch, pymatgen, lightning and e3nn only in the
commands that need them, so ``matxfer --help`` and ``matxfer data list`` start at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "pymatgen", "lightning", "e3nn", "torch_geometric", "ase", "pandas")


def _loaded_after(code: str) -> list[str]:
    probe = code + f"\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "MATXFER_PROGRESS": "0"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_cli_does_not_import_torch():
    assert _loaded_after("import matxfer.cli") == []
    help_run = (
        "import contextlib, io, matxfer.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        matxfer.cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
    )
    assert _loaded_after(help_run) == []


def test_help_and_parser_stay_light():
    code = (
        "import matxfer.cli as c\n"
        "c._load_plugins()\n"
        "p = c.build_parser()\n"
        "p.format_help()\n"
        "import matxfer.data.registry, matxfer.pretrained\n"
    )
    assert _loaded_after(code) == []


def test_lazy_names_and_backbone_registration():
    from matxfer.models.registry import BACKBONES
    from matxfer.pretrained import CompatPredictor, import_cgcnn  # noqa: F401

    assert "chgnet" in BACKBONES and "cgcnn" in BACKBONES


def test_entry_counts_are_cached(tmp_path, monkeypatch):
    from matxfer.data.registry import DatasetSpec, count_entries

    monkeypatch.setenv("MATXFER_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "d.txt").write_text("a\nb\nc\n")
    calls = []

    def parser(paths):
        calls.append(paths)
        for line in Path(paths[0]).read_text().split():
            yield line, None

    spec = DatasetSpec("tiny-count", ("d.txt",), {"x": "eV"}, parser, "none", "", "", "")
    assert count_entries(spec, tmp_path) == 3
    assert count_entries(spec, tmp_path) == 3
    assert len(calls) == 1
    (tmp_path / "d.txt").write_text("a\nb\nc\nd\n")  # another size: counted again
    assert count_entries(spec, tmp_path) == 4 and len(calls) == 2
