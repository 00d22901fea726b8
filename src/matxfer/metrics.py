"""Metrics in physical units, per target.

Scalars: ``n``, ``mae``, ``rmse``, ``r2``. Tensors: ``n``, ``mae_voigt`` (mean |error| over
Voigt components), ``fnorm_rel`` (mean ||pred - true||_F / ||true||_F over entries with a
non-zero true tensor), and derived quantities: elastic ``k_vrh_mae``, ``g_vrh_mae``,
``log10_k_vrh_mae``, ``log10_g_vrh_mae``, ``frac_pos_def``; dielectric ``mean_eig_mae``;
piezo ``eij_max_mae``. Literature metrics of tensors (GMTNet and its successors), on the
stored layout (dielectric 3x3, piezo Voigt 3x6, elastic Voigt 6x6): ``fnorm`` (mean
Frobenius norm of the error), ``fnorm_label`` (mean Frobenius norm of the labels, so that
``fnorm / fnorm_label`` is a scale-free error), ``ewt25`` / ``ewt10`` / ``ewt5`` (fraction
of crystals whose error norm is within 25 / 10 / 5 % of their label norm). For piezo the
same metrics on the crystals with a non-zero label (prefix ``nz_``) and on the
non-centrosymmetric crystals (prefix ``ncs_``) when the caller says which those are. Forces (per-atom vectors): ``n`` (atoms), ``mae`` (per component),
``rmse``, ``mae_norm`` (mean |F_pred - F_true|) and ``cos_mean`` (mean cosine between
predicted and true forces on atoms with |F_true| > 0.05 eV/A).
"""

from __future__ import annotations

import math

import numpy as np

#: predicted moduli below this are clipped before taking log10 (GPa)
LOG_FLOOR_GPA = 1.0

#: EwT thresholds (fraction of the label norm)
EWT_THRESHOLDS = (0.25, 0.10, 0.05)

#: a tensor label whose largest component is below this (label units) counts as zero
NONZERO_TOL = 1e-6


#: formulas whose datasets store the Voigt form (piezo 3x6, elastic 6x6); others stay Cartesian
_VOIGT_STORED = ("ijk=ikj", "ijkl=jikl=klij")


def stored_layout(t: np.ndarray, formula: str) -> np.ndarray:
    """Tensors ``[n, 3, ...]`` in the layout datasets store them: 3x3 (rank 2, kept
    Cartesian), Voigt 3x6 (piezo) or Voigt 6x6 (elastic); other formulas unchanged."""
    from matxfer.tensors import cartesian_to_voigt

    if formula in _VOIGT_STORED:
        return np.stack([cartesian_to_voigt(x) for x in t]) if len(t) else t
    return t


def _norm_metrics(pred_l: np.ndarray, true_l: np.ndarray, prefix: str = "") -> dict[str, float]:
    """fnorm, fnorm_label and EwT of tensors already in the stored layout."""
    n = len(true_l)
    if n == 0:
        return {f"{prefix}n": 0}
    axes = tuple(range(1, true_l.ndim))
    en = np.sqrt(((pred_l - true_l) ** 2).sum(axis=axes))
    tn = np.sqrt((true_l**2).sum(axis=axes))
    out: dict[str, float] = {
        f"{prefix}n": n,
        f"{prefix}fnorm": float(en.mean()),
        f"{prefix}fnorm_label": float(tn.mean()),
    }
    safe = np.where(tn > 0, tn, np.inf)
    for thr in EWT_THRESHOLDS:
        out[f"{prefix}ewt{round(thr * 100)}"] = float(np.mean(en <= thr * safe))
    return out


def scalar_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    pred = np.asarray(pred, dtype=float).ravel()
    true = np.asarray(true, dtype=float).ravel()
    n = len(true)
    if n == 0:
        return {"n": 0}
    err = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum())
    return {
        "n": n,
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
    }


def elastic_derived(c: np.ndarray) -> dict[str, float]:
    """K_VRH, G_VRH (GPa) and positive definiteness of one (3,3,3,3) tensor."""
    from matxfer.tensors import elastic_moduli, is_positive_definite

    m = elastic_moduli(c)
    return {"k_vrh": m["k_vrh"], "g_vrh": m["g_vrh"], "pos_def": bool(is_positive_definite(c))}


def tensor_metrics(
    pred: np.ndarray,
    true: np.ndarray,
    formula: str,
    centrosymmetric: np.ndarray | None = None,
    forbidden: np.ndarray | None = None,
) -> dict[str, float]:
    """Metrics of a batch of Cartesian tensors ``[n, 3, ...]`` of one target.

    Args:
        pred, true: ``[n, 3, ...]`` Cartesian tensors in physical units.
        formula: index symmetry of the target.
        centrosymmetric: optional ``[n]`` bool, which crystals have an inversion centre;
            piezo metrics are then also given on the others (``ncs_`` prefix).
        forbidden: optional bool mask in the stored layout (``[n, 3, 6]`` for piezo...),
            the components each crystal's point group forbids; adds ``n_forbidden`` and
            ``forbidden_exact_zero`` (the share of them predicted exactly 0).
    """
    from matxfer.tensors import cartesian_to_voigt, eij_max, mean_eigenvalue

    pred = np.asarray(pred, dtype=float)
    true = np.asarray(true, dtype=float)
    n = len(true)
    if n == 0:
        return {"n": 0}
    out: dict[str, float] = {"n": n}
    if formula in ("ij=ji", "ijk=ikj", "ijkl=jikl=klij"):
        pv = np.stack([cartesian_to_voigt(p) for p in pred])
        tv = np.stack([cartesian_to_voigt(t) for t in true])
        out["mae_voigt"] = float(np.abs(pv - tv).mean())
    else:
        out["mae"] = float(np.abs(pred - true).mean())
    if formula in _VOIGT_STORED:  # the stored layout is the Voigt form computed above
        pl, tl = pv, tv
    else:
        pl, tl = stored_layout(pred, formula), stored_layout(true, formula)
    out.update(_norm_metrics(pl, tl))
    if forbidden is not None:
        fb = np.asarray(forbidden, dtype=bool)
        out["n_forbidden"] = int(fb.sum())
        out["forbidden_exact_zero"] = float(np.mean(pl[fb] == 0)) if fb.any() else float("nan")
    if formula == "ijk=ikj":
        nonzero = np.abs(tl.reshape(n, -1)).max(axis=1) > NONZERO_TOL
        out.update(_norm_metrics(pl[nonzero], tl[nonzero], "nz_"))
        if centrosymmetric is not None:
            ncs = ~np.asarray(centrosymmetric, dtype=bool)
            out.update(_norm_metrics(pl[ncs], tl[ncs], "ncs_"))
            out["ncs_fnorm_rel"] = _fnorm_rel(pred[ncs], true[ncs])
            cs = ~ncs
            if cs.any():  # symmetry forbids every component: the share predicted exactly 0
                out["cs_exact_zero"] = float(np.mean(np.abs(pl[cs].reshape(int(cs.sum()), -1)).max(axis=1) == 0))
    out["fnorm_rel"] = _fnorm_rel(pred, true)
    axes = tuple(range(1, pred.ndim))
    out["n_nonzero"] = int((np.sqrt((true**2).sum(axis=axes)) > 1e-12).sum())
    if formula == "ijkl=jikl=klij":
        dp = [elastic_derived(p) for p in pred]
        dt = [elastic_derived(t) for t in true]
        for key in ("k_vrh", "g_vrh"):
            p = np.array([d[key] for d in dp])
            t = np.array([d[key] for d in dt])
            ok = np.isfinite(p) & np.isfinite(t)
            out[f"{key}_mae"] = float(np.abs(p[ok] - t[ok]).mean()) if ok.any() else float("nan")
            okl = ok & (t > 0)
            lp = np.log10(np.clip(p[okl], LOG_FLOOR_GPA, None))
            lt = np.log10(t[okl])
            out[f"log10_{key}_mae"] = float(np.abs(lp - lt).mean()) if okl.any() else float("nan")
        out["frac_pos_def"] = float(np.mean([d["pos_def"] for d in dp]))
    elif formula == "ij=ji":
        out["mean_eig_mae"] = float(
            np.mean([abs(mean_eigenvalue(p) - mean_eigenvalue(t)) for p, t in zip(pred, true)])
        )
    elif formula == "ijk=ikj":
        out["eij_max_mae"] = float(np.mean([abs(eij_max(p) - eij_max(t)) for p, t in zip(pred, true)]))
    return out


def _fnorm_rel(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean ``||pred - true||_F / ||true||_F`` (Cartesian) over crystals with a non-zero label."""
    if len(true) == 0:
        return float("nan")
    axes = tuple(range(1, true.ndim))
    tn = np.sqrt((true**2).sum(axis=axes))
    en = np.sqrt(((pred - true) ** 2).sum(axis=axes))
    nz = tn > 1e-12
    return float((en[nz] / tn[nz]).mean()) if nz.any() else float("nan")


def baseline_metrics(
    true: np.ndarray,
    formula: str,
    train_mean: np.ndarray | None,
    centrosymmetric: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the two trivial predictors on the same crystals: ``zero`` (every tensor 0)
    and ``train_mean`` (the mean training label, in the labels' frame), when given."""
    true = np.asarray(true, dtype=float)
    out = {"zero": tensor_metrics(np.zeros_like(true), true, formula, centrosymmetric)}
    if train_mean is not None and len(true):
        mean = np.broadcast_to(np.asarray(train_mean, dtype=float), true.shape)
        out["train_mean"] = tensor_metrics(mean, true, formula, centrosymmetric)
    return out


def force_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Metrics of per-atom force vectors ``[n_atoms, 3]`` (all crystals concatenated)."""
    pred = np.asarray(pred, dtype=float).reshape(-1, 3)
    true = np.asarray(true, dtype=float).reshape(-1, 3)
    n = len(true)
    if n == 0:
        return {"n": 0}
    err = pred - true
    tn = np.linalg.norm(true, axis=1)
    pn = np.linalg.norm(pred, axis=1)
    big = (tn > 0.05) & (pn > 0)
    cos = (pred[big] * true[big]).sum(1) / (pn[big] * tn[big]) if big.any() else np.array([])
    return {
        "n": n,
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "mae_norm": float(np.linalg.norm(err, axis=1).mean()),
        "cos_mean": float(cos.mean()) if cos.size else float("nan"),
    }


def finite_or_none(metrics: dict) -> dict:
    """Replace NaN/inf by None (in nested dicts too) so the dict is valid JSON."""
    out: dict = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out[k] = finite_or_none(v)
        elif isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        else:
            out[k] = v
    return out


def flatten_metrics(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics as one level of dotted keys (``baselines.zero.mae_voigt``)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten_metrics(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
