"""Run a study: shared pretraining, then recipes x training sizes x seeds against scratch.

Layout of the study directory::

    DIR/pretrain/<name>/...            one run directory per pretraining run (shared)
    DIR/splits/<target>.json           the fixed val/test split and the training pool
    DIR/cells/<target>/<recipe>/n<size>/seed<k>/   one run directory per cell
        result.json                    written last: its presence marks the cell done
    DIR/results.csv                    one row per run
    DIR/report.md, DIR/*.png           written by :mod:`matxfer.study.report`
    DIR/study.log
    DIR/sittings.json                  one entry per run of the study: command, machine, times

A rerun skips finished cells (and finished pretraining runs). A cell that fails is recorded
with its error and the study goes on; a rerun tries failed cells again (``retry_failed``).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from matxfer.config import apply_overrides, config_from_dict
from matxfer.data.splits import Split, split_ids, subsample
from matxfer.metrics import flatten_metrics
from matxfer.study.config import RecipeSpec, StudyConfig, TargetSpec
from matxfer.targets import target_spec

log = logging.getLogger(__name__)

class LeakageError(ValueError):
    """A target's test materials appear in the labels a pretraining run learned."""


class StudyLockedError(ValueError):
    """Another live process holds the study directory's lock file."""


#: lock file inside a study directory: created with O_EXCL, holds the owner's pid
LOCK_NAME = ".matxfer-study.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


class StudyLock:
    """Exclusive use of a study directory by one process (``with StudyLock(out): ...``).

    The lock is ``out/.matxfer-study.lock``, created with ``O_CREAT | O_EXCL`` and holding
    the owner's pid. A lock whose pid is no longer running (a killed study) is taken over
    with a warning; a live owner makes :class:`StudyLockedError`.
    """

    def __init__(self, out: str | Path):
        self.path = Path(out) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    text = self.path.read_text().strip()
                except FileNotFoundError:  # released meanwhile: try again
                    continue
                pid = int(text) if text.isdigit() else None
                if pid is not None and pid != os.getpid() and _pid_alive(pid):
                    raise StudyLockedError(
                        f"study directory {self.path.parent} is in use by another matxfer study "
                        f"(pid {pid}, lock file {self.path}); wait for it to finish or use "
                        "another --out"
                    ) from None
                log.warning(
                    "taking over the stale lock %s of %s",
                    self.path,
                    f"pid {pid} (no such process)" if pid is not None else f"unreadable content {text[:20]!r}",
                )
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            self.held = True
            return
        raise StudyLockedError(f"could not take the lock {self.path}; another study keeps taking it")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def family(label: str) -> str:
    """The physical property a label describes (leakage is checked per family)."""
    return target_spec(label).family


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class StudyRunner:
    def __init__(
        self,
        study: StudyConfig,
        out: str | Path,
        max_cells: int | None = None,
        retry_failed: bool = True,
        jobs: int = 1,
        threads: int | None = None,
        command: str | None = None,
    ):
        """
        Args:
            study: the study configuration.
            out: the study directory.
            max_cells: run at most this many cells (then stop; a rerun continues).
            retry_failed: rerun cells recorded as failed.
            jobs: runs (pretraining, then cells) trained at the same time, each in its own
                process; 1 runs everything in this process.
            threads: torch threads per worker process (default: CPU count / jobs).
            command: the command line recorded in ``sittings.json`` (default: this
                process's ``sys.argv``).
        """
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.study = study
        self.out = Path(out)
        self.max_cells = max_cells
        self.retry_failed = retry_failed
        self.jobs = int(jobs)
        self.threads = threads
        self.command = command
        self.pretrained: dict[str, dict[str, Any]] = {}
        #: (cell directory, error) of each cell of the last :meth:`run` that failed
        self.failed: list[tuple[str, str]] = []
        #: number of cells the last :meth:`run` went through
        self.n_cells = 0
        #: this run's entry of ``sittings.json`` (see :meth:`_start_sitting`), and all entries
        self._sitting: dict[str, Any] | None = None
        self._sittings: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ pretraining
    def _used(self, spec) -> bool:
        return any(r.pretrained == spec.name for r in self.study.recipes) or (
            self.study.scratch_pretrained == spec.name
        )

    def pretrain_one(self, spec) -> dict[str, Any]:
        """Train (or find, or load) one pretraining run; returns what the cells need of it."""
        from matxfer.checkpoint import load_checkpoint
        from matxfer.train.loop import fit

        if spec.importer:
            path = self.imported_checkpoint(spec)
        else:
            path = spec.checkpoint
        if path:
            ck = load_checkpoint(path)
            prov = ck.get("provenance", {})
            split = ck.get("split") or {}
            return {
                "checkpoint": str(path),
                "targets": list(ck["tasks"]),
                "ids": set(split.get("train", [])) | set(split.get("val", [])),
                "wall_time_s": 0.0,
                "external": prov.get("source", "checkpoint"),
            }
        run_dir = self.out / "pretrain" / spec.name
        ckpt = run_dir / "model.ckpt"
        cfg = config_from_dict(self.pretrain_raw(spec))
        if ckpt.is_file():
            log.info("pretraining %s already done (%s)", spec.name, ckpt)
            wall = json.loads((run_dir / "metrics.json").read_text()).get("wall_time_s", 0.0)
        else:
            log.info("pretraining %s", spec.name)
            res = fit(cfg, command="study-pretrain")
            wall = res.wall_time_s
        split = Split.load(run_dir / "split.json")
        return {
            "checkpoint": str(ckpt),
            "targets": list(cfg.data.targets),
            "ids": set(split.train) | set(split.val),
            "wall_time_s": wall,
        }

    def imported_checkpoint(self, spec) -> Path:
        """Convert third-party weights (``import: chgnet:<version>``, ``sevennet:<model>`` or
        ``cgcnn:<model>``) once."""
        from matxfer.paths import pretrained_dir

        out = self.out / "pretrain" / spec.name / "model.ckpt"
        if out.is_file():
            return out
        kind, what = spec.importer.split(":", 1)
        log.info("importing %s weights %s as %s", kind, what, out)
        if kind == "chgnet":
            from matxfer.models.backbones.chgnet import export_chgnet_checkpoint

            return export_chgnet_checkpoint(out, what)
        if kind == "sevennet":
            from matxfer.models.backbones.sevennet import export_sevennet_checkpoint

            model, _, parity = what.partition(":")
            model = {"0": "7net-0", "sevennet-0": "7net-0"}.get(model, model)
            return export_sevennet_checkpoint(out, model, parity=parity or "natural")
        from matxfer.pretrained.cgcnn_import import import_cgcnn

        src = Path(what).expanduser()
        if not src.is_file():
            src = pretrained_dir() / "cgcnn" / (what if what.endswith(".pth.tar") else f"{what}.pth.tar")
        if not src.is_file():
            raise FileNotFoundError(
                f"pretrain.{spec.name}: CGCNN checkpoint {what!r} not found (looked for {src}); set "
                "MATXFER_PRETRAINED_DIR or give the path of the .pth.tar"
            )
        return import_cgcnn(src, src.parent / "atom_init.json", out)

    def run_pretraining(self, pool=None) -> None:
        """Every pretraining run a recipe uses (in parallel when a process pool is given)."""
        specs = [s for s in self.study.pretrain if self._used(s)]
        if pool is None:
            for spec in specs:
                self.pretrained[spec.name] = self.pretrain_one(spec)
            return
        futures = {pool.submit(_pretrain_in_worker, self.study, self.out, spec): spec for spec in specs}
        for fut in as_completed(futures):
            spec = futures[fut]
            self.pretrained[spec.name] = fut.result()  # a failed pretraining stops the study

    # ------------------------------------------------------------------ splits
    def target_split(self, target: TargetSpec) -> dict[str, Any]:
        """The fixed val/test split and the training pool of a target (saved, reused)."""
        from matxfer.train.data import gather_records

        path = self.out / "splits" / f"{target.name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        dcfg = config_from_dict({"data": target.data}).data
        records, dropped = gather_records(dcfg, list(dcfg.targets))
        ids = sorted(records)
        n = len(ids)
        n_test = target.test_size if target.test_size is not None else round(n * target.test_fraction)
        n_val = target.val_size if target.val_size is not None else round(n * target.val_fraction)
        sp = split_ids(ids, seed=target.split_seed, sizes=(None, n_val, n_test))
        blob = {
            "target": target.name,
            "pool": sp.train,
            "val": sp.val,
            "test": sp.test,
            "dropped": dropped,
            "n_available": n,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(blob, indent=1))
        return blob

    def check_leakage(self, target: TargetSpec, split: dict[str, Any]) -> None:
        labels = config_from_dict({"data": target.data}).data.targets
        fams = {family(t) for t in labels}
        test = set(split["test"])
        for r in self.study.recipes:
            names = [r.pretrained] if r.pretrained else []
            if r.kind == "scratch" and self.study.scratch_pretrained:
                names = []  # scratch uses only the architecture, never the weights
            for name in names:
                pre = self.pretrained[name]
                same = [t for t in pre["targets"] if t in labels]
                if same:
                    raise LeakageError(
                        f"pretraining run {name!r} learned {same}, the target of {target.name!r}: "
                        "exclude the fine-tuning property from pretraining"
                    )
                shared = [t for t in pre["targets"] if family(t) in fams]
                if shared:
                    overlap = test & pre["ids"]
                    if overlap:
                        raise LeakageError(
                            f"{len(overlap)} test material(s) of target {target.name!r} are in the "
                            f"{shared} labels of pretraining run {name!r} (e.g. "
                            f"{sorted(overlap)[:5]}); add the target dataset to the pretraining "
                            "run's data.exclude_ids_from"
                        )

    # ------------------------------------------------------------------ cells
    def cells(self) -> list[tuple[TargetSpec, dict, Any, RecipeSpec, int]]:
        out = []
        for target in self.study.targets:
            split = self.target_split(target)
            self.check_leakage(target, split)
            pool = split["pool"]
            for size in target.sizes:
                n = len(pool) if size == "all" else int(size)
                if n > len(pool):
                    log.warning(
                        "%s: size %d exceeds the %d available training entries; skipped",
                        target.name, n, len(pool),
                    )
                    continue
                for recipe in self.study.recipes:
                    for seed in self.study.seeds:
                        out.append((target, split, n, recipe, seed))
        return out

    def cell_dir(self, target: TargetSpec, recipe: RecipeSpec, size: int, seed: int) -> Path:
        safe = recipe.name.replace(":", "-")
        return self.out / "cells" / target.name / safe / f"n{size}" / f"seed{seed}"

    def cell_raw(self, target: TargetSpec, recipe: RecipeSpec, size: int, seed: int, run_dir: Path) -> dict:
        """The run config (as a dict) of one cell; its split is ``run_dir/cell_split.json``."""
        raw = deep_merge(self.study.base, {"data": target.data})
        if target.tasks:
            raw = deep_merge(raw, {"tasks": target.tasks})
        raw["data"]["split"] = {"file": str(run_dir / "cell_split.json")}
        raw["data"].pop("train_size", None)
        raw["name"] = f"{target.name}-{recipe.name}-n{size}-s{seed}"
        raw["out"] = str(run_dir)
        raw["seed"] = seed
        pre_name = recipe.pretrained
        if recipe.kind == "scratch":
            pre_name = self.study.scratch_pretrained
        if pre_name is not None:
            raw["transfer"] = {
                "init_from": self.pretrained[pre_name]["checkpoint"],
                "recipe": recipe.kind,
                "keep_heads": list(recipe.keep_heads),
            }
            # the architecture and graph come from the checkpoint
            raw.pop("graph", None)
            if "model" in raw:
                raw["model"] = {"heads": raw["model"].get("heads", {})}
        if recipe.head is not None:
            labels = raw["data"].get("targets", [])
            per_label = recipe.head if "name" not in recipe.head else dict.fromkeys(labels, recipe.head)
            heads = {t: dict(per_label[t]) for t in labels if t in per_label}
            if heads:
                raw.setdefault("model", {})["heads"] = heads
        return apply_overrides(raw, recipe.overrides)

    def pretrain_raw(self, spec) -> dict:
        """The run config (as a dict) of a pretraining run given by a config."""
        raw = deep_merge(self.study.base, spec.config)
        raw["name"] = f"{self.study.name}-pretrain-{spec.name}"
        raw["out"] = str(self.out / "pretrain" / spec.name)
        return raw

    def _needs_run(self, prev: dict[str, Any] | None) -> bool:
        """Whether a cell with recorded row ``prev`` (None: none) is to be trained."""
        return prev is None or (prev.get("status") != "ok" and self.retry_failed)

    def pending(self, cell) -> bool:
        """Whether :meth:`run_cell` would train ``cell`` (not finished, or failed and retried)."""
        target, _, size, recipe, seed = cell
        done = self.cell_dir(target, recipe, size, seed) / "result.json"
        return self._needs_run(json.loads(done.read_text()) if done.is_file() else None)

    def run_cell(self, target, split, size, recipe: RecipeSpec, seed) -> dict[str, Any]:
        from matxfer.train.loop import fit

        run_dir = self.cell_dir(target, recipe, size, seed)
        done = run_dir / "result.json"
        prev = json.loads(done.read_text()) if done.is_file() else None
        if prev is not None and not self._needs_run(prev):
            return prev
        if prev is not None:
            log.info("retrying failed cell %s (%s)", run_dir, prev.get("error", ""))
        run_dir.mkdir(parents=True, exist_ok=True)
        train = subsample(split["pool"], size, seed)
        Split(train, split["val"], split["test"], seed).save(run_dir / "cell_split.json")
        raw = self.cell_raw(target, recipe, size, seed, run_dir)
        row: dict[str, Any] = {
            "target": target.name,
            "recipe": recipe.name,
            "kind": recipe.kind,
            "pretrained": recipe.pretrained or "",
            "size": size,
            "seed": seed,
        }
        t0 = time.time()
        try:
            cfg = config_from_dict(raw)
            res = fit(cfg, command="study-cell")
            row["status"] = "ok"
            row["wall_time_s"] = res.wall_time_s
            row["trainable_params"] = res.trainable_params
            row["best_epoch"] = res.best_epoch
            for task, m in (res.metrics.get("test") or {}).items():
                row.update(flatten_metrics(m, f"{task}."))
        except Exception as exc:  # one failing cell never stops the study
            row["status"] = "failed"
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["wall_time_s"] = time.time() - t0
            (run_dir / "error.txt").write_text(traceback.format_exc())
            log.error("cell %s failed: %s", run_dir, row["error"])
        done.write_text(json.dumps(row, indent=1, default=float))
        return row

    # ------------------------------------------------------------------ all
    @property
    def log_path(self) -> Path:
        return self.out / "study.log"

    def failure_summary(self) -> str:
        """``"N of M cells failed: <cell>: <error>; ...; see <log>"`` ('' when none failed)."""
        if not self.failed:
            return ""
        cells = self.out / "cells"

        def name(d: str) -> str:
            return str(Path(d).relative_to(cells)) if Path(d).is_relative_to(cells) else d

        shown = "; ".join(f"{name(d)}: {e}" for d, e in self.failed[:3])
        more = f"; and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
        return (
            f"{len(self.failed)} of {self.n_cells} cells failed: {shown}{more}; see {self.log_path}"
        )

    def run(self, progress: bool = True) -> Path:
        """Run (or resume) the study, holding the directory's :class:`StudyLock`.

        Failed cells do not stop the study; they are listed in :attr:`failed` (see
        :meth:`failure_summary`).

        Raises:
            StudyLockedError: another running study uses the same directory.
        """
        with StudyLock(self.out):
            return self._run(progress)

    def check_cell_configs(self) -> None:
        """Parse every target x recipe cell config (types, ranges, unknown keys, each recipe's
        overrides) before anything is pretrained or trained, so a typo fails in seconds.

        Raises:
            ValueError: naming the recipe, the target and the problem.
        """
        saved = self.pretrained
        self.pretrained = {p.name: {"checkpoint": f"<pretrained {p.name}>"} for p in self.study.pretrain}
        try:
            for target in self.study.targets:
                for recipe in self.study.recipes:
                    try:
                        raw = self.cell_raw(target, recipe, 1, self.study.seeds[0], self.out / "_check")
                        config_from_dict(raw)
                    except ValueError as exc:
                        raise ValueError(
                            f"recipe {recipe.name!r} on target {target.name!r}: {exc}"
                        ) from exc
        finally:
            self.pretrained = saved

    def _run(self, progress: bool) -> Path:
        from matxfer.progress import progress_bar

        self.out.mkdir(parents=True, exist_ok=True)
        self.failed = []
        handler = logging.FileHandler(self.out / "study.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("matxfer").addHandler(handler)
        self.check_cell_configs()
        self._sitting = self._start_sitting()
        pool = self._pool() if self.jobs > 1 else None
        try:
            self.run_pretraining(pool)
            todo = self.cells()
            if self.max_cells is not None:
                todo = todo[: self.max_cells]
            self.n_cells = len(todo)
            trains = [self.pending(c) for c in todo]
            bar = progress_bar("study cells", total=len(todo), disable=not progress or None)
            if pool is None:
                for i, cell in enumerate(todo):
                    target, split, size, recipe, seed = cell
                    bar.set_postfix_str(f"{target.name} {recipe.name} n={size} seed={seed}")
                    self._note(cell, self.run_cell(*cell))
                    bar.update(1)
                    self.write_results()
                    self._save_sitting(cells=int(trains[i]))
            else:
                futures = {
                    pool.submit(_cell_in_worker, self.study, self.out, self.pretrained, self.retry_failed, cell): i
                    for i, cell in enumerate(todo)
                }
                for fut in as_completed(futures):
                    i = futures[fut]
                    target, _, size, recipe, seed = todo[i]
                    try:
                        row = fut.result()
                    except Exception as exc:  # the worker process itself died
                        row = self._record_crash(todo[i], exc)
                    self._note(todo[i], row)
                    bar.set_postfix_str(f"{target.name} {recipe.name} n={size} seed={seed}")
                    bar.update(1)
                    self.write_results()
                    self._save_sitting(cells=int(trains[i]))
            bar.close()
            path = self.write_results()
            self._save_sitting()
            from matxfer.study.report import write_report

            write_report(self.out, self.study)
            return path
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self._save_sitting()
            logging.getLogger("matxfer").removeHandler(handler)
            handler.close()

    # ------------------------------------------------------------------ sittings
    def _start_sitting(self) -> dict[str, Any]:
        """Append this run's entry (command, machine, start time) to ``sittings.json``."""
        import shlex
        import sys

        from matxfer.machine import describe

        argv = list(sys.argv)
        if argv and Path(argv[0]).name in ("matxfer", "__main__.py"):
            argv = ["matxfer", *argv[1:]]
        machine = describe()
        sitting = {
            "command": self.command or shlex.join(argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "elapsed_s": 0.0,
            "cells_run": 0,
            "jobs": self.jobs,
            # jobs == 1 trains in this process, with its own torch threads
            "threads": self._worker_threads() if self.jobs > 1 else machine["torch_threads"],
            "machine": machine,
        }
        self._sitting_t0 = time.monotonic()
        # the study lock keeps other runs from writing the file meanwhile
        self._sittings = [*read_sittings(self.out), sitting]
        _write_json(self.out / SITTINGS_NAME, self._sittings)
        return sitting

    def _save_sitting(self, cells: int = 0) -> None:
        """Update this run's entry: elapsed time so far and cells run."""
        sitting = self._sitting
        if sitting is None:
            return
        sitting["elapsed_s"] = round(time.monotonic() - self._sitting_t0, 1)
        sitting["cells_run"] += cells
        _write_json(self.out / SITTINGS_NAME, self._sittings)

    def _worker_threads(self) -> int:
        """Torch threads of each worker process: ``threads``, else CPU count / jobs."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.jobs)

    def _pool(self):
        """Worker processes (spawned: no shared torch state), ``threads`` torch threads each."""
        import multiprocessing

        threads = self._worker_threads()
        return ProcessPoolExecutor(
            max_workers=self.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(threads,),
        )

    def _note(self, cell, row: dict[str, Any]) -> None:
        if row.get("status") != "ok":
            target, _, size, recipe, seed = cell
            self.failed.append((str(self.cell_dir(target, recipe, size, seed)), str(row.get("error", "failed"))))

    def _record_crash(self, cell, exc: BaseException) -> dict[str, Any]:
        target, _, size, recipe, seed = cell
        run_dir = self.cell_dir(target, recipe, size, seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        row = {
            "target": target.name, "recipe": recipe.name, "kind": recipe.kind,
            "pretrained": recipe.pretrained or "", "size": size, "seed": seed,
            "status": "failed", "error": f"{type(exc).__name__}: {exc}", "wall_time_s": 0.0,
        }
        log.error("cell %s: worker failed: %s", run_dir, row["error"])
        (run_dir / "result.json").write_text(json.dumps(row, indent=1))
        return row

    def write_results(self) -> Path:
        rows = []
        for f in sorted((self.out / "cells").rglob("result.json")):
            rows.append(json.loads(f.read_text()))
        for name, pre in self.pretrained.items():
            rows.append(
                {
                    "target": "(pretrain)",
                    "recipe": name,
                    "kind": "pretrain",
                    "status": "ok",
                    "wall_time_s": pre.get("wall_time_s", 0.0),
                }
            )
        cols: list[str] = []
        for r in rows:
            cols.extend(c for c in r if c not in cols)
        path = self.out / "results.csv"
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        return path


#: per-run record inside a study directory (see :meth:`StudyRunner._start_sitting`)
SITTINGS_NAME = "sittings.json"


def read_sittings(out: str | Path) -> list[dict[str, Any]]:
    """The study directory's sittings (empty when none were recorded or the file is unreadable)."""
    path = Path(out) / SITTINGS_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _write_json(path: Path, data: Any) -> None:
    from matxfer.cache_io import write_bytes_atomic

    write_bytes_atomic(path, json.dumps(data, indent=1).encode())


# ----------------------------------------------------------------------------------------
# worker processes (``jobs > 1``)
# ----------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask the kernel to end this worker when the study process ends (Linux), so a killed
    study does not leave workers training cells into its directory."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - libc without prctl
        log.debug("could not tie the worker's lifetime to the study process")


def _worker_init(threads: int) -> None:
    import torch

    _die_with_parent()
    torch.set_num_threads(int(threads))
    os.environ.setdefault("MATXFER_PROGRESS", "0")
    logging.getLogger("matxfer").setLevel(logging.INFO)


def _pretrain_in_worker(study: StudyConfig, out: Path, spec) -> dict[str, Any]:
    return StudyRunner(study, out).pretrain_one(spec)


def _cell_in_worker(study: StudyConfig, out: Path, pretrained: dict, retry_failed: bool, cell) -> dict:
    runner = StudyRunner(study, out, retry_failed=retry_failed)
    runner.pretrained = pretrained
    return runner.run_cell(*cell)
