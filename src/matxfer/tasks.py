"""Tasks: what one head learns (target key, kind, formula, units, loss, weight)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from matxfer.kinds import kind_of

# the kind names, defined with the target table (imported from here by most modules)
from matxfer.targets import ATOM_TENSOR as ATOM_TENSOR
from matxfer.targets import FORCES as FORCES
from matxfer.targets import SCALAR as SCALAR
from matxfer.targets import TENSOR, target_spec

LOSSES = ("mse", "l1", "huber")
WEIGHTINGS = ("none", "relative")
PARAMETERIZATIONS = ("linear", "log_isotropic")


@dataclass(frozen=True)
class Task:
    """One prediction target.

    Attributes:
        name: the label key (e.g. ``elastic_tensor``, ``band_gap``).
        kind: ``scalar``, ``tensor`` (one Cartesian tensor per crystal), ``atom_tensor`` (one
            per atom) or ``forces`` (one Cartesian vector per atom).
        formula: index symmetry of a tensor (``ij=ji``, ``ijk=ikj``, ``ijkl=jikl=klij``, ``ij``).
        units: physical units of the label.
        weight: weight of this task in the summed loss.
        loss: ``mse``, ``l1`` or ``huber`` in normalised units. Tensors are compared in
            irreps space: ``mse`` is the mean squared component error; ``l1`` and ``huber``
            act on the Euclidean norm of each irrep block's error (one norm per ``2l+1``
            block), so every loss is independent of the crystal's orientation.
        weighting: ``none``, or ``relative`` (each crystal's loss divided by
            ``max(||y||, relative_floor)`` in normalised units: relative error).
        relative_floor: the floor of ``relative`` weighting.
        sign_agnostic: the loss of each crystal is ``min(L(p, y), L(p, -y))`` (a diagnostic
            for polar-axis orientation of odd-rank tensor labels).
        parameterization: ``linear`` (irreps of the tensor) or ``log_isotropic`` (log of the
            isotropic moduli and the anisotropy relative to them; dielectric and elastic
            tensors, see :class:`matxfer.normalize.LogIsotropicNormalizer`).
    """

    name: str
    kind: str
    formula: str | None = None
    units: str = ""
    weight: float = 1.0
    loss: str = "mse"
    weighting: str = "none"
    relative_floor: float = 0.1
    sign_agnostic: bool = False
    parameterization: str = "linear"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"task {self.name!r}: unknown loss {self.loss!r}; valid: {LOSSES}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"task {self.name!r}: unknown weighting {self.weighting!r}; valid: {WEIGHTINGS}"
            )
        if not self.relative_floor > 0:
            raise ValueError(
                f"task {self.name!r}: relative_floor must be > 0, got {self.relative_floor}"
            )
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"task {self.name!r}: unknown parameterization {self.parameterization!r}; "
                f"valid: {PARAMETERIZATIONS}"
            )
        if self.parameterization == "log_isotropic" and self.formula not in ("ij=ji", "ijkl=jikl=klij"):
            raise ValueError(
                f"task {self.name!r}: log_isotropic needs a dielectric (ij=ji) or elastic "
                f"(ijkl=jikl=klij) tensor, not {self.formula!r}"
            )
        if self.sign_agnostic and (self.kind != TENSOR or self.rank % 2 == 0):
            raise ValueError(
                f"task {self.name!r}: sign_agnostic applies to odd-rank crystal tensors only"
            )
        if self.weight < 0:
            raise ValueError(f"task {self.name!r}: weight must be >= 0, got {self.weight}")

    @property
    def rank(self) -> int:
        """Rank of one label (forces: 1; per-atom tensors: of each atom's tensor)."""
        return kind_of(self.kind).rank(self.formula)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return cls(**d)


def default_loss(kind: str) -> str:
    """Loss of a task whose config names none: ``mse`` for scalars and forces, ``l1`` for tensors.

    Tensor labels are heavy-tailed (dielectric constants near soft modes reach hundreds,
    most piezoelectric tensors are near zero); measured on ``petousis-dielectric-2017``
    (711 training tensors, same model and budget), ``l1`` gave a test ``mae_voigt`` of 5.0
    against 6.0 for ``mse``.
    """
    return kind_of(kind).default_loss


def make_task(
    target: str,
    weight: float = 1.0,
    loss: str | None = None,
    units: str | None = None,
    **options,
) -> Task:
    """The task for a label key, with kind/formula/units from :data:`matxfer.targets.TARGETS`.

    ``loss=None`` takes :func:`default_loss` of the task's kind; ``options`` are the other
    :class:`Task` fields (``weighting``, ``relative_floor``, ``sign_agnostic``,
    ``parameterization``).
    """
    spec = target_spec(target)
    loss = loss or default_loss(spec.kind)
    return Task(target, spec.kind, spec.formula, units or spec.units, weight, loss, **options)


def default_head(task: Task, backbone_is_equivariant: bool) -> dict:
    """Head config for a task when the run config names none (see :mod:`matxfer.kinds`)."""
    return kind_of(task.kind).default_head(task.formula, backbone_is_equivariant)
