"""On-disk graph store (LMDB) against the in-memory list of graphs, on generated crystals.

The data set: ``N`` rattled, strained supercells of eight prototypes (bcc, fcc, rock salt,
CsCl, zinc blende, fluorite, cubic perovskite, wurtzite; 2-8 atoms; A and B elements drawn
from short lists), each drawn from a generator seeded by ``(seed, index)``, so any process
regenerates any structure without the others. Lattices are scaled by U(0.95, 1.05) and
strained by ``1 + eps`` (symmetric ``eps``, N(0, 0.02) entries); atoms are displaced by
N(0, sigma), sigma ~ U(0.01, 0.08) A. The label (``energy_per_atom``) is synthetic (a
per-element constant plus a strain term): it only gives the loader something to carry.
Graphs: cutoff 5 A, 12 nearest neighbours (``keep_shell``), no atom-feature table.

Each measurement runs in its own fresh process (``--phase``), sampling memory every 0.1 s
with psutil: the process's RSS (as ``/proc/self/statm`` reports it), its anonymous part
(RSS minus file-backed and shared pages: the memory of its own), for DataLoader workers
their RSS summed, and every 1 s the PSS of the parent and workers together (proportional
set size: pages shared between them counted once).

* ``build``: the structures are generated on the fly and streamed into
  :func:`matxfer.data.graph_store.build_store` (chunks of 2,000): time, structures/s, disk
  size, peak memory. Nothing holds the data set in memory.
* ``store-epoch``: one epoch over the store through a torch_geometric ``DataLoader`` (batch
  32, shuffled) with 0 or 2 worker processes: structures/s and peak memory.
* ``memory-epoch``: the in-memory path: the records are generated into a list, their graphs
  built (:func:`matxfer.data.graph_cache.build_graphs`, no disk cache) and labelled, the
  records dropped, then the same epoch with 0 and 2 workers over the list.

An epoch is reading and collation only: the forward of even a small CGCNN (width 16, 2
convolutions; timed on 10 batches, ``cgcnn_forward_ms_per_batch``) costs far more per
batch than the loading on the 2 shared cores this ran on, so it is left out of the epoch
(it is the same for both paths).

Usage::

    python benchmarks/graph_store.py [--sizes 50000 200000] [--out benchmarks/results/graph_store.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

SEED = 2026
BATCH = 32
CHUNK = 2000
SETTINGS = {"cutoff": 5.0, "max_neighbors": 12}
TARGET = "energy_per_atom"

# prototype -> (lattice builder(a), fractional basis, site roles, supercells, base a)
_A = ("Na", "K", "Mg", "Ca", "Sr", "Ba", "Cu", "Al", "Ni", "Fe", "Ti", "Zn")
_B = ("Cl", "O", "S", "F", "Se", "N")
_FAKE_E = {el: -1.0 - 0.25 * i for i, el in enumerate(_A + _B)}


def _cubic(a):
    return np.eye(3) * a


def _fcc_prim(a):
    return 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=float)


def _bcc_prim(a):
    return 0.5 * a * np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]], dtype=float)


def _hex(a, c=None):
    c = 1.633 * a if c is None else c
    return np.array([[a, 0, 0], [-0.5 * a, np.sqrt(3) / 2 * a, 0], [0, 0, c]])


PROTOTYPES = {
    "bcc": (_bcc_prim, [[0, 0, 0]], "A", ((2, 1, 1), (2, 2, 1), (2, 2, 2)), 2.9),
    "fcc": (_fcc_prim, [[0, 0, 0]], "A", ((2, 1, 1), (2, 2, 1), (2, 2, 2)), 3.9),
    "rocksalt": (_fcc_prim, [[0, 0, 0], [0.5, 0.5, 0.5]], "AB", ((1, 1, 1), (2, 1, 1), (2, 2, 1)), 5.5),
    "cscl": (_cubic, [[0, 0, 0], [0.5, 0.5, 0.5]], "AB", ((1, 1, 1), (2, 1, 1), (2, 2, 1)), 3.9),
    "zincblende": (_fcc_prim, [[0, 0, 0], [0.25, 0.25, 0.25]], "AB", ((1, 1, 1), (2, 1, 1), (2, 2, 1)), 5.6),
    "fluorite": (_fcc_prim, [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]], "ABB", ((1, 1, 1), (2, 1, 1)), 5.6),
    "perovskite": (_cubic, [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
                   "AABBB", ((1, 1, 1),), 4.0),
    "wurtzite": (_hex, [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.375],
                        [2 / 3, 1 / 3, 0.875]], "AABB", ((1, 1, 1), (2, 1, 1)), 3.3),
}
_NAMES = tuple(PROTOTYPES)


def make_record(index: int, seed: int = SEED):
    """The ``index``-th generated crystal (a CrystalRecord), the same in every process."""
    from pymatgen.core import Lattice, Structure

    from matxfer.data.records import CrystalRecord

    rng = np.random.default_rng([seed, index])
    name = _NAMES[int(rng.integers(len(_NAMES)))]
    lat_fn, basis, roles, reps_options, a0 = PROTOTYPES[name]
    reps = np.array(reps_options[int(rng.integers(len(reps_options)))])
    a_el = _A[int(rng.integers(len(_A)))]
    b_el = _B[int(rng.integers(len(_B)))]
    if name == "perovskite":  # A, B-site cation, three anions
        b_site = _A[int(rng.integers(len(_A)))]
        cell_species = [a_el, b_site, b_el, b_el, b_el]
    else:
        cell_species = [a_el if r == "A" else b_el for r in roles]
    lat = lat_fn(a0 * rng.uniform(0.95, 1.05))
    shifts = np.stack(np.meshgrid(*[np.arange(n) for n in reps], indexing="ij"), -1).reshape(-1, 3)
    frac = ((np.asarray(basis)[None, :, :] + shifts[:, None, :]) / reps).reshape(-1, 3)
    species = cell_species * len(shifts)
    eps = rng.normal(0.0, 0.02, (3, 3))
    eps = 0.5 * (eps + eps.T)
    matrix = (reps[:, None] * lat) @ (np.eye(3) + eps)
    cart = frac @ matrix + rng.normal(0.0, rng.uniform(0.01, 0.08), (len(frac), 3))
    s = Structure(Lattice(matrix), species, cart, coords_are_cartesian=True)
    e = float(np.mean([_FAKE_E[x] for x in species]) + 5.0 * float(np.sum(eps * eps)))
    return CrystalRecord(f"gen-{index:07d}", s, {TARGET: e}, {"prototype": name})


def records(n: int):
    for i in range(n):
        yield make_record(i)


# ---------------------------------------------------------------------------------------
# memory sampling
# ---------------------------------------------------------------------------------------


class MemorySampler:
    """Peak memory of this process and its children, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.1):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.reset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.peak = {"rss_mb": 0.0, "anon_mb": 0.0, "children_rss_mb": 0.0,
                     "total_pss_mb": 0.0, "max_children": 0}

    def sample(self, pss: bool = True) -> dict:
        """RSS (statm) of this process and its children; with ``pss``, also their PSS
        (from smaps: about 20 ms a process, so it is sampled less often)."""
        import psutil

        mb = 1 / 2**20
        mi = self.proc.memory_info()
        cur = {"rss_mb": mi.rss * mb, "anon_mb": (mi.rss - mi.shared) * mb}
        total_pss = 0.0
        if pss:
            try:
                total_pss = self.proc.memory_full_info().pss * mb
            except (psutil.Error, AttributeError):
                pass
        crss = 0.0
        kids = self.proc.children(recursive=True)
        for c in kids:
            try:
                crss += c.memory_info().rss * mb
                if pss:
                    total_pss += c.memory_full_info().pss * mb
            except psutil.Error:
                pass
        cur.update({"children_rss_mb": crss, "max_children": len(kids)})
        if pss:
            cur["total_pss_mb"] = total_pss
        return cur

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            cur = self.sample(pss=i % 10 == 0)
            for k, v in cur.items():
                self.peak[k] = max(self.peak[k], v)
            i += 1
            time.sleep(self.interval)

    def peaks(self) -> dict:
        cur = self.sample()
        for k, v in cur.items():
            self.peak[k] = max(self.peak[k], v)
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in self.peak.items()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _settings():
    from matxfer.data.graphs import GraphSettings

    return GraphSettings(**SETTINGS)


def _tasks():
    from matxfer.tasks import make_task

    return {TARGET: make_task(TARGET)}


def _epoch(dataset, workers: int) -> dict:
    import torch
    from torch_geometric.loader import DataLoader

    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(SEED))
    t0 = time.perf_counter()
    n = n_atoms = 0
    for batch in loader:
        n += int(batch.num_graphs)
        n_atoms += int(batch.num_nodes)
    dt = time.perf_counter() - t0
    return {"workers": workers, "structures": n, "atoms": n_atoms, "seconds": round(dt, 2),
            "structures_per_s": round(n / dt, 1)}


# ---------------------------------------------------------------------------------------
# phases (each in a fresh process)
# ---------------------------------------------------------------------------------------


def phase_build(n: int, store: Path) -> dict:
    from matxfer.data.graph_store import GraphStore, build_store

    mem = MemorySampler()
    base = mem.sample()
    load0 = os.getloadavg()
    report = build_store(records(n), store, _settings(), chunk_size=CHUNK, total=n, progress=False)
    peaks = mem.peaks()
    mem.stop()
    st = GraphStore(store)
    return {
        "structures": n, "written": report.written, "failed": report.failed,
        "failures": report.failures[:5], "chunks": report.chunks,
        "seconds": round(report.seconds, 2),
        "structures_per_s": round(n / report.seconds, 1),
        "disk_mb": round(st.disk_bytes() / 1e6, 1),
        "disk_bytes_per_structure": round(st.disk_bytes() / max(1, len(st)), 1),
        "rss_before_mb": round(base["rss_mb"], 1), "peak": peaks,
        "loadavg_start": load0, "loadavg_end": os.getloadavg(),
    }


def _forward_ms(dataset, n_batches: int = 10) -> float:
    """Mean time of a small CGCNN's forward (width 16, 2 convolutions) per batch."""
    import torch
    from torch_geometric.loader import DataLoader

    from matxfer.models.registry import build_model

    model = build_model({"backbone": {"name": "cgcnn", "width": 16, "n_conv": 2},
                         "heads": {TARGET: {"name": "scalar"}}}, _tasks()).eval()
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=False)
    times = []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            t0 = time.perf_counter()
            model.predict(batch)
            if i:  # the first call is warm-up
                times.append(time.perf_counter() - t0)
            if len(times) == n_batches:
                break
    return round(1e3 * float(np.mean(times)), 1)


def phase_store_epoch(store: Path, workers: int) -> dict:
    from matxfer.data.graph_store import GraphStoreDataset

    ds = GraphStoreDataset(store, tasks=_tasks())
    mem = MemorySampler()
    base = mem.sample()
    load0 = os.getloadavg()
    out = _epoch(ds, workers)
    out.update({"rss_before_mb": round(base["rss_mb"], 1), "peak": mem.peaks(),
                "loadavg_start": load0, "loadavg_end": os.getloadavg()})
    mem.stop()
    if workers == 0:
        try:
            out["cgcnn_forward_ms_per_batch"] = _forward_ms(ds)
        except Exception as exc:  # noqa: BLE001 - the timing is a side note, not the benchmark
            out["cgcnn_forward_error"] = f"{type(exc).__name__}: {exc}"
    return out


def phase_memory_epoch(n: int, workers_list: list[int]) -> dict:
    from matxfer.data.graph_cache import build_graphs
    from matxfer.train.data import attach_labels

    mem = MemorySampler()
    base = mem.sample()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    recs = list(records(n))
    t_gen = time.perf_counter() - t0
    after_records = mem.sample()["rss_mb"]
    t0 = time.perf_counter()
    graphs, failures = build_graphs(recs, _settings(), cache_key=None, progress=False)
    by_id = {r.material_id: r for r in recs}
    graphs = [attach_labels(g, by_id[g.material_id], _tasks()) for g in graphs]
    t_build = time.perf_counter() - t0
    del recs, by_id
    gc.collect()
    holding = mem.sample()["rss_mb"]
    prepare_peak = mem.peaks()
    epochs = []
    for w in workers_list:
        mem.reset()
        e = _epoch(graphs, w)
        e["peak"] = mem.peaks()
        epochs.append(e)
    mem.stop()
    return {
        "structures": n, "graphs": len(graphs), "failed": len(failures),
        "generate_s": round(t_gen, 2), "graph_build_s": round(t_build, 2),
        "rss_before_mb": round(base["rss_mb"], 1),
        "rss_with_records_mb": round(after_records, 1),
        "rss_holding_graphs_mb": round(holding, 1),
        "prepare_peak": prepare_peak, "epochs": epochs,
        "loadavg_start": load0, "loadavg_end": os.getloadavg(),
    }


def summarize(entry: dict) -> dict:
    """The headline numbers of one size (all taken from the phases' measurements)."""
    b, mem = entry["build"], entry["memory"]
    store = {e["workers"]: e for e in entry["store_epoch"]}
    memory = {e["workers"]: e for e in mem["epochs"]}
    return {
        "build_s": b["seconds"], "build_structures_per_s": b["structures_per_s"],
        "disk_mb": b["disk_mb"], "build_peak_rss_mb": b["peak"]["rss_mb"],
        "epoch_peak_rss_mb": {"store": store[0]["peak"]["rss_mb"],
                              "in_memory": memory[0]["peak"]["rss_mb"]},
        # RSS less file-backed pages: for the store, the mapped LMDB file is not counted
        "epoch_peak_anon_mb": {"store": store[0]["peak"]["anon_mb"],
                               "in_memory": memory[0]["peak"]["anon_mb"]},
        "epoch_peak_pss_with_2_workers_mb": {"store": store[2]["peak"]["total_pss_mb"],
                                             "in_memory": memory[2]["peak"]["total_pss_mb"]},
        "epoch_structures_per_s": {
            "store": {"0_workers": store[0]["structures_per_s"],
                      "2_workers": store[2]["structures_per_s"]},
            "in_memory": {"0_workers": memory[0]["structures_per_s"],
                          "2_workers": memory[2]["structures_per_s"]},
        },
        "in_memory_prepare_s": round(mem["generate_s"] + mem["graph_build_s"], 2),
    }


def _run_phase(*args: str, timeout: float = 3600) -> dict:
    cmd = [sys.executable, __file__, "--phase", *args]
    print("+", " ".join(cmd[2:]), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"phase {args} failed:\n{r.stderr[-4000:]}")
    blob = json.loads(r.stdout.strip().splitlines()[-1])
    print("  ", json.dumps(blob)[:400], flush=True)
    return blob


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50000, 200000])
    p.add_argument("--workdir", default="/tmp/matxfer-graph-store-bench")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "graph_store.json"))
    p.add_argument("--keep", action="store_true", help="keep the stores")
    p.add_argument("--phase", nargs="+", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("MATXFER_PROGRESS", "0")
    if args.phase:
        kind, *rest = args.phase
        if kind == "build":
            out = phase_build(int(rest[0]), Path(rest[1]))
        elif kind == "store-epoch":
            out = phase_store_epoch(Path(rest[0]), int(rest[1]))
        else:
            out = phase_memory_epoch(int(rest[0]), [int(w) for w in rest[1:]])
        print(json.dumps(out, default=float))
        return

    import lmdb
    import torch
    import torch_geometric

    work = Path(args.workdir)
    t_all = time.time()
    result = {
        "benchmark": "graph_store",
        "what": __doc__.split("\n\n")[0],
        "settings": {**SETTINGS, "batch_size": BATCH, "chunk_size": CHUNK, "seed": SEED},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "torch_geometric": torch_geometric.__version__, "lmdb": lmdb.__version__,
                    "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                    "loadavg_start": os.getloadavg()},
        "sizes": {},
    }
    out_path = Path(args.out)
    for n in args.sizes:
        store = work / f"store-{n}"
        shutil.rmtree(store, ignore_errors=True)
        entry = {"build": _run_phase("build", str(n), str(store))}
        entry["store_epoch"] = [_run_phase("store-epoch", str(store), str(w)) for w in (0, 2)]
        entry["memory"] = _run_phase("memory-epoch", str(n), "0", "2")
        result["sizes"][str(n)] = entry
        result.setdefault("summary", {})[str(n)] = summarize(entry)
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
        result["machine"]["loadavg_end"] = os.getloadavg()
        result["total_s"] = round(time.time() - t_all, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {out_path} in {time.time() - t_all:.0f} s")


if __name__ == "__main__":
    main()
