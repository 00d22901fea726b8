"""Training throughput of every built-in backbone on CPU.

For each case (backbone at its default configuration + a head) on the first ``--n`` (512)
structures of mp-elastic-2024, batch size 32, ``torch.set_num_threads(2)``:

* ``train_structures_per_s``: forward + backward + AdamW step (a full training step, MSE
  against fixed synthetic targets of the right shape: labels do not change the cost);
* ``infer_structures_per_s``: forward under ``torch.no_grad()`` in eval mode;
* peak memory of the training passes, two ways (``tracemalloc`` is not used: it does not
  see torch's tensor allocations):

  - ``peak_rss_delta_mb``: the peak resident set size during the training passes,
    sampled every 2 ms from ``/proc/self/statm`` by a background thread, minus the RSS
    just before them (graphs loaded, model built);
  - ``maxrss_delta_mb``: growth of ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` over the
    training passes. It reads 0 when the passes stay below an earlier high-water mark of
    the process (e.g. while unpickling the graphs), which is why the sampled number is
    the one to use; each case runs in its own spawned process.
* parameter counts of backbone, heads and in total.

Graphs are built once, before any timing, with each backbone's ``graph_defaults`` (graph
construction is excluded from the timings). Each timed pass goes over all ``--n``
structures; one warm-up batch precedes them. ``--repeats`` passes are run and the best and
all values reported, along with the CPU time of each pass and the load average: with
other processes on the two cores the wall-clock numbers drop (and 2-thread runs suffer
most), so ``cpu_structures_per_s`` (structures per CPU-second of this process) is
given as a load-independent companion number.

Usage::

    python benchmarks/train_throughput.py [--n 512] [--repeats 2] [--cases all]
        [--out benchmarks/results/train_throughput.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import threading
import time
from pathlib import Path

DATA_FILE = "mp_elasticity_2024_mp_tests/mp_elasticity_conventional_4-9-24.json.gz"
BATCH_SIZE = 32
THREADS = 2

#: benchmark cases: name -> (backbone config, {task: head config})
CASES: dict[str, tuple[dict, dict]] = {
    "cgcnn+scalar": ({"name": "cgcnn"}, {"log10_bulk_modulus_vrh": {"name": "scalar"}}),
    "cgcnn-attention+scalar": (
        {"name": "cgcnn-attention"},
        {"log10_bulk_modulus_vrh": {"name": "scalar"}},
    ),
    "equivariant+scalar": ({"name": "equivariant"}, {"log10_bulk_modulus_vrh": {"name": "scalar"}}),
    "equivariant+elastic": (
        {"name": "equivariant"},
        {"elastic_tensor": {"name": "tensor", "formula": "ijkl=jikl=klij"}},
    ),
    # the same backbone with every tensor-product path kept (shows what the path selection buys)
    "equivariant-allpaths+elastic": (
        {"name": "equivariant", "max_path_l": None, "sh_l_nonscalar": None},
        {"elastic_tensor": {"name": "tensor", "formula": "ijkl=jikl=klij"}},
    ),
    "alignn+scalar": ({"name": "alignn"}, {"log10_bulk_modulus_vrh": {"name": "scalar"}}),
    "alignn-w64+scalar": (
        {"name": "alignn", "width": 64, "n_alignn": 2, "n_gcn": 2},
        {"log10_bulk_modulus_vrh": {"name": "scalar"}},
    ),
    "local-frame+scalar": ({"name": "local-frame"}, {"log10_bulk_modulus_vrh": {"name": "scalar"}}),
    "chgnet+scalar": ({"name": "chgnet"}, {"log10_bulk_modulus_vrh": {"name": "scalar"}}),
    # an invariant backbone with the edge outer-product head on the elastic tensor
    "cgcnn+edge-elastic": (
        {"name": "cgcnn"},
        {"elastic_tensor": {"name": "edge-tensor", "formula": "ijkl=jikl=klij"}},
    ),
}


def _maxrss_mb() -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb() -> float:
    """Return the current resident set size (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Background sampler of the resident set size (context manager; ``peak`` in MiB)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.peak = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def load_structures(n: int):
    """Load the first ``n`` structures of the data file (file order) and the file path."""
    from pymatgen.core import Structure

    from matxfer.paths import data_dir

    path = data_dir() / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"benchmark data not found: {path}")
    with gzip.open(path, "rt") as fh:
        docs = json.load(fh)
    ids = list(docs)[:n]
    return path, ids, [Structure.from_dict(docs[i]["structure"]) for i in ids]


def build_graphs(structures, backbone_name: str):
    """Graphs of ``structures`` with the backbone's graph defaults, and the seconds taken."""
    from matxfer.data.graphs import GraphSettings, structure_to_graph
    from matxfer.models.registry import BACKBONES

    defaults = dict(BACKBONES[backbone_name].graph_defaults)
    settings = GraphSettings(
        **{k: v for k, v in defaults.items() if k in GraphSettings.__dataclass_fields__}
    )
    t0 = time.perf_counter()
    graphs = [structure_to_graph(s, settings) for s in structures]
    return graphs, settings, time.perf_counter() - t0


def _task(name: str):
    from matxfer.tasks import make_task

    return make_task(name)


def _targets(model, batch) -> dict:
    """Draw fixed synthetic normalised targets of each head's output shape."""
    import torch

    gen = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        pred = model(batch)
    for k, v in pred.items():
        out[k] = torch.randn(v.shape, generator=gen, dtype=v.dtype)
    return out


def run_case(name: str, graph_file: str, n_structures: int, repeats: int, queue) -> None:
    """Child process: time one case and put its result dict on ``queue``."""
    import torch
    from torch_geometric.loader import DataLoader

    from matxfer.models.registry import build_model

    try:
        torch.set_num_threads(THREADS)
        torch.manual_seed(0)
        bb_cfg, heads = CASES[name]
        graphs = torch.load(graph_file, weights_only=False)[:n_structures]
        batches = list(DataLoader(graphs, batch_size=BATCH_SIZE, shuffle=False))
        t0 = time.perf_counter()
        model = build_model({"backbone": bb_cfg, "heads": heads}, {t: _task(t) for t in heads})
        build_s = time.perf_counter() - t0
        targets = [_targets(model, b) for b in batches]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        rss0 = _maxrss_mb()

        def train_pass() -> tuple[float, float]:
            model.train()
            w0, c0 = time.perf_counter(), time.process_time()
            for b, y in zip(batches, targets):
                out = model(b)
                loss = sum(((out[k] - y[k]) ** 2).mean() for k in out)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return time.perf_counter() - w0, time.process_time() - c0

        @torch.no_grad()
        def infer_pass() -> tuple[float, float]:
            model.eval()
            w0, c0 = time.perf_counter(), time.process_time()
            for b in batches:
                model(b)
            return time.perf_counter() - w0, time.process_time() - c0

        # warm-up (allocator, lazy initialisation)
        model.train()
        out = model(batches[0])
        sum(((out[k] - targets[0][k]) ** 2).mean() for k in out).backward()
        opt.zero_grad(set_to_none=True)

        load0 = os.getloadavg()
        rss_before = _rss_mb()
        with PeakRSS() as sampler:
            train = [train_pass() for _ in range(repeats)]
        rss_peak = _maxrss_mb()
        infer = [infer_pass() for _ in range(repeats)]
        load1 = os.getloadavg()
        n = len(graphs)
        n_atoms = sum(int(g.num_nodes) for g in graphs)
        n_edges = sum(int(g.edge_index.shape[1]) for g in graphs)
        result = {
            "backbone": bb_cfg,
            "heads": heads,
            "backbone_config": model.model_config()["backbone"],
            "head_configs": model.model_config()["heads"],
            "params_backbone": sum(p.numel() for p in model.backbone.parameters()),
            "params_heads": sum(p.numel() for p in model.heads.parameters()),
            "params_total": sum(p.numel() for p in model.parameters()),
            "n_structures": n,
            "atoms_per_structure": n_atoms / n,
            "edges_per_atom": n_edges / max(n_atoms, 1),
            "model_build_s": round(build_s, 2),
            "train_structures_per_s": round(max(n / w for w, _ in train), 2),
            "train_structures_per_s_all": [round(n / w, 2) for w, _ in train],
            "train_cpu_structures_per_s": round(max(n / c for _, c in train), 2),
            "infer_structures_per_s": round(max(n / w for w, _ in infer), 2),
            "infer_structures_per_s_all": [round(n / w, 2) for w, _ in infer],
            "infer_cpu_structures_per_s": round(max(n / c for _, c in infer), 2),
            "peak_rss_delta_mb": round(sampler.peak - rss_before, 1),
            "maxrss_delta_mb": round(rss_peak - rss0, 1),
            "rss_before_training_mb": round(rss_before, 1),
            "loadavg_1min_before_after": [round(load0[0], 2), round(load1[0], 2)],
        }
        queue.put((name, result))
    except Exception as exc:  # report instead of hanging the parent
        queue.put((name, {"error": f"{type(exc).__name__}: {exc}"}))


def parse_case_args(argv, cases, description: str, n: int, out_name: str):
    """``--n --repeats --cases --out`` of a throughput benchmark; returns (args, case names).

    Raises:
        SystemExit: an unknown case name.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=int, default=n, help="structures per pass")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per mode")
    parser.add_argument(
        "--cases", default="all", help=f"comma-separated subset of {list(cases)} or 'all'"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / out_name)
    )
    args = parser.parse_args(argv)
    names = list(cases) if args.cases == "all" else args.cases.split(",")
    unknown = [c for c in names if c not in cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; valid: {list(cases)}")
    return args, names


def main(argv: list[str] | None = None) -> dict:
    """Run the cases, write the JSON report and return it."""
    args, names = parse_case_args(argv, CASES, __doc__.split("\n\n")[0], 512,
                                  "train_throughput.json")

    import torch

    path, ids, structures = load_structures(args.n)
    results: dict[str, dict] = {}
    graph_info: dict[str, dict] = {}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, str] = {}
        for name in names:
            bb = CASES[name][0]["name"]
            if bb not in files:
                graphs, settings, secs = build_graphs(structures, bb)
                files[bb] = str(Path(tmp) / f"{bb}.pt")
                torch.save(graphs, files[bb])
                graph_info[bb] = {"settings": settings.to_dict(), "build_s": round(secs, 2)}
            queue = ctx.Queue()
            proc = ctx.Process(target=run_case, args=(name, files[bb], args.n, args.repeats, queue))
            proc.start()
            got, res = queue.get()
            proc.join()
            results[got] = res
            print(f"{name}: {json.dumps(res)[:400]}", flush=True)

    report = {
        "benchmark": "train_throughput",
        "data": {"file": str(path.name), "first_n_in_file_order": args.n},
        "batch_size": BATCH_SIZE,
        "torch_threads": THREADS,
        "device": "cpu",
        "memory_metric": "peak_rss_delta_mb = peak RSS during the training passes (sampled "
        "every 2 ms from /proc/self/statm) minus the RSS before them; maxrss_delta_mb = growth "
        "of resource.getrusage(RUSAGE_SELF).ru_maxrss over the passes (0 when they stay below "
        "an earlier high-water mark); each case in a fresh spawned process",
        "timing": "train = forward + backward + AdamW step; graph construction excluded; "
        "best of --repeats passes over all structures after one warm-up batch",
        "graphs": graph_info,
        "cases": results,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
