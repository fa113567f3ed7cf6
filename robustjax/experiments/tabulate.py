"""From per-run metrics to the ablation table and plot.

``summarize(records, variant_names, columns)``: per variant and column the mean and the sample
standard deviation over seeds (``ddof=1``; 0 for one seed) and ``delta`` = mean minus the full
recipe's mean. ``markdown`` renders every run x metric as ``mean ± std (Δ)`` in percent;
``contribution`` of a component is ``full - without`` (positive: the component helps, for an
error column it is negated so that positive still means "helps"). ``plot`` draws one panel per
metric with each variant's difference from the full recipe (a dot with a seed-spread bar).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from robustjax import runfiles
from robustjax.experiments.evaluate import LOWER_IS_BETTER

LABELS = {"clean": "clean acc", "pgd": "PGD acc", "apgd": "APGD-CE acc", "autoattack": "AutoAttack acc",
          "mce": "mean corruption err", "retention": "retention", "spatial": "spatial acc",
          "ibp": "IBP verified", "crown": "CROWN verified"}


def summarize(records: Sequence[Mapping], variant_names: Sequence[str],
              columns: Sequence[str]) -> dict:
    """-> ``{variant: {column: {"mean", "std", "n", "delta"}}}`` (``delta`` vs ``full``)."""
    out: dict = {}
    for v in variant_names:
        rows = [r for r in records if r["variant"] == v]
        out[v] = {}
        for c in columns:
            vals = np.asarray([r["metrics"][c] for r in rows
                               if r["metrics"].get(c) is not None], np.float64)
            n = len(vals)
            out[v][c] = {"mean": float(vals.mean()) if n else None,
                         "std": float(vals.std(ddof=1)) if n > 1 else 0.0, "n": n}
    full = out.get(variant_names[0], {})
    for v in variant_names:
        for c in columns:
            m, f = out[v][c]["mean"], full[c]["mean"]
            out[v][c]["delta"] = None if m is None or f is None else m - f
    return out


def _signed(v):
    s = f"{100 * v:+.1f}"
    return "0.0" if s in ("+0.0", "-0.0") else s


def _pct(v):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def markdown(title: str, summary: Mapping, columns: Sequence[str], notes: Sequence[str] = ()
             ) -> str:
    """The ablation table: every variant x metric, ``mean ± std (Δ vs full)``, in percent."""
    variants = list(summary)
    lines = [f"# Ablation: {title}", ""]
    lines += [f"{n}" for n in notes]
    if notes:
        lines.append("")
    lines.append("| run | " + " | ".join(LABELS.get(c, c) for c in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for v in variants:
        cells = []
        for c in columns:
            s = summary[v][c]
            cell = f"{_pct(s['mean'])} ± {_pct(s['std'])}"
            if v != variants[0] and s["delta"] is not None:
                cell += f" ({_signed(s['delta'])})"
            cells.append(cell)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "Values in percent: mean ± sample std over seeds; (Δ) is the difference from "
              "the full recipe in percentage points. Mean corruption error: lower is better.",
              ""]
    contrib = contributions(summary, columns)
    if contrib:
        lines += ["## What each component contributes", "",
                  "full recipe minus the run without it, in points (positive: the component "
                  "helps; for the corruption error, lower error counts as positive)", ""]
        lines.append("| component | " + " | ".join(LABELS.get(c, c) for c in columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for name, vals in contrib.items():
            lines.append(f"| {name} | " + " | ".join(
                "–" if vals[c] is None else _signed(vals[c]) for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def contributions(summary: Mapping, columns: Sequence[str]) -> dict:
    """``{component: {column: full - without}}`` for the leave-one-out variants ``-name``."""
    out = {}
    for v, row in summary.items():
        if v.startswith("-") and "," not in v:
            out[v[1:]] = {}
            for c in columns:
                d = row[c]["delta"]
                out[v[1:]][c] = None if d is None else (d if c in LOWER_IS_BETTER else -d)
    return out


def plot(path, title: str, summary: Mapping, columns: Sequence[str]) -> None:
    """A dot plot per metric: each variant's difference from the full recipe (points), with
    the seed standard deviation as a bar; written to ``path`` (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    variants = [v for v in summary if v != next(iter(summary))]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns),
                                                       0.5 * len(variants) + 1.8),
                             sharey=True, squeeze=False)
    ys = np.arange(len(variants))
    for ax, c in zip(axes[0], columns):
        d = [summary[v][c]["delta"] for v in variants]
        d = np.asarray([np.nan if x is None else 100 * x for x in d])
        err = np.asarray([100 * summary[v][c]["std"] for v in variants])
        colors = ["tab:red" if (x < 0) != (c in LOWER_IS_BETTER) else "tab:green" for x in d]
        ax.barh(ys, d, color=colors, alpha=0.35, height=0.6)
        ax.errorbar(d, ys, xerr=err, fmt="o", color="black", capsize=3, ms=4)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(LABELS.get(c, c), fontsize=9)
        ax.set_xlabel("Δ vs full (points)", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels(variants)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"{title}: difference from the full recipe (mean ± std over seeds)",
                 fontsize=10)
    fig.tight_layout()
    runfiles.save_figure(fig, path, dpi=110)
    plt.close(fig)
