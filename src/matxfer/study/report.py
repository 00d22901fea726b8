"""Study report: mean ± std tables, ratio to scratch, winners, and PNG plots.

The report says what the data says: a recipe "helps" at a size only when its mean test error
is below scratch's by more than the two standard errors combined; otherwise the difference
is called within noise, and a recipe worse than scratch is reported as such.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: the headline metric of each kind of target, then secondary ones shown in the report
PRIMARY = ("mae_voigt", "mae")
SECONDARY = ("fnorm_rel", "fnorm", "ewt25", "ewt10", "nz_ewt25", "ncs_fnorm_rel",
             "forbidden_exact_zero", "k_vrh_mae", "g_vrh_mae", "log10_k_vrh_mae", "mean_eig_mae", "eij_max_mae", "rmse", "r2")


def _primary_metric(df: pd.DataFrame, label: str) -> str | None:
    for m in PRIMARY:
        if f"{label}.{m}" in df.columns and df[f"{label}.{m}"].notna().any():
            return f"{label}.{m}"
    return None


def _labels_of(df: pd.DataFrame) -> list[str]:
    labels = []
    for c in df.columns:
        if "." in c and c.split(".", 1)[1] in ("n",):
            labels.append(c.split(".", 1)[0])
    return labels


def _fmt(mean: float, std: float, n: int) -> str:
    if not np.isfinite(mean):
        return "–"
    digits = max(2, 3 - int(math.floor(math.log10(abs(mean)))) - 1) if mean != 0 else 3
    digits = min(digits, 5)
    s = f"{mean:.{digits}f}"
    if n > 1 and np.isfinite(std):
        s += f" ± {std:.{digits}f}"
    return s


def summarise(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, std and count of ``metric`` per (recipe, size)."""
    g = df.groupby(["recipe", "size"])[metric]
    return g.agg(["mean", "std", "count"]).reset_index()


def verdict(mean_r: float, se_r: float, mean_s: float, se_s: float) -> str:
    diff = mean_r - mean_s
    noise = math.sqrt(se_r**2 + se_s**2) if np.isfinite(se_r) and np.isfinite(se_s) else 0.0
    if noise > 0 and abs(diff) <= 2 * noise:
        return "within noise"
    return "better" if diff < 0 else "worse"


def _plot_learning_curves(df, metric, target, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(df, metric)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for recipe, sub in s.groupby("recipe"):
        sub = sub.sort_values("size")
        ax.errorbar(sub["size"], sub["mean"], yerr=sub["std"].fillna(0), marker="o", capsize=3, label=recipe)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training-set size")
    ax.set_ylabel(f"test {metric.split('.', 1)[1]}")
    ax.set_title(f"{target}: learning curves")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"learning_curve_{target}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_bars(df, metric, target, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(df, metric)
    sizes = sorted(s["size"].unique())
    recipes = list(dict.fromkeys(df["recipe"]))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(recipes) * len(sizes) / 2), 4))
    width = 0.8 / max(1, len(sizes))
    x = np.arange(len(recipes))
    for i, n in enumerate(sizes):
        sub = s[s["size"] == n].set_index("recipe").reindex(recipes)
        ax.bar(x + i * width, sub["mean"], width, yerr=sub["std"].fillna(0), capsize=2, label=f"n={n}")
    ax.set_xticks(x + width * (len(sizes) - 1) / 2)
    ax.set_xticklabels(recipes, rotation=30, ha="right")
    ax.set_ylabel(f"test {metric.split('.', 1)[1]}")
    ax.set_title(f"{target}: per recipe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"bars_{target}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _voigt_flat(x) -> np.ndarray:
    from matxfer.tensors import cartesian_to_voigt

    a = np.asarray(x, dtype=float)
    if a.ndim == 0:
        return a.reshape(1)
    if a.shape in ((3, 3), (3, 3, 3), (3, 3, 3, 3)):
        return np.asarray(cartesian_to_voigt(a)).ravel()
    return a.ravel()


def _plot_parity(run_dir: Path, label: str, title: str, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = run_dir / "test_predictions.json"
    if not f.is_file():
        return None
    blob = json.loads(f.read_text()).get(label)
    if not blob or not blob["true"]:
        return None
    p = np.concatenate([_voigt_flat(x) for x in blob["pred"]])
    t = np.concatenate([_voigt_flat(x) for x in blob["true"]])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(t, p, s=6, alpha=0.5)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("DFT (test)")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = out / f"parity_{label}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def reference_section(df: pd.DataFrame, ref: dict[str, Any]) -> list[str]:
    """Published numbers beside ours.

    ``ref`` is the study's ``reference`` mapping: ``source`` (text), ``target`` (a study
    target name), ``metric`` (e.g. ``mae``), ``label`` (optional, the task label; default the
    target's only label), ``values`` ({recipe: published number}); other keys are shown as
    they are.
    """
    lines = ["## Published reference numbers", ""]
    if ref.get("source"):
        lines += [f"Source: {ref['source']}", ""]
    values = ref.get("values") or {}
    target = ref.get("target")
    sub = df[df["target"] == target] if target is not None and len(df) else df.iloc[:0]
    col = None
    if len(sub) and ref.get("metric"):
        label = ref.get("label")
        if label is None:
            labels = [lb for lb in _labels_of(sub) if sub[f"{lb}.n"].notna().any()]
            label = labels[0] if len(labels) == 1 else None
        if label is not None and f"{label}.{ref['metric']}" in sub.columns:
            col = f"{label}.{ref['metric']}"
    if values:
        size = int(sub["size"].max()) if len(sub) else None
        head = f"ours (test {ref.get('metric', '')}, n={size}, mean ± std)" if col else "ours"
        lines += [f"| recipe | {head} | published | ours / published |", "|---|---|---|---|"]
        for recipe, pub in values.items():
            rows = sub[(sub["recipe"] == recipe) & (sub["size"] == size)] if col else sub.iloc[:0]
            if len(rows):
                m, sd = float(rows[col].mean()), float(rows[col].std())
                ours = _fmt(m, sd, len(rows))
                ratio = f"{m / float(pub):.3f}" if float(pub) else "–"
            else:
                ours, ratio = "–", "–"
            lines.append(f"| {recipe} | {ours} | {pub} | {ratio} |")
        lines.append("")
        if col and "scratch" in values:
            lines += claims_section(sub[sub["size"] == size], col, values)
    rest = {k: v for k, v in ref.items() if k not in ("source", "target", "metric", "label", "values")}
    if rest:
        lines += ["```", json.dumps(rest, indent=1), "```", ""]
    return lines


def _mean_se(values: pd.Series) -> tuple[float, float]:
    v = values.dropna()
    m = float(v.mean()) if len(v) else float("nan")
    se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return m, se


def claims_section(sub: pd.DataFrame, col: str, values: dict[str, Any]) -> list[str]:
    """Per published recipe: does ours move the same way relative to scratch?

    The published number of each recipe against the published scratch gives the claim's
    direction (transfer helped or hurt); ours is judged with :func:`verdict` over seeds. A claim
    is *reproduced* when ours goes the same way beyond the noise, *contradicted* when it goes
    the other way beyond the noise, and *not resolved* when ours is within noise of scratch.
    """
    pub_s = float(values["scratch"])
    ms, ses = _mean_se(sub.loc[sub["recipe"] == "scratch", col])
    if not (np.isfinite(ms) and pub_s):
        return []
    lines = [
        "Published claims against ours: each recipe's direction relative to scratch (published: one "
        "run; ours: mean over seeds, judged against twice the combined standard error).",
        "",
        "| recipe | published / scratch | ours / scratch | ours vs scratch | claim |",
        "|---|---|---|---|---|",
    ]
    counts = {"reproduced": 0, "contradicted": 0, "not resolved": 0}
    for recipe, pub in values.items():
        if recipe == "scratch":
            continue
        mr, ser = _mean_se(sub.loc[sub["recipe"] == recipe, col])
        if not np.isfinite(mr):
            continue
        pub_dir = "better" if float(pub) < pub_s else "worse"
        ours = verdict(mr, ser, ms, ses)
        claim = "not resolved" if ours == "within noise" else ("reproduced" if ours == pub_dir else "contradicted")
        counts[claim] += 1
        lines.append(f"| {recipe} | {float(pub) / pub_s:.3f} ({pub_dir}) | {mr / ms:.3f} | {ours} | {claim} |")
    lines += ["", "Claims: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".", ""]
    return lines


def run_section(out: Path, df_all: pd.DataFrame) -> list[str]:
    """Hardware, commands and wall time of the sittings recorded in ``sittings.json``."""
    from matxfer.machine import summary
    from matxfer.study.runner import read_sittings

    lines = ["## How this study was run", ""]
    sittings = read_sittings(out)
    machines = list(dict.fromkeys(summary(s["machine"]) for s in sittings if isinstance(s.get("machine"), dict)))
    if machines:
        lines += ["Hardware: " + "; ".join(machines) + ".", ""]
    if sittings:
        lines += ["| started (UTC) | command | processes x threads | cells run | elapsed (min) |",
                  "|---|---|---|---|---|"]
        for st in sittings:
            lines.append(
                f"| {st.get('started', '?')} | `{st.get('command', '?')}`{' (' + st['note'] + ')' if st.get('note') else ''} | {st.get('jobs', '?')} x "
                f"{st.get('threads', '?')} | {st.get('cells_run', '?')} | {float(st.get('elapsed_s', 0)) / 60:.1f} |"
            )
        lines.append("")
    ok = df_all[df_all["status"] == "ok"] if "status" in df_all else df_all
    times = pd.to_numeric(ok.get("wall_time_s", pd.Series(dtype=float)), errors="coerce").fillna(0.0)
    is_pre = ok["kind"] == "pretrain" if "kind" in ok else pd.Series(False, index=ok.index)
    elapsed = sum(float(st.get("elapsed_s", 0)) for st in sittings)
    text = (f"Wall time: {elapsed / 60:.1f} min over {len(sittings)} sitting(s). " if sittings else
            "No sittings were recorded for this study directory. ")
    text += (f"The runs' own training times add up to {times.sum() / 60:.1f} min (pretraining "
             f"{times[is_pre].sum() / 60:.1f} min, fine-tuning cells {times[~is_pre].sum() / 60:.1f} min); "
             "with several processes they overlap.")
    return lines + [text, ""]


def write_report(out: str | Path, study=None) -> Path:
    """Write ``report.md`` and plots from ``results.csv`` in the study directory."""
    out = Path(out)
    df_all = pd.read_csv(out / "results.csv")
    pre = df_all[df_all["kind"] == "pretrain"] if "kind" in df_all else df_all.iloc[:0]
    df = df_all[(df_all.get("kind") != "pretrain")]
    failed = df[df["status"] != "ok"] if "status" in df else df.iloc[:0]
    df = df[df["status"] == "ok"] if "status" in df else df
    # pretraining rows have no size, so pandas reads the column as float
    df = df.assign(size=df["size"].astype(int)) if len(df) else df
    lines = [f"# Study report: {getattr(study, 'name', out.name)}", ""]
    if study is not None and study.notes:
        lines += [study.notes.strip(), ""]
    n_runs = len(df)
    lines.append(
        f"{n_runs} fine-tuning runs finished, {len(failed)} failed; seeds per cell: "
        f"{df.groupby(['target', 'recipe', 'size']).size().max() if n_runs else 0}. "
        "Errors are test-set means ± standard deviation over seeds, in physical units. "
        "Lower is better. 'better'/'worse' means the difference from scratch exceeds twice the "
        "combined standard error of the two means; otherwise it is 'within noise'."
    )
    lines.append("")
    if len(pre):
        lines.append("Pretraining runs (shared by all cells): " + ", ".join(
            f"{r.recipe} ({r.wall_time_s:.0f} s)" for r in pre.itertuples()))
        lines.append("")
    for target, dft in df.groupby("target", sort=False):
        labels = [lb for lb in _labels_of(dft) if dft.get(f"{lb}.n", pd.Series(dtype=float)).notna().any()]
        for label in labels:
            metric = _primary_metric(dft, label)
            if metric is None:
                continue
            s = summarise(dft, metric)
            sizes = sorted(s["size"].unique())
            recipes = list(dict.fromkeys(dft["recipe"]))
            lines.append(f"## {target}: {label} (test {metric.split('.', 1)[1]})")
            lines.append("")
            lines.append("| recipe | " + " | ".join(f"n={n}" for n in sizes) + " |")
            lines.append("|---|" + "---|" * len(sizes))
            for r in recipes:
                cells = []
                for n in sizes:
                    row = s[(s["recipe"] == r) & (s["size"] == n)]
                    cells.append(_fmt(row["mean"].iloc[0], row["std"].iloc[0], int(row["count"].iloc[0])) if len(row) else "–")
                lines.append(f"| {r} | " + " | ".join(cells) + " |")
            metric_name = metric.split(".", 1)[1]
            ok = dft[dft["status"] == "ok"] if "status" in dft else dft
            for base, title in (("zero", "zero predictor"), ("train_mean", "training-mean predictor")):
                col = f"{label}.baselines.{base}.{metric_name}"
                if col not in ok.columns or not ok[col].notna().any():
                    continue
                cells = []
                for n in sizes:
                    v = ok.loc[ok["size"] == n, col].dropna()
                    cells.append(_fmt(v.mean(), v.std(), len(v)) if len(v) else "–")
                lines.append(f"| *{title}* | " + " | ".join(cells) + " |")
            lines.append("")
            if "scratch" in recipes:
                lines.append("Ratio to scratch (mean error / scratch mean error; < 1 means transfer helped):")
                lines.append("")
                lines.append("| recipe | " + " | ".join(f"n={n}" for n in sizes) + " |")
                lines.append("|---|" + "---|" * len(sizes))
                summary_words = []
                for r in recipes:
                    if r == "scratch":
                        continue
                    cells = []
                    for n in sizes:
                        a = s[(s["recipe"] == r) & (s["size"] == n)]
                        b = s[(s["recipe"] == "scratch") & (s["size"] == n)]
                        if len(a) and len(b) and b["mean"].iloc[0] > 0:
                            ratio = a["mean"].iloc[0] / b["mean"].iloc[0]
                            se_a = a["std"].iloc[0] / math.sqrt(a["count"].iloc[0]) if a["count"].iloc[0] > 1 else float("nan")
                            se_b = b["std"].iloc[0] / math.sqrt(b["count"].iloc[0]) if b["count"].iloc[0] > 1 else float("nan")
                            v = verdict(a["mean"].iloc[0], se_a, b["mean"].iloc[0], se_b)
                            cells.append(f"{ratio:.3f} ({v})")
                            summary_words.append((r, n, ratio, v))
                        else:
                            cells.append("–")
                    lines.append(f"| {r} | " + " | ".join(cells) + " |")
                lines.append("")
                lines.append("Winner per size: " + "; ".join(
                    f"n={n}: {s[s['size'] == n].sort_values('mean')['recipe'].iloc[0]}" for n in sizes
                ))
                lines.append("")
                better = [f"{r} at n={n} ({ratio:.2f}x)" for r, n, ratio, v in summary_words if v == "better"]
                worse = [f"{r} at n={n} ({ratio:.2f}x)" for r, n, ratio, v in summary_words if v == "worse"]
                if better:
                    lines.append("Transfer helped: " + ", ".join(better) + ".")
                if worse:
                    lines.append("Transfer hurt (worse than scratch): " + ", ".join(worse) + ".")
                if not better:
                    lines.append("No recipe beat scratch beyond the seed-to-seed noise for this target.")
                lines.append("")
            # secondary metrics at the largest size
            sec = [f"{label}.{m}" for m in SECONDARY if f"{label}.{m}" in dft.columns and dft[f"{label}.{m}"].notna().any()]
            if sec:
                nmax = sizes[-1]
                sub = dft[dft["size"] == nmax]
                lines.append(f"Other test metrics at n={nmax} (mean over seeds):")
                lines.append("")
                lines.append("| recipe | " + " | ".join(c.split(".", 1)[1] for c in sec) + " | wall time (s) | trainable params |")
                lines.append("|---|" + "---|" * (len(sec) + 2))
                for r in recipes:
                    rr = sub[sub["recipe"] == r]
                    if not len(rr):
                        continue
                    vals = [f"{rr[c].mean():.4g}" for c in sec]
                    lines.append(f"| {r} | " + " | ".join(vals) + f" | {rr['wall_time_s'].mean():.0f} | {int(rr['trainable_params'].mean()) if 'trainable_params' in rr else '–'} |")
                lines.append("")
            plots = []
            try:
                plots.append(_plot_learning_curves(dft, metric, f"{target}_{label}", out))
                plots.append(_plot_bars(dft, metric, f"{target}_{label}", out))
                best = s[s["size"] == sizes[-1]].sort_values("mean")["recipe"].iloc[0]
                cand = dft[(dft["recipe"] == best) & (dft["size"] == sizes[-1])].sort_values(metric)
                if len(cand):
                    row = cand.iloc[0]
                    run_dir = out / "cells" / target / best.replace(":", "-") / f"n{int(row['size'])}" / f"seed{int(row['seed'])}"
                    pp = _plot_parity(run_dir, label, f"{target} {label}: {best}, n={int(row['size'])}, seed {int(row['seed'])}", out)
                    if pp:
                        plots.append(pp)
            except Exception as exc:  # a plot must never lose the tables
                log.warning("plotting %s failed: %s", target, exc)
            for p in plots:
                lines.append(f"![{p.stem}]({p.name})")
            lines.append("")
    if study is not None and study.reference:
        lines += reference_section(df, study.reference)
    lines += run_section(out, df_all)
    if len(failed):
        lines.append("## Failed runs")
        lines.append("")
        for r in failed.itertuples():
            lines.append(f"- {r.target} {r.recipe} n={r.size} seed={r.seed}: {getattr(r, 'error', '')}")
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def load_results(out: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(out) / "results.csv")


def ratio_table(df: pd.DataFrame, target: str, metric: str) -> dict[str, Any]:
    """{recipe: {size: ratio to scratch}} for one target and metric column."""
    s = summarise(df[(df["target"] == target) & (df["status"] == "ok")], metric)
    out: dict[str, Any] = {}
    for r in s["recipe"].unique():
        out[r] = {}
        for n in sorted(s["size"].unique()):
            a = s[(s["recipe"] == r) & (s["size"] == n)]["mean"]
            b = s[(s["recipe"] == "scratch") & (s["size"] == n)]["mean"]
            if len(a) and len(b):
                out[r][int(n)] = float(a.iloc[0] / b.iloc[0])
    return out
