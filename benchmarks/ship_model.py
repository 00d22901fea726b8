"""Train an ensemble and ship it with matxfer (checkpoint + model card + index entry).

Usage:
    python benchmarks/ship_model.py NAME --config CONFIG [--members 5] [key=value ...]
        [--shipped DIR] [--work-dir DIR] [--description TEXT]

Trains K members (seeds 0..K-1) of the run config with matxfer.train.loop.fit (the split is
the config's data.split), combines them into one ensemble checkpoint (a frozen CHGNet or
SevenNet backbone is stored by reference, not copied), evaluates it on the test split
(overall and per crystal system) and writes NAME.ckpt, NAME.md and the index.json entry into
src/matxfer/shipped/ (or --shipped / $MATXFER_SHIPPED_DIR).

Example (dielectric tensor over frozen SevenNet-0, all Petousis data, 80/10/10):
    python benchmarks/ship_model.py dielectric --config configs/ship/dielectric_sevennet.yaml \
        --members 5 --description "DFPT dielectric tensor, frozen SevenNet-0 + tensor head"
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--config", default=None)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--shipped", default=None, help="folder to write (default: the package's)")
    p.add_argument("--work-dir", default=None, help="member runs (default runs/ship-NAME)")
    p.add_argument("--description", default="")
    p.add_argument("--refresh-card", action="store_true",
                   help="only rewrite NAME's card and index entry from its stored metrics")
    p.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    words = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(words)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from matxfer.shipped.build import refresh_card, ship_model

    if args.refresh_card:
        print(refresh_card(args.name, args.shipped))
        return 0
    if not args.config:
        p.error("--config is required (unless --refresh-card)")

    entry = ship_model(args.name, args.config, args.members, args.overrides, args.shipped,
                       args.work_dir, args.description,
                       command="python benchmarks/ship_model.py " + shlex.join(words))
    print(json.dumps({args.name: entry}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
