"""How often does a ``max_neighbors`` cut split a shell of equidistant neighbours?

For every structure of the tensor datasets, the CGCNN-style graph (8 A, 12 neighbours) is
built twice, cutting at exactly 12 (ties broken by atom index and image, the old rule) and
keeping the whole shell at the cut (``graph.keep_shell``, the default). A structure counts
as affected when the two graphs differ; for those the crystal's point group is then checked
against each atom's neighbour-vector set: does the cut graph still map onto itself under
every point-group operation?

Usage: python benchmarks/shell_ties.py [--limit N]
Writes benchmarks/results/shell_ties.json.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "shell_ties.json"
DATASETS = ("petousis-dielectric-2017", "dejong-piezo-2015", "mp-elastic-2024")


def _vectors(structure, nl) -> dict[int, np.ndarray]:
    cart = structure.cart_coords
    lat = structure.lattice.matrix
    vec = cart[nl.src] + nl.shift @ lat - cart[nl.dst]
    return {i: vec[nl.dst == i] for i in range(len(structure))}


def _invariant(vecs: dict[int, np.ndarray], r: np.ndarray) -> bool:
    """Every atom's neighbour-vector set maps onto itself under the rotation ``r``."""
    return all(
        all(np.abs(v @ r.T - x).max(axis=1).min() < 1e-4 for x in v) for v in vecs.values()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from matxfer.data.graphs import neighbor_list
    from matxfer.data.registry import load_dataset
    from matxfer.symmetry import structure_point_group

    out = {"protocol": {"cutoff": 8.0, "max_neighbors": 12}, "datasets": {}}
    for name in DATASETS:
        recs = load_dataset(name).records[: args.limit]
        t0 = time.time()
        affected, extra_edges, sym_broken = 0, [], 0
        for r in recs:
            s = r.structure
            cut = neighbor_list(s, 8.0, 12, keep_shell=False)
            whole = neighbor_list(s, 8.0, 12, keep_shell=True)
            if len(whole.src) != len(cut.src):
                affected += 1
                extra_edges.append(len(whole.src) - len(cut.src))
                # the site symmetry the whole-shell graph keeps (operations leaving every atom's
                # neighbour set invariant): the cut graph must keep it too
                wv, cv = _vectors(s, whole), _vectors(s, cut)
                site_ops = [q for q in structure_point_group(s).rotations if _invariant(wv, q)]
                if not all(_invariant(cv, q) for q in site_ops):
                    sym_broken += 1
        out["datasets"][name] = {
            "n": len(recs),
            "affected": affected,
            "share_affected": affected / max(1, len(recs)),
            "cut_graph_breaks_symmetry": sym_broken,
            "median_extra_edges": float(np.median(extra_edges)) if extra_edges else 0.0,
            "seconds": round(time.time() - t0, 1),
        }
        print(name, out["datasets"][name], flush=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
