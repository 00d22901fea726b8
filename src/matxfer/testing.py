"""A symmetry harness for models: rotations, inversion, translations, permutations, supercells.

Anyone who adds a backbone or a head can check that a built
:class:`~matxfer.models.base.PropertyModel` transforms its predictions as physics says::

    from matxfer.testing import assert_symmetric
    report = assert_symmetric(model)                  # float64, tight tolerance
    report = assert_symmetric(model, dtype=torch.float32)   # looser tolerance

Every prediction (:meth:`PropertyModel.predict`, physical units, Cartesian tensors) is
checked according to its kind, read from the model's tasks and heads
(:func:`output_kinds`):

============================  ============================================================
output                        law under ``x -> R x + t``, a permutation, a supercell
============================  ============================================================
scalar (per crystal)          invariant; a supercell of ``n`` cells multiplies an extensive
                              output (``head.extensive``, e.g. ``reduce: sum``) by ``n``
rank-k tensor (per crystal)   ``T_{a..} -> R_{ai} .. T_{i..}`` on every index, for proper
                              and improper ``R`` (odd-rank polar tensors change sign under
                              the inversion); supercells as scalars
forces / per-atom tensors     each atom's vector or tensor rotates with ``R``, follows its
                              atom under a permutation, and a supercell repeats it on every
                              image of the atom
============================  ============================================================

The checks (:data:`CHECKS`):

- ``rotation``: a random proper rotation ``R`` (det +1) applied to ``pos`` and ``cell``;
- ``improper``: ``-R`` (a rotation times the inversion, det -1). Skipped with a note when the
  backbone declares ``respects_inversion = False`` (e.g. SevenNet-0's ``parity="natural"``
  features or a chiral ``local-frame``), which only promise proper rotations;
- ``translation``: a random shift of every atom, with the atoms wrapped back into the cell
  (so periodic images change);
- ``permutation``: a random order of the atoms;
- ``supercell``: a ``2 x 1 x 1`` repetition of every structure (``1 x 2 x 1`` for the second,
  ...), so neighbour lists and pooling over more atoms are exercised.

The structures should have no symmetry and no equidistant neighbours (the default
:func:`generic_structures`): then every check is a strict test, and models that break ties
between equidistant neighbours by their order (``max_neighbors`` cuts, local frames) are
not punished for a legitimate ambiguity.

Comparisons: ``|y' - law(y)| <= atol + rtol * max|y|`` per output; float64 uses
``rtol=1e-8, atol=1e-10``, float32 ``rtol=2e-4, atol=1e-6`` (:data:`TOLERANCES`). An output
that is zero on every structure is a failure too (``vacuous``): the checks would prove
nothing about it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pymatgen.core import Lattice, Structure
from torch import Tensor

from matxfer import keys as K
from matxfer.kinds import kind_of
from matxfer.tasks import FORCES, SCALAR

#: names of the checks, in the order they run
CHECKS: tuple[str, ...] = ("rotation", "improper", "translation", "permutation", "supercell")
#: (rtol, atol) per dtype
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-8, 1e-10),
    torch.float32: (2e-4, 1e-6),
}


@dataclass(frozen=True)
class OutputKind:
    """How one prediction transforms.

    Attributes:
        rank: 0 (scalar), 1 (vector), 2-4 (Cartesian tensor).
        per_atom: one value per atom (forces, Born charges) instead of per crystal.
        extensive: a per-crystal value that grows with the number of atoms (sum pooling).
        parity: ``+1`` for polar (true) tensors, ``-1`` for axial ones (an extra
            ``det(R)`` under improper rotations).
    """

    rank: int
    per_atom: bool = False
    extensive: bool = False
    parity: int = 1


@dataclass
class CheckResult:
    """One comparison: a check, an output, its error and the tolerance it was held to."""

    check: str
    output: str
    error: float
    tolerance: float
    passed: bool
    note: str = ""


@dataclass
class SymmetryReport:
    """Every comparison of a harness run (:func:`check_symmetries`)."""

    dtype: torch.dtype
    results: list[CheckResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """One line per comparison (failures first), then the skipped checks."""
        rows = sorted(self.results, key=lambda r: r.passed)
        lines = [
            f"{'ok  ' if r.passed else 'FAIL'} {r.check:<12} {r.output:<24} "
            f"error {r.error:.3g} (tolerance {r.tolerance:.3g}){' ' + r.note if r.note else ''}"
            for r in rows
        ]
        lines += [f"skip {s}" for s in self.skipped]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# structures and transformations
# ----------------------------------------------------------------------------------------


def generic_structures() -> list[Structure]:
    """Two small cells without symmetry (triclinic, 3 species, no equidistant neighbours)."""
    a = Structure(
        Lattice.from_parameters(4.1, 4.6, 5.2, 77, 96, 109),
        ["Li", "Fe", "O", "O"],
        [[0.03, 0.07, 0.02], [0.48, 0.41, 0.55], [0.21, 0.69, 0.33], [0.77, 0.18, 0.71]],
    )
    b = Structure(
        Lattice.from_parameters(4.4, 4.9, 4.7, 84, 101, 93),
        ["Na", "Cl", "Mg", "O", "O"],
        [[0.01, 0.04, 0.06], [0.52, 0.47, 0.44], [0.27, 0.81, 0.62],
         [0.74, 0.23, 0.19], [0.36, 0.12, 0.83]],
    )
    return [a, b]


def random_rotation(seed: int = 0, proper: bool = True) -> Tensor:
    """A random orthogonal 3x3 matrix (float64) with det +1 (``proper``) or -1."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if not proper:
        q = -q  # a rotation times the inversion
    return torch.tensor(q, dtype=torch.float64)


def rotate_graph(graph, rot: Tensor):
    """A copy of a (batched) graph with ``pos`` and ``cell`` rotated: ``x -> R x``."""
    out = graph.clone()
    pos = graph[K.POSITIONS]
    cell = graph[K.CELL]
    out[K.POSITIONS] = pos @ rot.to(pos.dtype).T
    out[K.CELL] = cell @ rot.to(cell.dtype).T
    return out


def translated(structure: Structure, shift_cart: np.ndarray) -> Structure:
    """Every atom shifted by ``shift_cart`` (Angstrom) and wrapped into the cell."""
    frac = structure.lattice.get_fractional_coords(structure.cart_coords + shift_cart) % 1.0
    return Structure(structure.lattice, structure.species, frac)


def permuted(structure: Structure, perm: Sequence[int] | np.ndarray) -> Structure:
    """The atoms in the order ``perm`` (new atom ``k`` is old atom ``perm[k]``)."""
    return Structure(
        structure.lattice,
        [structure.species[i] for i in perm],
        structure.frac_coords[list(perm)],
    )


def supercell(structure: Structure, reps: tuple[int, int, int]) -> tuple[Structure, np.ndarray]:
    """A ``reps`` repetition and, for each of its atoms, the index of the original atom."""
    reps_arr = np.asarray(reps, dtype=int)
    lattice = Lattice(structure.lattice.matrix * reps_arr[:, None])
    species, frac, origin = [], [], []
    for image in np.ndindex(*reps):
        for i, site in enumerate(structure):
            species.append(site.specie)
            frac.append((site.frac_coords + np.asarray(image)) / reps_arr)
            origin.append(i)
    return Structure(lattice, species, frac), np.asarray(origin)


def transform_cartesian(t: Tensor, rot: Tensor, parity: int = 1) -> Tensor:
    """``[N, 3, ..., 3]`` tensors with ``rot`` applied to every index (``[N]`` unchanged).

    ``parity=-1`` (axial) multiplies by ``det(rot)`` as well.
    """
    rot = rot.to(t.dtype)
    for axis in range(1, t.ndim):
        t = torch.movedim(torch.tensordot(t, rot, dims=([axis], [1])), -1, axis)
    if parity < 0 and torch.linalg.det(rot.to(torch.float64)) < 0:
        t = -t
    return t


# ----------------------------------------------------------------------------------------
# output kinds
# ----------------------------------------------------------------------------------------


def _task_field(task: Any, name: str, default: Any = None) -> Any:
    if isinstance(task, dict):
        return task.get(name, default)
    return getattr(task, name, default)


def output_kinds(model) -> dict[str, OutputKind]:
    """The :class:`OutputKind` of every head of a :class:`PropertyModel`.

    Read from the task (``kind``, ``formula``) and the head (``per_atom``, ``extensive``;
    a head may set ``output_parity = -1`` for an axial tensor).

    Raises:
        ValueError: a head without a task, or a task kind this harness does not know.
    """
    out = {}
    for name, head in model.heads.items():
        task = model.tasks.get(name)
        if task is None:
            raise ValueError(f"head {name!r} has no task: cannot tell how its output transforms")
        kind = _task_field(task, "kind", SCALAR)
        formula = _task_field(task, "formula")
        parity = int(getattr(head, "output_parity", 1))
        per_atom = bool(getattr(head, "per_atom", False))
        if kind not in (SCALAR, FORCES) and not formula:
            raise ValueError(f"task {name!r} of kind {kind!r} has no formula")
        rank = kind_of(kind).rank(formula)
        if kind_of(kind).per_atom and not per_atom:
            raise ValueError(f"task {name!r} is per atom ({kind!r}) but its head pools")
        extensive = bool(getattr(head, "extensive", False)) and not per_atom
        out[name] = OutputKind(rank=rank, per_atom=per_atom, extensive=extensive, parity=parity)
    return out


# ----------------------------------------------------------------------------------------
# the harness
# ----------------------------------------------------------------------------------------


def _default_settings(model):
    from matxfer.data.graphs import GraphSettings

    d = dict(getattr(type(model.backbone), "graph_defaults", {}))
    cutoff = getattr(model.backbone, "cutoff", None)
    if isinstance(cutoff, (int, float)) and not isinstance(cutoff, bool):
        d["cutoff"] = float(cutoff)
    return GraphSettings(**{k: v for k, v in d.items() if k in GraphSettings.__dataclass_fields__})


def _graphs(structures: Iterable[Structure], settings, dtype: torch.dtype):
    from torch_geometric.data import Batch

    from matxfer.data.graphs import structure_to_graph

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        graphs = [structure_to_graph(s, settings) for s in structures]
    finally:
        torch.set_default_dtype(old)
    return Batch.from_data_list(graphs)


def _predict(model, batch) -> dict[str, Tensor]:
    conservative = any(getattr(h, "conservative", False) for h in model.heads.values())
    if conservative:  # -dE/dpos needs autograd; predictions are detached
        out = model.predict(batch)
    else:
        with torch.no_grad():
            out = model.predict(batch)
    return {k: v.detach() for k, v in out.items()}


def _counts(batch) -> Tensor:
    return torch.bincount(batch[K.BATCH], minlength=int(batch.num_graphs))


def check_symmetries(
    model,
    structures: Sequence[Structure] | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    settings=None,
    checks: Iterable[str] = CHECKS,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    kinds: dict[str, OutputKind] | None = None,
) -> SymmetryReport:
    """Run the symmetry checks on a model and return every comparison.

    Args:
        model: a :class:`~matxfer.models.base.PropertyModel` (a copy is cast to ``dtype``
            and put in eval mode; the model itself is not changed).
        structures: small structures without symmetry (default :func:`generic_structures`).
        dtype: ``torch.float64`` (tight tolerance) or ``torch.float32`` (looser).
        settings: :class:`~matxfer.data.graphs.GraphSettings` of the graphs (default: the
            backbone's ``graph_defaults`` with its ``cutoff``).
        checks: a subset of :data:`CHECKS`.
        rtol, atol: tolerances (default :data:`TOLERANCES` of ``dtype``).
        seed: seed of the random rotation, shift and permutation.
        kinds: override :func:`output_kinds` (for heads whose kind cannot be read).

    Returns:
        A :class:`SymmetryReport`; see :func:`assert_symmetric` for the raising form.

    Raises:
        ValueError: an unknown check name or an output kind that cannot be read.
    """
    checks = tuple(checks)
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown symmetry check(s) {unknown}; valid: {list(CHECKS)}")
    default_rtol, default_atol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    structures = list(structures) if structures is not None else generic_structures()
    if not structures:
        raise ValueError("check_symmetries needs at least one structure")
    kinds = dict(kinds) if kinds is not None else output_kinds(model)
    settings = settings if settings is not None else _default_settings(model)
    model = copy.deepcopy(model).to(dtype).eval()
    report = SymmetryReport(dtype=dtype)

    ref_batch = _graphs(structures, settings, dtype)
    ref = _predict(model, ref_batch)
    scale = {k: float(v.abs().max()) if v.numel() else 0.0 for k, v in ref.items()}
    for name in kinds:
        if name not in ref:
            raise ValueError(f"the model predicts no {name!r}; outputs: {sorted(ref)}")
    for name in kinds:
        if not math.isfinite(scale[name]) or scale[name] <= atol:
            report.results.append(
                CheckResult("reference", name, scale[name], atol, False,
                            "vacuous: the output is zero (or not finite) on every structure")
            )

    def compare(check: str, got: dict[str, Tensor], want: dict[str, Tensor], note: str = ""):
        for name in kinds:
            tol = atol + rtol * scale[name]
            a, b = got[name], want[name]
            if a.shape != b.shape:
                report.results.append(CheckResult(
                    check, name, math.inf, tol, False,
                    f"shape {tuple(a.shape)} != expected {tuple(b.shape)}"))
                continue
            err = float((a - b).abs().max()) if a.numel() else 0.0
            ok = math.isfinite(err) and err <= tol
            report.results.append(CheckResult(check, name, err, tol, ok, note))

    respects_inversion = bool(getattr(model.backbone, "respects_inversion", True))
    for check in checks:
        if check in ("rotation", "improper"):
            proper = check == "rotation"
            if not proper and not respects_inversion:
                report.skipped.append(
                    f"improper: backbone {type(model.backbone).__name__} declares "
                    "respects_inversion=False (proper rotations only)"
                )
                continue
            rot = random_rotation(seed, proper=proper)
            got = _predict(model, rotate_graph(ref_batch, rot))
            want = {
                n: transform_cartesian(ref[n], rot, kinds[n].parity) if kinds[n].rank else ref[n]
                for n in kinds
            }
            compare(check, got, want, f"det {1 if proper else -1}")
        elif check == "translation":
            rng = np.random.default_rng(seed + 1)
            moved = [translated(s, rng.normal(scale=2.0, size=3)) for s in structures]
            got = _predict(model, _graphs(moved, settings, dtype))
            compare(check, got, ref)
        elif check == "permutation":
            rng = np.random.default_rng(seed + 2)
            perms = [rng.permutation(len(s)) for s in structures]
            got = _predict(model, _graphs(
                [permuted(s, p) for s, p in zip(structures, perms)], settings, dtype))
            offsets = np.concatenate([[0], np.cumsum([len(s) for s in structures])[:-1]])
            index = torch.as_tensor(np.concatenate([p + o for p, o in zip(perms, offsets)]))
            want = {n: ref[n].index_select(0, index) if kinds[n].per_atom else ref[n]
                    for n in kinds}
            compare(check, got, want)
        elif check == "supercell":
            cells, origins = [], []
            for k, s in enumerate(structures):
                reps = [1, 1, 1]
                reps[k % 3] = 2
                sc, origin = supercell(s, (reps[0], reps[1], reps[2]))
                cells.append(sc)
                origins.append(origin)
            batch = _graphs(cells, settings, dtype)
            got = _predict(model, batch)
            offsets = np.concatenate([[0], np.cumsum([len(s) for s in structures])[:-1]])
            index = torch.as_tensor(np.concatenate([o + off for o, off in zip(origins, offsets)]))
            n_cells = (_counts(batch) / _counts(ref_batch)).to(dtype)
            want = {}
            for n, kind in kinds.items():
                y = ref[n]
                if kind.per_atom:
                    want[n] = y.index_select(0, index)
                elif kind.extensive:
                    want[n] = y * n_cells.view(-1, *([1] * (y.ndim - 1)))
                else:
                    want[n] = y
            compare(check, got, want, "2 cells")
    return report


def assert_symmetric(model, structures: Sequence[Structure] | None = None, **kwargs) -> SymmetryReport:
    """:func:`check_symmetries`, raising an ``AssertionError`` that lists every failure.

    Returns:
        The report (all comparisons passed).
    """
    report = check_symmetries(model, structures, **kwargs)
    if not report.passed:
        raise AssertionError(
            f"symmetry checks failed ({report.dtype}):\n{report.summary()}"
        )
    return report


__all__ = [
    "CHECKS",
    "TOLERANCES",
    "CheckResult",
    "OutputKind",
    "SymmetryReport",
    "assert_symmetric",
    "check_symmetries",
    "generic_structures",
    "output_kinds",
    "random_rotation",
    "rotate_graph",
    "supercell",
    "transform_cartesian",
]
