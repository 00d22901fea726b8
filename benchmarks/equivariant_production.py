"""The equivariant backbone at MatTen's published production size, on CPU.

MatTen (Wen et al. 2024) predicts elastic tensors with hidden irreps
``32x0o+32x0e+16x1o+16x1e+4x2o+4x2e+2x3o+2x3e+2x4e``, 3 interaction layers, edge
harmonics up to ``l = 4``, a 5 A cutoff and 8 Bessel functions. Here matxfer's
``equivariant`` backbone is built with exactly those settings and an elastic (rank-4,
``ijkl=jikl=klij``) tensor head, in two variants:

* ``matten-size+elastic``: the backbone's default tensor-product path selection
  (``max_path_l=7``, ``sh_l_nonscalar=2``, see :mod:`matxfer.models.backbones.equivariant`);
* ``matten-size-allpaths+elastic``: every ``uvu`` path the irreps allow, as in MatTen's
  own (NequIP) tensor product.

The timing is :func:`train_throughput.run_case` (one spawned process per case, graphs
built beforehand, one warm-up batch, forward + backward + AdamW step for training, eval
mode under ``no_grad`` for inference, best of ``--repeats`` passes over ``--n``
structures, CPU-time rates, RSS sampled every 2 ms) on the first ``--n`` (1,000)
structures of mp-elastic-2024, batch size 32, ``torch.set_num_threads(2)``. The cases are
registered in ``train_throughput.CASES`` when this module is imported, which the spawned
processes do as well.

Usage::

    python benchmarks/equivariant_production.py [--n 1000] [--repeats 2] [--cases all]
        [--out benchmarks/results/equivariant_production.json]
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402

#: MatTen's production backbone settings
MATTEN = {
    "name": "equivariant",
    "hidden_irreps": "32x0o+32x0e+16x1o+16x1e+4x2o+4x2e+2x3o+2x3e+2x4e",
    "n_layers": 3,
    "l_max": 4,
    "cutoff": 5.0,
    "num_radial": 8,
}
ELASTIC = {"elastic_tensor": {"name": "tensor", "formula": "ijkl=jikl=klij"}}

CASES = {
    "matten-size+elastic": (dict(MATTEN), ELASTIC),
    "matten-size-allpaths+elastic": (
        {**MATTEN, "max_path_l": None, "sh_l_nonscalar": None},
        ELASTIC,
    ),
}
tt.CASES.update(CASES)

#: MatTen's own code on this kind of machine (batch 32, 2 threads), structures/s
MATTEN_REFERENCE = {"train_structures_per_s": 7.0, "infer_structures_per_s": 25.0}


def main(argv: list[str] | None = None) -> dict:
    args, names = tt.parse_case_args(argv, CASES, __doc__.split("\n\n")[0], 1000,
                                     "equivariant_production.json")

    import torch

    path, _, structures = tt.load_structures(args.n)
    results: dict[str, dict] = {}
    out = Path(args.out)
    report: dict = {}

    def write() -> None:
        report.update(
            {
                "benchmark": "equivariant_production",
                "data": {"file": path.name, "first_n_in_file_order": args.n},
                "graphs": {"settings": settings.to_dict(), "build_s": round(secs, 2)},
                "batch_size": tt.BATCH_SIZE,
                "torch_threads": tt.THREADS,
                "device": "cpu",
                "matten_reference": {
                    **MATTEN_REFERENCE,
                    "note": "MatTen's own code at this size on this kind of machine (batch 32, "
                    "2 threads), as quoted; not re-measured here (MatTen is not installed)",
                },
                "timing": "train = forward + backward + AdamW step; graph construction "
                "excluded; best of --repeats passes over all structures after one warm-up "
                "batch; *_cpu_* = structures per CPU-second of the process (less sensitive "
                "to other load)",
                "memory_metric": "peak_rss_delta_mb = peak RSS during the training passes "
                "(sampled every 2 ms) minus the RSS before them, each case in a fresh "
                "spawned process",
                "cases_asked": names,
                "cases": results,
                "machine": {
                    "platform": platform.platform(),
                    "cpu_count": os.cpu_count(),
                    "torch": torch.__version__,
                },
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        graphs, settings, secs = tt.build_graphs(structures, "equivariant")
        graph_file = str(Path(tmp) / "equivariant.pt")
        torch.save(graphs, graph_file)
        for name in names:
            queue = ctx.Queue()
            proc = ctx.Process(
                target=tt.run_case, args=(name, graph_file, args.n, args.repeats, queue)
            )
            proc.start()
            got, res = queue.get()
            proc.join()
            if "error" not in res:
                for key, ref in MATTEN_REFERENCE.items():
                    cpu_key = key.replace("_structures", "_cpu_structures")
                    res[f"{key}_over_matten"] = round(res[key] / ref, 2)
                    res[f"{cpu_key}_over_matten"] = round(res[cpu_key] / ref, 2)
            results[got] = res
            print(f"{name}: {json.dumps(res)}", flush=True)
            write()  # after every case, so a long run that is stopped keeps what it measured
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
