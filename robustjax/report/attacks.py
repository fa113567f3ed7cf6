"""Report section: accuracy vs Linf eps under FGSM, PGD, APGD-CE and Square.

Robust accuracy = fraction of examples that are classified correctly and stay so under the
attack (an example misclassified when clean counts as broken at every eps). FGSM's eps sweep
shares one gradient; PGD and APGD run every eps from one compiled program
(``robustjax.attacks.search.eps_sweep``). Square is attacks-b's score-based attack; it is
skipped (and said so) if ``robustjax.attacks.square`` is missing.

The eps grid is MNIST's for gray images and 1/255 ... 8/255 for RGB (``ctx.eps`` overrides
it); ImageNet-scale inputs get fewer steps and queries (``LARGE``). Each attack's row is stored
as it finishes (``ctx.cached``), so an interrupted report resumes after the last one.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import runfiles
from robustjax.attacks import gradient as G
from robustjax.attacks import search as S
from robustjax.report.base import (
    ReportContext,
    Section,
    imagenet_scale,
    markdown_table,
    section_key,
)

APGD = importlib.import_module("robustjax.attacks.apgd")  # the package re-exports apgd()

FULL = dict(n=256, eps=(0.05, 0.1, 0.2, 0.3), pgd_steps=20, apgd_steps=100, square_queries=1000)
QUICK = dict(n=16, eps=(0.1, 0.3), pgd_steps=5, apgd_steps=10, square_queries=50)
# ImageNet-scale inputs: one gradient of EfficientNet-Lite0 costs ~100x the MNIST CNN's.
LARGE = dict(n=64, eps=(1 / 255, 2 / 255, 4 / 255, 8 / 255), pgd_steps=10, apgd_steps=20,
             square_queries=200)
RGB_EPS = {"full": (1 / 255, 2 / 255, 4 / 255, 8 / 255), "quick": (2 / 255, 8 / 255)}


def settings(ctx: ReportContext) -> dict:
    """The section's settings for this model and data (eps from ``ctx.eps`` when given)."""
    if ctx.quick:
        s = dict(QUICK)
    elif imagenet_scale(ctx.model.spec):
        s = dict(LARGE)
    else:
        s = dict(FULL)
    if ctx.model.spec.input_shape[-1] == 3 and not imagenet_scale(ctx.model.spec):
        s["eps"] = RGB_EPS["quick" if ctx.quick else "full"]
    if ctx.eps is not None:
        s["eps"] = tuple(ctx.eps)
    return s


def eps_label(e: float) -> str:
    """``2/255`` for small multiples of 1/255, else ``%g``."""
    k = e * 255
    return f"{round(k)}/255" if e < 0.05 and abs(k - round(k)) < 1e-4 else f"{e:g}"


def _square():
    try:
        return importlib.import_module("robustjax.attacks.square")
    except ImportError:
        return None


def section(ctx: ReportContext) -> Section:
    s = settings(ctx)
    n = min(s["n"], len(ctx.x))
    x, y = jnp.asarray(ctx.x[:n], jnp.float32), jnp.asarray(ctx.y[:n], jnp.int32)
    f, params = ctx.model.apply_fn, ctx.model.params
    key = section_key(ctx, "attacks")
    eps = jnp.asarray(s["eps"], jnp.float32)
    clean_ok = np.asarray(jnp.argmax(f(params, x), -1) == y)
    sweep = S.eps_sweep  # eager: "auto" runs one compiled attack per eps on CPU
    strategy = "auto"

    def robust(success):  # [n_eps, n] -> [n_eps]
        return (clean_ok[None] & ~np.asarray(success)).mean(axis=1)

    stored = {"n": n, **s}

    def row(name, compute):  # one attack over the eps grid, stored as it finishes
        return np.asarray(ctx.cached("attacks", name, stored, lambda: robust(compute())))

    rows = {}
    rows["FGSM"] = row("FGSM", lambda: sweep(G.fgsm, f, params, x, y, key,
                                             G.FGSMConfig(eps=0.1), eps).success)
    pgd_cfg = G.PGDConfig(eps=0.1, step_size=0.025, steps=s["pgd_steps"])
    rows[f"PGD-{s['pgd_steps']}"] = row(f"PGD-{s['pgd_steps']}", lambda: sweep(
        G.pgd, f, params, x, y, jax.random.fold_in(key, 1), pgd_cfg, eps,
        strategy=strategy).success)
    apgd_cfg = APGD.APGDConfig(eps=0.1, steps=s["apgd_steps"])
    name = f"APGD-CE ({s['apgd_steps']} it.)"
    rows[name] = row(name, lambda: sweep(
        APGD.apgd, f, params, x, y, jax.random.fold_in(key, 2), apgd_cfg, eps,
        strategy=strategy).success)
    notes = []
    sq = _square()
    if sq is not None:
        def square_success():
            out = []
            for i, e in enumerate(s["eps"]):
                cfg = sq.SquareConfig(eps=float(e), n_queries=s["square_queries"])
                run = jax.jit(lambda p, x, y, k, cfg=cfg: sq.square(f, p, x, y, k, cfg))
                out.append(np.asarray(run(params, x, y, jax.random.fold_in(key, 10 + i)).success))
            return np.stack(out)

        name = f"Square ({s['square_queries']} queries)"
        rows[name] = row(name, square_success)
    else:
        notes.append("Square: not available (robustjax.attacks.square missing).")

    clean = float(clean_ok.mean())
    header = ["attack"] + [f"eps={eps_label(e)}" for e in s["eps"]]
    table = [["clean"] + [clean] * len(s["eps"])]
    table += [[name] + [float(v) for v in vals] for name, vals in rows.items()]
    figures = _plot(ctx, s["eps"], clean, rows)
    md = (f"Robust accuracy (Linf, pixel units) on {n} test images of "
          f"`{ctx.model.spec.name}`; higher is more robust.\n\n"
          + markdown_table(header, table, ".3f")
          + ("\n\n" + "\n".join(notes) if notes else ""))
    data = {"n": n, "eps": [float(e) for e in s["eps"]], "clean": clean,
            "robust_accuracy": {k: [float(v) for v in vals] for k, vals in rows.items()},
            "settings": {k: v for k, v in s.items() if k != "eps"}}
    return Section("attacks", "Adversarial robustness: accuracy vs eps", data, md, figures)


def _plot(ctx, eps, clean, rows):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([0] + list(eps), [clean] * (len(eps) + 1), "k--", label="clean")
    for name, vals in rows.items():
        ax.plot([0] + list(eps), [clean] + list(vals), marker="o", label=name)
    ax.set_xlabel("Linf eps")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = "attacks_accuracy_vs_eps.png"
    runfiles.save_figure(fig, ctx.out_dir / name, dpi=100)
    plt.close(fig)
    return (name,)

