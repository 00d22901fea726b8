"""The ``matxfer`` command line: thin subcommands over library functions."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("matxfer")

#: subcommand name -> (help, add_arguments, run); other modules register here
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def register_command(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int | None],
) -> None:
    """Add a top-level subcommand (used by the training, study and import modules)."""
    COMMANDS[name] = (help, add_arguments, run)


def _print_json(obj, out: str | None = None) -> None:
    from matxfer.jsonout import dumps

    text = dumps(obj, indent=1)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    else:
        print(text)


# ----------------------------------------------------------------------------------------
# matxfer data ...
# ----------------------------------------------------------------------------------------


def _count_local(spec, root) -> int:
    from matxfer.data.registry import count_entries

    root = spec.resolve_root(root, generate=False)
    if not spec.available(root):
        return 0
    return count_entries(spec, root)


def cmd_data_list(args) -> int:
    from matxfer.data.registry import REGISTRY
    from matxfer.paths import data_dir

    root = Path(args.data_dir) if args.data_dir else data_dir()
    rows = []
    for spec in REGISTRY.values():
        rows.append(
            {
                "name": spec.name,
                "targets": list(spec.targets),
                "n_local": _count_local(spec, root),
                "source": spec.source,
                "citation": spec.citation,
                "units": dict(spec.targets),
                "files": list(spec.files),
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"datasets in {root}")
    for col in ("name", "targets", "n_local", "source / citation"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["name"],
            ", ".join(f"{t} [{u}]" for t, u in r["units"].items()),
            str(r["n_local"]),
            f"{r['source']}\n{r['citation']}",
        )
    Console().print(table)
    return 0


def _label_stats(records, target: str) -> dict:
    import numpy as np

    vals = [r.labels[target] for r in records if target in r.labels]
    if not vals:
        return {"n": 0}
    first = np.asarray(vals[0])
    if first.ndim == 0:
        a = np.asarray(vals, dtype=float)
        return {
            "n": len(a),
            "mean": float(a.mean()),
            "std": float(a.std()),
            "min": float(a.min()),
            "median": float(np.median(a)),
            "max": float(a.max()),
        }
    norms = np.array([np.linalg.norm(np.asarray(v)) for v in vals])
    out = {
        "n": len(vals),
        "shape": list(first.shape) if first.shape[0] != -1 else ["n_atoms", 3, 3],
        "frobenius_norm_mean": float(norms.mean()),
        "frobenius_norm_median": float(np.median(norms)),
        "frobenius_norm_max": float(norms.max()),
        "n_zero": int((norms == 0).sum()),
    }
    if first.shape == (3, 3):
        means = np.array([np.trace(np.asarray(v)) / 3 for v in vals])
        out["mean_eigenvalue_median"] = float(np.median(means))
    return out


def cmd_data_show(args) -> int:
    import numpy as np

    from matxfer.data.registry import get_spec, load_dataset
    from matxfer.data.validate import validate_dataset

    spec = get_spec(args.name)
    ds = load_dataset(args.name, root=args.data_dir, limit=args.limit, progress=True)
    report = validate_dataset(ds, progress=True)
    systems: dict[str, int] = {}
    for r in report.results:
        systems[r.crystal_system] = systems.get(r.crystal_system, 0) + 1
    nsites = np.array([len(r.structure) for r in ds.records]) if ds.records else np.zeros(1)
    info = {
        "name": spec.name,
        "description": spec.description,
        "n_entries": len(ds.records) + len(ds.failures),
        "n_loaded": len(ds.records),
        "n_unloadable": len(ds.failures),
        "frame": spec.frame,
        "labels": {t: {"units": u, **_label_stats(ds.records, t)} for t, u in spec.targets.items()},
        "crystal_systems": dict(sorted(systems.items())),
        "sites_per_structure": {
            "min": int(nsites.min()),
            "median": float(np.median(nsites)),
            "max": int(nsites.max()),
        },
        "n_elements": len({el.symbol for r in ds.records for el in r.structure.composition}),
        "validation": {"passed": len(report.passed_ids), "failed": len(report.failed)},
        "citation": spec.citation,
        "source": spec.source,
    }
    if args.json:
        _print_json(info)
        return 0
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(info, expand_all=False))
    return 0


def cmd_data_validate(args) -> int:
    from matxfer.data.registry import load_dataset
    from matxfer.data.validate import ValidationSettings, validate_dataset, write_filtered

    settings = ValidationSettings(symprec=args.symprec, rtol=args.rtol)
    ds = load_dataset(args.name, root=args.data_dir, limit=args.limit, progress=not args.json)
    report = validate_dataset(ds, settings, use_cache=not args.no_cache, progress=not args.json)
    blob = report.to_json()
    if args.write_filtered:
        write_filtered(report, args.write_filtered)
    if args.json:
        _print_json(blob, args.out)
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(
        f"[bold]{blob['dataset']}[/]: {blob['passed']} of {blob['n']} passed "
        f"({100 * blob['pass_rate']:.1f} %), {blob['failed']} failed"
    )
    t = Table(title="by crystal system")
    for c in ("crystal system", "passed", "failed"):
        t.add_column(c)
    for cs, d in blob["by_crystal_system"].items():
        t.add_row(cs, str(d["passed"]), str(d["failed"]))
    con.print(t)
    if blob["failure_reasons"]:
        con.print("failure reasons: " + ", ".join(f"{k} ({v})" for k, v in blob["failure_reasons"].items()))
    for f in blob["failures"][: args.show]:
        con.print(f"  {f['id']}: {f['reason']}")
    if args.out:
        _print_json(blob, args.out)
    return 0


def cmd_data_download(args) -> int:
    from matxfer.data.download import download_dataset

    paths = download_dataset(args.name, root=args.data_dir, force=args.force)
    for p in paths:
        print(p)
    return 0


def _store_settings(args):
    """(graph settings, featurizer) of ``matxfer data build-store``: a run config's (exactly as
    ``matxfer train`` builds its graphs), or the ones given by flags."""
    from matxfer.data.graphs import GraphSettings, resolve_featurizer

    if args.config:
        from matxfer.checkpoint import load_checkpoint
        from matxfer.config import load_config
        from matxfer.train.loop import build_tasks
        from matxfer.train.setup import build_run_model

        cfg = load_config(args.config)
        parent = load_checkpoint(cfg.transfer.init_from) if cfg.transfer.init_from else None
        _, settings, featurizer, _, _ = build_run_model(cfg, build_tasks(cfg), parent)
        return settings, featurizer
    settings = GraphSettings(
        cutoff=args.cutoff, max_neighbors=args.max_neighbors, line_graph=args.line_graph,
        atom_features=args.atom_features,
    )
    return settings, resolve_featurizer(settings)


def cmd_data_build_store(args) -> int:
    from matxfer.data.graph_store import GraphStore, build_store
    from matxfer.data.registry import load_dataset

    settings, featurizer = _store_settings(args)
    ds = load_dataset(args.name, root=args.data_dir, limit=args.limit, progress=not args.json)
    report = build_store(ds.records, args.out, settings, featurizer, chunk_size=args.chunk_size,
                         progress=not args.json)
    store = GraphStore(args.out)
    blob = {
        "dataset": args.name, **report.to_dict(), "graphs_in_store": len(store),
        "failures_in_store": len(store.failures()), "disk_bytes": store.disk_bytes(),
        "settings": settings.to_dict(), "unloadable": len(ds.failures),
    }
    if args.json:
        _print_json(blob)
        return 0
    print(
        f"{args.out}: {blob['graphs_in_store']} graphs ({blob['disk_bytes'] / 1e6:.1f} MB); this "
        f"build wrote {report.written}, skipped {report.skipped} already there, replaced "
        f"{report.replaced}, {report.failed} failed, in {report.seconds:.1f} s"
    )
    for mid, why in report.failures[: args.show]:
        print(f"  {mid}: {why}")
    return 0


def _add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="list, inspect, validate, download and store datasets")
    dsub = p.add_subparsers(dest="data_cmd", required=True)

    def common(q):
        q.add_argument("--data-dir", default=None, help="data directory (default: $MATXFER_DATA_DIR or ../shared/data)")

    q = dsub.add_parser("list", help="registered datasets and how many entries are here")
    q.add_argument("--json", action="store_true")
    common(q)
    q.set_defaults(func=cmd_data_list)

    q = dsub.add_parser("show", help="counts, label statistics, crystal systems, sizes")
    q.add_argument("name")
    q.add_argument("--json", action="store_true")
    q.add_argument("--limit", type=int, default=None)
    common(q)
    q.set_defaults(func=cmd_data_show)

    q = dsub.add_parser("validate", help="point-group and physical checks of every entry")
    q.add_argument("name")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.add_argument("--out", default=None, help="also write the JSON report here")
    q.add_argument("--write-filtered", default=None, metavar="FILE", help="write the passing ids as JSON")
    q.add_argument("--rtol", type=float, default=0.05, help="relative point-group tolerance")
    q.add_argument("--symprec", type=float, default=0.01, help="symmetry precision (Angstrom)")
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--no-cache", action="store_true")
    q.add_argument("--show", type=int, default=20, help="failures to print")
    common(q)
    q.set_defaults(func=cmd_data_validate)

    q = dsub.add_parser(
        "build-store",
        help="write a dataset's graphs into an on-disk graph store (resumes a stopped build)",
    )
    q.add_argument("name")
    q.add_argument("--out", required=True, help="store folder (data.graph_store of a run config)")
    q.add_argument("--config", default=None,
                   help="take the graph settings from this run config (as matxfer train does)")
    q.add_argument("--cutoff", type=float, default=5.0, help="neighbour radius (Angstrom)")
    q.add_argument("--max-neighbors", type=int, default=None)
    q.add_argument("--line-graph", action="store_true", help="also build the line graph (ALIGNN)")
    q.add_argument("--atom-features", default="none", choices=("none", "cgcnn"))
    q.add_argument("--chunk-size", type=int, default=1000, help="graphs per write transaction")
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--json", action="store_true", help="print the build report as JSON")
    q.add_argument("--show", type=int, default=20, help="failures to print")
    common(q)
    q.set_defaults(func=cmd_data_build_store)

    q = dsub.add_parser("download", help="fetch a dataset from its original source")
    q.add_argument("name")
    q.add_argument("--force", action="store_true")
    common(q)
    q.set_defaults(func=cmd_data_download)


# ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from matxfer import __version__

    parser = argparse.ArgumentParser(
        prog="matxfer",
        description="Transfer learning for crystal-property prediction.",
    )
    parser.add_argument("--version", action="version", version=f"matxfer {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_data_parser(sub)
    for name, (help_, add_args, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        add_args(p)
        p.set_defaults(func=fn, _parser=p)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may come anywhere, after options too.

    argparse fills a command's ``overrides`` positional only from the first run of
    positionals, so ``matxfer train cfg.yaml --out runs/x optim.lr=1e-3`` would be refused.
    Words left over that look like ``key=value`` are appended to ``overrides`` in order; any
    other leftover (an unknown ``--flag`` or a stray word) is an error naming it.
    """
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    sub = getattr(args, "_parser", None) or parser
    takes_overrides = isinstance(getattr(args, "overrides", None), list)
    unknown = []
    for word in extra:
        if takes_overrides and not word.startswith("-") and "=" in word and not word.startswith("="):
            args.overrides.append(word)
        else:
            unknown.append(word)
    if unknown:
        flags = [w for w in unknown if w.startswith("-")]
        what = (
            f"unknown option{'s' if len(flags) > 1 else ''} {' '.join(flags)}"
            if flags
            else f"unexpected argument{'s' if len(unknown) > 1 else ''} {' '.join(unknown)}"
        )
        hint = (
            " (config overrides are written key=value without dashes, e.g. optim.lr=1e-3)"
            if takes_overrides
            else ""
        )
        sub.error(f"{what}{hint}; see {sub.prog} --help")
    return args


def _load_plugins() -> None:
    """Import modules that register further subcommands (training, studies, import...)."""
    import importlib

    for mod in (
        "matxfer.train.cli", "matxfer.study.cli", "matxfer.pretrained.cli", "matxfer.shipped.cli",
        "matxfer.zeroshot_cli",
    ):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            # a plugin module that does not exist is skipped; a missing dependency is not
            if exc.name not in (mod, mod.rsplit(".", 1)[0]):
                raise


def _one_line(exc: BaseException) -> str:
    """The message of a user error; an OSError without a path-naming message gets one."""
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc.args[-1]):
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    _load_plugins()
    parser = build_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        # user errors: RecordError, CheckpointError, StudyLockedError (ValueError),
        # DataMissingError (FileNotFoundError), unreadable or unwritable paths
        print(f"matxfer: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
