"""``matxfer zeroshot``: elastic tensors of structure files from a universal potential."""

from __future__ import annotations

import argparse
import sys

from matxfer.cli import register_command


def _add_zeroshot(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="structure files or folders (CIF, POSCAR, JSON, XYZ)")
    p.add_argument("--out", required=True, help="output file (.csv or .json)")
    p.add_argument("--potential", default="sevennet-0",
                   help="sevennet-0 (default; the sevennet extra) or chgnet-0.3.0 (chgnet extra)")
    p.add_argument("--clamped-ion", action="store_true",
                   help="do not relax the ions of the strained cells (several times cheaper; "
                   "stiffer than the relaxed-ion tensors DFT datasets report)")
    p.add_argument("--fmax", type=float, default=0.05, help="relaxation force tolerance (eV/A)")
    p.add_argument("--retry-failed", action="store_true",
                   help="recompute structures that failed in an earlier run")


def cmd_zeroshot(args) -> int:
    from matxfer.predict import write_predictions
    from matxfer.zeroshot import ZeroShotSettings, user_store, zeroshot_files

    if not str(args.out).endswith((".json", ".csv")):
        raise ValueError(f"--out must end in .json or .csv, got {args.out}")
    settings = ZeroShotSettings(potential=args.potential, relax_ions=not args.clamped_ion,
                                fmax=args.fmax)
    store = user_store(settings)
    results, errors = zeroshot_files(args.inputs, settings, store,
                                     retry_failed=args.retry_failed)
    path = write_predictions(results, errors, args.out)
    print(f"{len(results)} zero-shot elastic tensor(s) ({settings.potential}, {settings.mode}) "
          f"-> {path}; results kept in {store.path}")
    for e in errors:
        print(f"skipped {e['input']}: {e['error']}", file=sys.stderr)
    return 0 if results else 1


register_command(
    "zeroshot", "elastic tensors of structure files from a universal potential (finite strains)",
    _add_zeroshot, cmd_zeroshot,
)
