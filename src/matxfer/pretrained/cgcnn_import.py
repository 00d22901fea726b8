"""Import the original CGCNN checkpoints (Xie & Grossman, PRL 120, 145301 (2018)).

The released ``*.pth.tar`` files of ``txie-93/cgcnn`` hold ``{epoch, state_dict,
best_mae_error, optimizer, normalizer: {mean, std}, args}``. :func:`import_cgcnn` turns one
into a matxfer checkpoint:

- architecture from ``args`` (``atom_fea_len``, ``n_conv``, ``h_fea_len``, ``n_h``) with the
  graph settings of the original ``predict.py`` (radius 8 A, 12 neighbours, Gaussian
  expansion of the distance from 0 to 8 A in steps of 0.2 A);
- weights mapped onto matxfer's ``cgcnn`` backbone (``embedding``, ``convs.N.fc_full``,
  ``convs.N.bn1``, ``convs.N.bn2``: the original names) and a ``scalar`` head that repeats
  the original read-out exactly: mean pooling, softplus, ``conv_to_fc``, softplus,
  ``n_h - 1`` hidden ``Linear -> softplus`` layers, ``fc_out``;
- the normaliser's mean and standard deviation copied into the task's ``ScalarNormalizer``;
- the ``atom_init.json`` element table stored inside the checkpoint (graph atom features
  ``"table:<sha256>"``), so no external file is needed to predict;
- target name and units from the file name (:data:`TARGETS`), provenance with the source
  file's sha256.

The result is written with :func:`matxfer.checkpoint.build_checkpoint` /
:func:`~matxfer.checkpoint.save_checkpoint` and reads back with
``torch.load(weights_only=True)``.

Neighbour lists of the original code (compatibility mode, imported checkpoints only).
``predict.py`` of the original takes ``Structure.get_all_neighbors(8)`` of each atom, sorts
it by distance with Python's stable sort and keeps the first 12; an atom with fewer than 12
neighbours is padded with atom 0 at a distance of radius + 1 = 9 A (its Gaussian features
are below 1.4e-11, so the padding contributes the message of atom 0 with an almost-zero
bond). matxfer's own neighbour lists differ in two ways: equidistant neighbours competing
for the last of the 12 places are chosen by (neighbour index, image), where the original's
choice follows pymatgen's internal order and floating-point noise, and nothing is ever
padded. On the 50 reference crystals, 13 have equidistant neighbours competing for the
last places; in 12 of them the choice leaves the predictions unchanged (< 1e-6), but for
mp-10554 (Ca3TlN, 12 neighbours at 3.503 A for 10 places) matxfer's own graphs move the
predictions by up to 0.17 (shear modulus, log10 GPa).
:func:`cgcnn_neighbor_list` reproduces the original list; padded neighbours become edges
from atom 0 through a periodic image at least radius + 1 from the centre (exactly the
original's features up to ~1e-11). Graphs built that way are marked by
``GraphSettings.cgcnn_compat`` when matxfer's graph settings have that field (see
:data:`COMPAT_FIELD`); :class:`CompatPredictor` always builds them.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matxfer.data.graphs import cgcnn_neighbor_list  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

#: file-name stem of a released checkpoint -> (matxfer target name, units)
TARGETS: dict[str, tuple[str, str]] = {
    "formation-energy-per-atom": ("formation_energy_per_atom", "eV/atom"),
    "final-energy-per-atom": ("final_energy_per_atom", "eV/atom"),
    "band-gap": ("band_gap", "eV"),
    "efermi": ("efermi", "eV"),
    "bulk-moduli": ("log10_bulk_modulus_vrh", "log10(GPa)"),
    "shear-moduli": ("log10_shear_modulus_vrh", "log10(GPa)"),
    "poisson-ratio": ("poisson_ratio", "dimensionless"),
}

#: graph settings of the original ``predict.py``
RADIUS = 8.0
MAX_NUM_NBR = 12
DMIN = 0.0
STEP = 0.2

#: name of the graph-settings flag that selects :func:`cgcnn_neighbor_list`
COMPAT_FIELD = "cgcnn_compat"

SOURCE = "original CGCNN checkpoint"


# --------------------------------------------------------------------------------------
# reading the original file
# --------------------------------------------------------------------------------------


@dataclass
class OriginalCheckpoint:
    """The parts of an original CGCNN checkpoint the importer uses.

    Attributes:
        path: the file.
        sha256: its sha256.
        state_dict: original parameter names -> tensors.
        args: the training arguments (plain dict).
        mean, std: the target normaliser.
        task: ``"regression"`` or ``"classification"``.
        atom_fea_len, n_conv, h_fea_len, n_h: architecture.
        epoch, best_mae_error: training record (informational).
    """

    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    args: dict[str, Any]
    mean: float
    std: float
    task: str
    atom_fea_len: int
    n_conv: int
    h_fea_len: int
    n_h: int
    epoch: int | None = None
    best_mae_error: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def orig_atom_fea_len(self) -> int:
        """Width of the atom-feature table the checkpoint was trained with."""
        return int(self.state_dict["embedding.weight"].shape[1])

    @property
    def nbr_fea_len(self) -> int:
        """Number of Gaussian distance features (41 for 0..8 A in steps of 0.2 A)."""
        return int(self.state_dict["convs.0.fc_full.weight"].shape[1]) - 2 * self.atom_fea_len


def _plain(x: Any) -> Any:
    """Plain Python data (numpy scalars and arrays become floats and lists)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool, type(None))):
        return x
    return str(x)


def released_file_globals() -> list:
    """The only non-tensor types the released CGCNN files hold, for the weights-only unpickler.

    The semi-metal classifier stores ``best_mae_error`` as a numpy float64 scalar, pickled as
    ``numpy.core.multiarray.scalar(numpy.dtype('float64'), <bytes>)``; everything else in the
    released files is tensors, dicts, lists, strings and numbers. Nothing else is allowed.
    """
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar

    return [
        (scalar, "numpy.core.multiarray.scalar"),  # the name numpy 1.x pickled
        (scalar, "numpy._core.multiarray.scalar"),  # the name numpy 2.x pickles
        np.dtype,
        np.dtypes.Float64DType,
    ]


#: what to do about a refused file, in the refusal message
TRUST_REMEDY = (
    "if you know where this file comes from and trust it, rerun with --trust-file "
    "(matxfer import-cgcnn) or trust=True (read_original_checkpoint), which lets the file "
    "run code on this machine"
)


def read_original_checkpoint(path: str | Path, trust: bool = False) -> OriginalCheckpoint:
    """Read and check an original CGCNN ``*.pth.tar`` file.

    The file is read with ``torch.load(weights_only=True)`` and the few numpy types of the
    released files (:func:`released_file_globals`); a file that holds anything else is
    refused, because unpickling arbitrary objects can run code from the file.

    Args:
        path: the file.
        trust: read with the full unpickler (``weights_only=False``): the file can then run
            any code. Only for files from a source you trust.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is refused, unreadable, not a CGCNN checkpoint or has
            inconsistent shapes (:class:`matxfer.checkpoint.CheckpointError` for the first
            two).
    """
    from matxfer.checkpoint import file_sha256, read_torch_file

    path = Path(path).expanduser()
    if trust:
        log.warning("%s: loading with the full unpickler (--trust-file): it can run code", path)
    blob = read_torch_file(
        path,
        "CGCNN checkpoint",
        allowed_globals=released_file_globals(),
        trust=trust,
        remedy=TRUST_REMEDY,
    )
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ValueError(f"{path} is not an original CGCNN checkpoint (no 'state_dict')")
    raw_args = blob.get("args", {})
    args = _plain(raw_args if isinstance(raw_args, dict) else vars(raw_args))
    sd = {k: v for k, v in blob["state_dict"].items() if isinstance(v, torch.Tensor)}
    for key in ("embedding.weight", "convs.0.fc_full.weight", "conv_to_fc.weight", "fc_out.weight"):
        if key not in sd:
            raise ValueError(f"{path} is not an original CGCNN checkpoint (no {key!r})")
    atom_fea_len = int(sd["embedding.weight"].shape[0])
    n_conv = len({int(m.group(1)) for k in sd if (m := re.match(r"convs\.(\d+)\.", k))})
    h_fea_len = int(sd["conv_to_fc.weight"].shape[0])
    n_h = 1 + len({int(m.group(1)) for k in sd if (m := re.match(r"fcs\.(\d+)\.", k))})
    for name, from_args, from_weights in (
        ("atom_fea_len", args.get("atom_fea_len"), atom_fea_len),
        ("n_conv", args.get("n_conv"), n_conv),
        ("h_fea_len", args.get("h_fea_len"), h_fea_len),
        ("n_h", args.get("n_h"), n_h),
    ):
        if from_args is not None and int(from_args) != from_weights:
            raise ValueError(
                f"{path}: args say {name}={from_args} but the weights have {from_weights}"
            )
    norm = blob.get("normalizer") or {"mean": 0.0, "std": 1.0}
    mean, std = float(_plain(norm["mean"])), float(_plain(norm["std"]))
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"{path}: invalid normaliser mean={mean}, std={std}")
    task = str(args.get("task", "regression"))
    n_out = int(sd["fc_out.weight"].shape[0])
    if task == "regression" and n_out != 1:
        raise ValueError(f"{path}: regression checkpoint with {n_out} outputs")
    best = blob.get("best_mae_error")
    return OriginalCheckpoint(
        path=path,
        sha256=file_sha256(path),
        state_dict=sd,
        args=args,
        mean=mean,
        std=std,
        task=task,
        atom_fea_len=atom_fea_len,
        n_conv=n_conv,
        h_fea_len=h_fea_len,
        n_h=n_h,
        epoch=int(_plain(blob["epoch"])) if blob.get("epoch") is not None else None,
        best_mae_error=float(_plain(best)) if best is not None else None,
    )


def target_from_filename(path: str | Path) -> tuple[str, str] | None:
    """(target name, units) of a released checkpoint file name, or None if unknown."""
    name = Path(path).name
    for suffix in (".pth.tar", ".pth", ".tar", ".pt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return TARGETS.get(name)


# --------------------------------------------------------------------------------------
# neighbour lists of the original code
# --------------------------------------------------------------------------------------


def cgcnn_compat_graph(structure, settings, material_id: str = "", featurizer=None):
    """A matxfer crystal graph with the original CGCNN neighbour list
    (:func:`matxfer.data.graphs.structure_to_graph` with ``cgcnn_compat=True``).

    Raises:
        ValueError: ``settings.max_neighbors`` is None, a line graph is asked for, or
            featurizer problems.
    """
    from dataclasses import replace

    from matxfer.data.graphs import structure_to_graph

    kwargs = {} if featurizer is None else {"featurizer": featurizer}
    return structure_to_graph(
        structure, replace(settings, cgcnn_compat=True), material_id=material_id, **kwargs
    )


def compat_supported() -> bool:
    """Whether matxfer's ``GraphSettings`` has the :data:`COMPAT_FIELD` flag (so that every
    graph built from an imported checkpoint's settings uses :func:`cgcnn_neighbor_list`)."""
    from matxfer.data.graphs import GraphSettings

    return COMPAT_FIELD in GraphSettings.__dataclass_fields__


def uses_compat_graphs(ckpt: dict) -> bool:
    """True for a checkpoint whose graphs must follow the original CGCNN neighbour lists."""
    return bool(ckpt.get("graph", {}).get(COMPAT_FIELD)) or bool(
        ckpt.get("provenance", {}).get(COMPAT_FIELD)
    )


# --------------------------------------------------------------------------------------
# the matxfer model
# --------------------------------------------------------------------------------------


def model_config_for(orig: OriginalCheckpoint, target: str) -> dict[str, Any]:
    """matxfer model config (``cgcnn`` backbone + ``scalar`` head) of an original checkpoint."""
    n_basis = round((RADIUS - DMIN) / STEP) + 1
    if orig.nbr_fea_len != n_basis:
        raise ValueError(
            f"{orig.path.name}: {orig.nbr_fea_len} distance features, expected {n_basis} "
            f"(Gaussians from {DMIN} to {RADIUS} A in steps of {STEP} A)"
        )
    return {
        "backbone": {
            "name": "cgcnn",
            "width": orig.atom_fea_len,
            "n_conv": orig.n_conv,
            "gaussian_start": DMIN,
            "gaussian_stop": RADIUS,
            "gaussian_step": STEP,
            "gaussian_width": None,
            "atom_feature_dim": orig.orig_atom_fea_len,
            "atom_features": "table",
        },
        "heads": {
            target: {
                "name": "scalar",
                "hidden": [orig.h_fea_len] * orig.n_h,
                "act": "softplus",
                "input_activation": True,
                "reduce": "mean",
            }
        },
    }


def map_state_dict(orig: OriginalCheckpoint, target: str) -> dict[str, torch.Tensor]:
    """Original parameter names -> matxfer ``PropertyModel`` names (normaliser excluded).

    ``embedding`` and ``convs.N.*`` go to ``backbone.*`` unchanged; ``conv_to_fc``,
    ``fcs.K`` and ``fc_out`` become ``heads.<target>.mlp.linears.0``, ``.K+1`` and
    ``.n_h``. Batch-norm layers saved by old torch have no ``num_batches_tracked``; it is
    set to 0 (it only matters for momentum-free running averages, which CGCNN does not use).

    Raises:
        ValueError: a parameter the mapping does not know.
    """
    out: dict[str, torch.Tensor] = {}
    head = f"heads.{target}.mlp.linears"
    for key, value in orig.state_dict.items():
        if key.startswith(("embedding.", "convs.")):
            out[f"backbone.{key}"] = value
        elif key.startswith("conv_to_fc."):
            out[f"{head}.0.{key.split('.', 1)[1]}"] = value
        elif key.startswith("fcs."):
            _, k, rest = key.split(".", 2)
            out[f"{head}.{int(k) + 1}.{rest}"] = value
        elif key.startswith("fc_out."):
            out[f"{head}.{orig.n_h}.{key.split('.', 1)[1]}"] = value
        else:
            raise ValueError(f"{orig.path.name}: unexpected parameter {key!r}")
    for key in list(out):
        if key.endswith(".running_mean"):
            nbt = key[: -len("running_mean")] + "num_batches_tracked"
            out.setdefault(nbt, torch.tensor(0, dtype=torch.long))
    return out


def build_imported_model(orig: OriginalCheckpoint, target: str, units: str):
    """The matxfer ``PropertyModel`` carrying an original checkpoint's weights (eval mode).

    Returns:
        ``(model, tasks)``.
    """
    from matxfer.models.registry import build_model
    from matxfer.tasks import SCALAR, Task

    tasks = {target: Task(target, SCALAR, None, units)}
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the original weights are float32
    try:
        model = build_model(model_config_for(orig, target), tasks)
    finally:
        torch.set_default_dtype(old)
    sd = map_state_dict(orig, target)
    norm = model.normalizers[target]
    sd[f"normalizers.{target}.mean"] = torch.tensor(orig.mean, dtype=norm.mean.dtype)
    sd[f"normalizers.{target}.std"] = torch.tensor(orig.std, dtype=norm.std.dtype)
    if hasattr(norm, "count"):
        n_train = orig.args.get("train_size")
        sd[f"normalizers.{target}.count"] = torch.tensor(int(n_train or 1), dtype=norm.count.dtype)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{orig.path.name} does not map onto matxfer's cgcnn + scalar model: missing "
            f"{list(missing)[:6]}, unexpected {list(unexpected)[:6]}"
        )
    model.eval()
    return model, tasks


def graph_settings_dict(featurizer) -> dict[str, Any]:
    """Graph settings of an imported checkpoint (those of the original ``predict.py``)."""
    from matxfer.data.graphs import GraphSettings

    graph = GraphSettings(
        cutoff=RADIUS,
        max_neighbors=MAX_NUM_NBR,
        fallback_k=MAX_NUM_NBR,
        line_graph=False,
        atom_features=featurizer.spec,
        keep_shell=False,  # the original keeps exactly max_num_nbr neighbours
    ).to_dict()
    if compat_supported():
        graph[COMPAT_FIELD] = True
    return graph


def import_cgcnn(
    path: str | Path,
    atom_init: str | Path,
    out: str | Path,
    target: str | None = None,
    units: str | None = None,
    trust: bool = False,
) -> Path:
    """Convert an original CGCNN checkpoint into a matxfer checkpoint.

    Args:
        path: the original ``*.pth.tar``.
        atom_init: the ``atom_init.json`` element table it was trained with (stored inside
            the new checkpoint).
        out: the matxfer checkpoint to write.
        target: target (task) name; default from the file name (:data:`TARGETS`).
        units: target units; default from the file name.
        trust: read ``path`` with the full unpickler, which can run code from the file
            (see :func:`read_original_checkpoint`).

    Returns:
        The written path.

    Raises:
        ValueError: classification checkpoints, unknown file names without ``target`` and
            ``units``, a table whose width does not match the weights, or weights that do
            not map onto the matxfer model.
    """
    from matxfer.checkpoint import build_checkpoint, file_sha256, load_checkpoint, save_checkpoint
    from matxfer.data.atom_features import AtomFeaturizer

    orig = read_original_checkpoint(path, trust=trust)
    if orig.task != "regression":
        raise ValueError(
            f"{orig.path.name} is a {orig.task!r} checkpoint; only regression checkpoints "
            "map onto matxfer's scalar head"
        )
    guess = target_from_filename(orig.path)
    if target is None or units is None:
        if guess is None:
            raise ValueError(
                f"cannot tell the target of {orig.path.name!r} from its name (known: "
                f"{sorted(TARGETS)}); pass --target and --units"
            )
        target = target or guess[0]
        units = guess[1] if units is None else units
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", target):
        raise ValueError(f"target name {target!r} must be an identifier (letters, digits, _)")
    atom_init = Path(atom_init).expanduser()
    featurizer = AtomFeaturizer.from_table(atom_init)
    if featurizer.dim != orig.orig_atom_fea_len:
        raise ValueError(
            f"atom table {atom_init} has {featurizer.dim} columns but {orig.path.name} was "
            f"trained on {orig.orig_atom_fea_len}"
        )
    model, tasks = build_imported_model(orig, target, units)
    provenance = {
        "source": SOURCE,
        "source_file": orig.path.name,
        "source_sha256": orig.sha256,
        "atom_init_file": atom_init.name,
        "atom_init_sha256": file_sha256(atom_init),
        "recipe": "import",
        COMPAT_FIELD: True,
        "original": {
            "args": orig.args,
            "epoch": orig.epoch,
            "best_mae_error": orig.best_mae_error,
            "normalizer": {"mean": orig.mean, "std": orig.std},
        },
        "command": f"matxfer import-cgcnn {orig.path.name} --atom-init {atom_init.name}",
    }
    ckpt = build_checkpoint(
        model,
        tasks,
        graph_settings_dict(featurizer),
        featurizer.to_state(),
        split=None,
        provenance=provenance,
        metrics={},
        config={},
    )
    written = save_checkpoint(ckpt, out)
    load_checkpoint(written)  # must read back with weights_only=True
    if not compat_supported():
        log.warning(
            "graph settings of this matxfer have no %r flag: graphs built from %s through "
            "the generic code use matxfer's neighbour lists, not the original CGCNN ones "
            "(use matxfer.pretrained.cgcnn_import.CompatPredictor for exact parity)",
            COMPAT_FIELD,
            written,
        )
    log.info("imported %s -> %s (%s, %s)", orig.path.name, written, target, units)
    return written


# --------------------------------------------------------------------------------------
# prediction with the original neighbour lists
# --------------------------------------------------------------------------------------


def _predictor_base():
    from matxfer.predict import Predictor

    return Predictor


class CompatPredictor(_predictor_base()):
    """A :class:`matxfer.predict.Predictor` whose graphs use :func:`cgcnn_neighbor_list`.

    ``CompatPredictor.from_checkpoint(path)`` loads any matxfer checkpoint; meant for
    imported CGCNN checkpoints (exact parity with the original code).
    """

    def graph(self, structure, name: str = ""):
        from matxfer.data.records import check_structure

        check_structure(name or structure.composition.reduced_formula, structure)
        return cgcnn_compat_graph(
            structure, self.settings, material_id=name, featurizer=self.featurizer
        )


def compare_with_reference(
    ckpt: str | Path, reference_dir: str | Path, model: str, compat: bool = True
) -> dict[str, Any]:
    """Predict the reference CIFs and compare with the original code's numbers.

    Args:
        ckpt: an imported checkpoint.
        reference_dir: folder with ``cifs/`` and ``<model>.csv`` (columns ``material_id,
            prediction``).
        model: the released file name or its stem (``band-gap.pth.tar`` or ``band-gap``).
        compat: build graphs with the original neighbour lists (:class:`CompatPredictor`);
            False uses the generic :class:`~matxfer.predict.Predictor`.

    Returns:
        ``{"n", "max_abs_dev", "mean_abs_dev", "worst"}``.

    Raises:
        FileNotFoundError: the reference CSV or a CIF is missing.
    """
    import csv

    from pymatgen.core import Structure

    from matxfer.predict import Predictor

    stem = Path(model).name
    for suffix in (".pth.tar", ".csv"):
        stem = stem.removesuffix(suffix)
    ref_dir = Path(reference_dir)
    table = ref_dir / f"{stem}.csv"
    if not table.is_file():
        raise FileNotFoundError(f"no reference predictions {table}")
    with open(table, newline="") as fh:
        ref = {row["material_id"]: float(row["prediction"]) for row in csv.DictReader(fh)}
    pred = (CompatPredictor if compat else Predictor).from_checkpoint(ckpt)
    (task,) = list(pred.tasks)
    ids = sorted(ref)
    structures = []
    for mid in ids:
        cif = ref_dir / "cifs" / f"{mid}.cif"
        if not cif.is_file():
            raise FileNotFoundError(f"reference structure {cif} missing")
        structures.append(Structure.from_file(str(cif)))
    results = pred.predict_structures(structures, ids)
    devs = {mid: abs(r[task] - ref[mid]) for mid, r in zip(ids, results)}
    worst = max(devs, key=devs.get)
    return {
        "n": len(devs),
        "max_abs_dev": devs[worst],
        "mean_abs_dev": float(np.mean(list(devs.values()))),
        "worst": worst,
    }
