"""Metrics in physical units, per target.

Scalars: ``n``, ``mae``, ``rmse``, ``r2``. Tensors: ``n``, ``mae_voigt`` (mean |error| over
Voigt components), ``fnorm_rel`` (mean ||pred - true||_F / ||true||_F over entries with a
non-zero true tensor), and derived quantities: elastic ``k_vrh_mae``, ``g_vrh_mae``,
``log10_k_vrh_mae``, ``log10_g_vrh_mae``, ``frac_pos_def``; dielectric ``mean_eig_mae``;
piezo ``eij_max_mae``. Forces (per-atom vectors): ``n`` (atoms), ``mae`` (per component),
``rmse``, ``mae_norm`` (mean |F_pred - F_true|) and ``cos_mean`` (mean cosine between
predicted and true forces on atoms with |F_true| > 0.05 eV/A).
"""

from __future__ import annotations

import math

import numpy as np

#: predicted moduli below this are clipped before taking log10 (GPa)
LOG_FLOOR_GPA = 1.0


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


def tensor_metrics(pred: np.ndarray, true: np.ndarray, formula: str) -> dict[str, float]:
    """Metrics of a batch of Cartesian tensors ``[n, 3, ...]`` of one target."""
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
    axes = tuple(range(1, pred.ndim))
    tn = np.sqrt((true**2).sum(axis=axes))
    en = np.sqrt(((pred - true) ** 2).sum(axis=axes))
    nz = tn > 1e-12
    out["fnorm_rel"] = float((en[nz] / tn[nz]).mean()) if nz.any() else float("nan")
    out["n_nonzero"] = int(nz.sum())
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
    """Replace NaN/inf by None so the dict is valid JSON."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()
    }
