"""Frozen SevenNet-0 feature throughput on the Petousis dielectric set, one thread.

Builds the graphs of the first ``--n`` structures of petousis-dielectric-2017 (r = 5 A, all
neighbours; not timed), then times :func:`matxfer.feature_cache.compute_outputs` of
the ``sevennet`` backbone (float32, every block's features, 2048 per atom) on them, for the
``natural`` parity mode and, with ``--project``, for ``project`` (which runs every crystal
twice). Reports structures and atoms per second and the time extrapolated to 10,000
structures of the same size distribution, and the size of the cached features.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/sevennet_features.py [--n 200] [--project]
        [--out benchmarks/results/sevennet_features.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--project", action="store_true", help="also time parity='project'")
    p.add_argument("--out", default="benchmarks/results/sevennet_features.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from _budget import machine

    from matxfer.data.graphs import GraphSettings, structure_to_graph
    from matxfer.data.registry import load_dataset
    from matxfer.feature_cache import compute_outputs
    from matxfer.models.backbones.sevennet import SevenNetBackbone

    ds = load_dataset("petousis-dielectric-2017")
    records = ds.records[: args.n]
    settings = GraphSettings(cutoff=5.0)
    graphs = [structure_to_graph(r.structure, settings, r.material_id) for r in records]
    n_atoms = sum(int(g.num_nodes) for g in graphs)
    n_edges = sum(int(g.edge_index.shape[1]) for g in graphs)
    result = {
        "protocol": (
            f"first {len(graphs)} petousis-dielectric-2017 structures, graphs r=5 A all "
            f"neighbours (not timed), compute_outputs batch {args.batch_size}, float32, "
            "torch threads 1"
        ),
        "structures": len(graphs),
        "atoms": n_atoms,
        "edges": n_edges,
        "machine": machine(),
        "load_avg_1min": os.getloadavg()[0],
        "modes": {},
    }
    modes = ["natural"] + (["project"] if args.project else [])
    for mode in modes:
        bb = SevenNetBackbone(parity=mode).eval()
        compute_outputs(bb, graphs[:2], batch_size=2)  # warm-up
        t0 = time.perf_counter()
        outs = compute_outputs(bb, graphs, batch_size=args.batch_size)
        wall = time.perf_counter() - t0
        mb = sum(o["node_feats"].numel() * o["node_feats"].element_size() for o in outs) / 2**20
        result["modes"][mode] = {
            "wall_s": round(wall, 2),
            "structures_per_s": round(len(graphs) / wall, 2),
            "atoms_per_s": round(n_atoms / wall, 1),
            "extrapolated_10k_structures_min": round(wall / len(graphs) * 10_000 / 60, 1),
            "feature_mb": round(mb, 1),
            "feature_width": bb.out_spec.dim,
        }
        print(mode, json.dumps(result["modes"][mode]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
