"""Target kinds: what differs between a scalar, a crystal tensor, a per-atom tensor and forces.

Each kind (:data:`KINDS`, looked up with :func:`kind_of`) owns its label layout in a graph,
its normaliser, the space its loss compares in, its default loss and head, and how its
predictions are scored, so the rest of the package asks the kind instead of branching on
the kind's name. The kind of a label key comes from :data:`matxfer.targets.TARGETS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from matxfer.targets import ATOM_TENSOR, FORCES, SCALAR, TENSOR


class Kind:
    """Behaviour shared by the targets of one kind (subclasses fill it in).

    Attributes:
        name: the kind's name (``Task.kind``).
        per_atom: one label per atom (else one per crystal).
        default_loss: the loss when the run config names none.
    """

    name: ClassVar[str]
    per_atom: ClassVar[bool] = False
    default_loss: ClassVar[str] = "l1"

    def rank(self, formula: str | None) -> int:
        """Tensor rank of one label (per atom for per-atom kinds)."""
        return 0 if formula is None else len(formula.split("=")[0])

    def label_shape(self, n_atoms: int, formula: str | None) -> tuple[int, ...]:
        """Shape of the label stored in a graph (graph-level labels have a leading 1)."""
        return (1,) + (3,) * self.rank(formula)

    def graph_label(self, value: Any, n_atoms: int, formula: str | None,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The label tensor and its boolean mask for a graph; ``value=None``: absent (zeros,
        False mask, never read as zero)."""
        shape = self.label_shape(n_atoms, formula)
        present = value is not None
        val = (torch.as_tensor(np.asarray(value), dtype=dtype).reshape(shape) if present
               else torch.zeros(shape, dtype=dtype))
        rows = n_atoms if self.per_atom else 1
        return val, torch.full((rows,), present)

    def fit_values(self, values: Sequence[Any], dtype: torch.dtype) -> torch.Tensor:
        """The training labels stacked the way the kind's normaliser is fitted."""
        if self.per_atom:
            arr = np.concatenate([np.asarray(v, dtype=float) for v in values])
        else:
            arr = np.stack([np.asarray(v, dtype=float) for v in values])
        return torch.tensor(arr, dtype=dtype)

    def normalizer(self, formula: str | None, parameterization: str = "linear") -> torch.nn.Module:
        """A fresh normaliser: irreps of the tensor (``log_isotropic``: log-moduli)."""
        from matxfer.normalize import IrrepsNormalizer, LogIsotropicNormalizer

        if not formula:
            raise ValueError(f"a {self.name} target needs a formula")
        if parameterization == "log_isotropic":
            return LogIsotropicNormalizer(formula)
        return IrrepsNormalizer(formula)

    def normalized(self, norm: torch.nn.Module, y: torch.Tensor) -> torch.Tensor:
        """A physical-unit label in the normalised space the head predicts in."""
        return norm.normalize(norm.from_cartesian(y))  # type: ignore[operator]

    def default_head(self, formula: str | None, equivariant: bool) -> dict[str, Any]:
        """Head config for a target of this kind when the run config names none."""
        raise NotImplementedError

    def scored(self, pred: np.ndarray, label: np.ndarray) -> tuple[Any, Any]:
        """One graph's prediction and label (``label`` as stored in the graph) in the form
        :meth:`metrics` takes."""
        if self.per_atom:
            return pred, label
        return np.asarray(pred).reshape(label.shape[1:]), label[0]

    def metrics(self, preds: list, labels: list, formula: str | None, **extra) -> dict[str, Any]:
        """Metrics of a split's predictions against its labels (physical units)."""
        raise NotImplementedError


class ScalarKind(Kind):
    name = SCALAR
    default_loss = "mse"

    def fit_values(self, values, dtype):
        return torch.tensor(np.asarray(values, dtype=float), dtype=dtype)

    def graph_label(self, value, n_atoms, formula, dtype):
        present = value is not None
        return (torch.tensor([float(value) if present else 0.0], dtype=dtype),
                torch.tensor([present]))

    def normalizer(self, formula=None, parameterization="linear"):
        from matxfer.normalize import ScalarNormalizer

        return ScalarNormalizer()

    def normalized(self, norm, y):
        return norm.normalize(y)  # type: ignore[operator]

    def default_head(self, formula, equivariant):
        return {"name": "scalar"}

    def scored(self, pred, label):
        return float(np.ravel(pred)[0]), float(label[0])

    def metrics(self, preds, labels, formula, **extra):
        from matxfer.metrics import scalar_metrics

        return scalar_metrics(np.array(preds), np.array(labels))


class TensorKind(Kind):
    """One Cartesian tensor per crystal, predicted through its irreducible parts."""

    name = TENSOR

    def default_head(self, formula, equivariant):
        return {"name": "tensor" if equivariant else "edge-tensor", "formula": formula}

    def metrics(self, preds, labels, formula, centrosymmetric=None, forbidden=None, **extra):
        from matxfer.metrics import tensor_metrics

        return tensor_metrics(np.array(preds), np.array(labels), formula, centrosymmetric,
                              forbidden)


class AtomTensorKind(Kind):
    """One Cartesian tensor per atom (Born effective charges)."""

    name = ATOM_TENSOR
    per_atom = True

    def label_shape(self, n_atoms, formula):
        return (n_atoms,) + (3,) * self.rank(formula)

    def default_head(self, formula, equivariant):
        return {"name": "born"} if equivariant else {"name": "edge-atom-tensor"}

    def metrics(self, preds, labels, formula, **extra):
        from matxfer.metrics import tensor_metrics

        shape = (0,) + (3,) * self.rank(formula)
        pa = np.concatenate(preds) if preds else np.zeros(shape)
        ta = np.concatenate(labels) if labels else np.zeros(shape)
        return {**tensor_metrics(pa, ta, formula or "ij"), "n_structures": len(preds)}


class ForcesKind(Kind):
    """One Cartesian vector per atom."""

    name = FORCES
    per_atom = True
    default_loss = "mse"

    def rank(self, formula=None):
        return 1

    def label_shape(self, n_atoms, formula=None):
        return (n_atoms, 3)

    def normalizer(self, formula=None, parameterization="linear"):
        from matxfer.normalize import VectorNormalizer

        return VectorNormalizer()

    def normalized(self, norm, y):
        return norm.normalize(y)  # type: ignore[operator]

    def default_head(self, formula, equivariant):
        return {"name": "direct-forces"}

    def metrics(self, preds, labels, formula, **extra):
        from matxfer.metrics import force_metrics

        pa = np.concatenate(preds) if preds else np.zeros((0, 3))
        ta = np.concatenate(labels) if labels else np.zeros((0, 3))
        return {**force_metrics(pa, ta), "n_structures": len(preds)}


#: kind name -> its behaviour
KINDS: dict[str, Kind] = {k.name: k for k in (ScalarKind(), TensorKind(), AtomTensorKind(), ForcesKind())}


def kind_of(name: str) -> Kind:
    """The :class:`Kind` of a kind name (``Task.kind``)."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown target kind {name!r}; valid: {sorted(KINDS)}") from None


def attach_labels(graph, labels: Mapping[str, Any], tasks: Mapping[str, Any], copy: bool = True):
    """``graph`` with ``y_<task>`` and boolean ``m_<task>`` for every task, from ``labels``
    (label key -> value; absent keys are absent labels).

    Graph-level labels have a leading axis of 1 (so batching stacks them); per-atom labels
    are ``[n_atoms, ...]``. Absent labels are zeros with a False mask, never read as zero.
    ``copy=False`` sets them on ``graph`` itself (a graph just read from a store).
    """
    from matxfer.keys import label_key, mask_key

    g = graph.clone() if copy else graph
    dtype = torch.get_default_dtype()
    n = int(g.num_nodes)
    for name, task in tasks.items():
        val, mask = kind_of(task.kind).graph_label(labels.get(name), n, task.formula, dtype)
        g[label_key(name)] = val
        g[mask_key(name)] = mask
    return g
