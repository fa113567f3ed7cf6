"""Report section: certified robustness.

* verified accuracy vs Linf eps with IBP and CROWN for the model under test and for a small CNN
  trained with IBP (Gowal et al. 2018) on mnist5k (trained here and cached when missing);
* randomized smoothing (Cohen et al. 2019): certified accuracy vs L2 radius (fewer noise
  samples than the paper's N=100,000, stated in the text);
* CLEVER scores (Weng et al. 2018) of a few images (fewer gradient samples, stated).

Bounds are for small models (``small_model``: input at most 32x32x3, at most 2M parameters);
for a larger one (EfficientNet-Lite0 on ImageNet photos) the section says why it is skipped
instead. A layer the bound interpreter does not know is reported in the table, not raised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import checkpoint, data, runfiles
from robustjax.cache import cache_dir
from robustjax.certify import api, clever, smoothing
from robustjax.certify.interpreter import UnsupportedPrimitiveError
from robustjax.certify.training import train_certified
from robustjax.models.registry import MODELS, wrap
from robustjax.report.base import ReportContext, Section, markdown_table, section_key

CACHE_NAME = "certified_ibp_cnn_mnist5k_v1.npz"
TRAIN_EPS = 0.15
SMALL_INPUT = 32 * 32 * 3  # values per image
SMALL_PARAMS = 2_000_000


def small_model(model) -> tuple[bool, str]:
    """Whether the section's bounds are within reach for ``model`` -> ``(ok, why not)``."""
    h, w, c = model.spec.input_shape
    n_params = int(sum(np.size(a) for a in jax.tree_util.tree_leaves(model.params)))
    if h * w * c <= SMALL_INPUT and n_params <= SMALL_PARAMS:
        return True, ""
    return False, (
        f"Certified bounds are computed for small models only (input at most 32x32x3 values, "
        f"at most {SMALL_PARAMS:,} parameters); `{model.spec.name}` takes {h}x{w}x{c} images "
        f"and has {n_params:,} parameters. IBP and CROWN propagate bounds through every layer "
        "(CROWN runs one backward pass per ReLU neuron, millions here), and randomized smoothing "
        "and CLEVER need thousands of forward or gradient passes per image: beyond this "
        "report's budget. Use robustjax.certify (api.certify, smoothing.certify, "
        "clever.clever_untargeted) directly with a budget of your choice.")


def _settings(quick: bool) -> dict:
    if quick:
        return {"n_ibp": 8, "n_crown": 4, "eps": [0.0, 0.01, 0.03], "crown_eps": [0.0, 0.01],
                "n_smooth": 2,
                "smooth": smoothing.SmoothingConfig(sigma=0.25, n0=100, n=100, batch_size=50),
                "n_clever": 1, "clever": clever.CleverConfig(nb_batch=4, batch_size=8),
                "clever_norms": ("l2",)}
    # CROWN bounds only the ReLU neurons IBP leaves unstable, on oneDNN's convolutions: ~0.3 s
    # per image and eps for the default CNN on 2 cores (200 digits: 59-70 s per eps)
    return {"n_ibp": 500, "n_crown": 200, "eps": [0.0, 0.01, 0.02, 0.05, 0.1, 0.2],
            "crown_eps": [0.01, 0.02, 0.05],
            "n_smooth": 20,
            "smooth": smoothing.SmoothingConfig(sigma=0.25, n0=100, n=2000, batch_size=500),
            "n_clever": 3, "clever": clever.CleverConfig(nb_batch=50, batch_size=64),
            "clever_norms": ("l2", "linf")}


def certified_model(ctx: ReportContext, key):
    """The IBP-trained CNN: from ``ctx.extras``, the cache, or trained now (quick: tiny)."""
    if "certified_model" in ctx.extras:
        return ctx.extras["certified_model"], "given"
    path = cache_dir() / CACHE_NAME
    if not ctx.quick and path.exists():
        variables, spec, _ = checkpoint.load(path)
        module = MODELS["cnn"].module(num_classes=spec.num_classes)
        return wrap(module, variables, spec), "cache"
    x, y = data.load("mnist5k", "train")
    if ctx.quick:
        model, _ = train_certified(x[:200], y[:200], key, eps=TRAIN_EPS, epochs=2,
                                   warmup_epochs=0, ramp_epochs=1,
                                   model_overrides={"channels": (4, 8), "hidden": 16})
        return model, "trained (quick: tiny CNN, 2 epochs on 200 digits)"
    model, hist = train_certified(x, y, key, eps=TRAIN_EPS, epochs=8, progress=ctx.progress)
    checkpoint.save(path, model.params, model.spec,
                    {"method": "ibp", "eps_train": TRAIN_EPS, "seconds": hist["seconds"][-1]},
                    overwrite=True)
    return model, f"trained now ({hist['seconds'][-1]:.0f} s), cached"


def verified_curve(model, x, y, eps_list, method, n, chunk, sparse=True):
    """Verified accuracy at each eps on ``n`` examples spread over ``x``. Called eagerly:
    CROWN then bounds only the ReLU neurons that IBP leaves unstable (sparse intermediate
    bounds, one program per bucket of their count); ``sparse=False``: every neuron, one
    program for all eps (cheaper for a handful of examples, as in quick mode)."""
    idx = np.linspace(0, len(x) - 1, n).astype(int)  # spread over the (class-sorted) split
    x, y = jnp.asarray(x[idx]), jnp.asarray(y[idx])
    return [float(jnp.mean(api.certify(model.apply_fn, model.params, x, y, e, method,
                                       chunk_size=chunk, sparse=sparse))) for e in eps_list]


def _plot(path, xs, curves, xlabel, ylabel):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, ys in curves.items():
        pts = [(a, b) for a, b in zip(xs, ys) if b is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    runfiles.save_figure(fig, path, dpi=100)
    plt.close(fig)


def section(ctx: ReportContext) -> Section:
    ok, why = small_model(ctx.model)
    if not ok:
        return Section("certify", "Certified robustness",
                       {"skipped": True, "reason": why}, why)
    s = _settings(ctx.quick)
    key = section_key(ctx, "certify")
    k_train, k_smooth, k_clever = jax.random.split(key, 3)
    models = {"model under test": ctx.model}
    source = None
    if tuple(ctx.model.spec.input_shape) == (28, 28, 1):
        models["IBP-trained CNN"], source = certified_model(ctx, k_train)
    eps = s["eps"]
    curves, rows, unsupported = {}, [], []
    for name, model in models.items():
        for method, n, chunk in (("ibp", s["n_ibp"], 100), ("crown", s["n_crown"], 4)):
            if ctx.quick and method == "crown" and name != "model under test":
                continue  # quick mode: one CROWN compilation only
            run_eps = eps if method == "ibp" else s["crown_eps"]
            m = min(n, len(ctx.x))
            try:
                got = ctx.cached("certify", f"{name}/{method}", {"n": m, "eps": run_eps},
                                 lambda model=model, e=run_eps, meth=method, m=m, c=chunk:
                                 verified_curve(model, ctx.x, ctx.y, e, meth, m, c,
                                                sparse=not ctx.quick))
            except UnsupportedPrimitiveError as e:
                unsupported.append(f"{name}, {method.upper()}: {str(e).splitlines()[0]}")
                continue
            acc = [got[run_eps.index(e)] if e in run_eps else None for e in eps]
            curves[f"{name}, {method.upper()} (n={min(n, len(ctx.x))})"] = acc
            rows.append([name, method.upper(), min(n, len(ctx.x))]
                        + ["-" if a is None else a for a in acc])

    cfg = s["smooth"]
    n_s = min(s["n_smooth"], len(ctx.x))
    pred, radius = smoothing.certify(ctx.model.apply_fn, ctx.model.params,
                                     jnp.asarray(ctx.x[:n_s]), k_smooth, cfg)
    radii = [0.0, 0.25, 0.5, 0.75, 1.0]
    smooth_acc = smoothing.certified_accuracy(pred, radius, ctx.y[:n_s], radii).tolist()

    ccfg = s["clever"]
    n_c = min(s["n_clever"], len(ctx.x))
    clever_rows = []
    for norm in s["clever_norms"]:
        c = clever.CleverConfig(norm=norm, radius=ccfg.radius, nb_batch=ccfg.nb_batch,
                                batch_size=ccfg.batch_size)
        scores = clever.clever_untargeted(ctx.model.apply_fn, ctx.model.params,
                                          jnp.asarray(ctx.x[:n_c]), k_clever, c)
        clever_rows += [[i, norm, float(v)] for i, v in enumerate(scores)]

    figures = []
    if ctx.out_dir is not None:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        _plot(ctx.out_dir / "certify_verified.png", eps, curves, "Linf eps", "verified accuracy")
        _plot(ctx.out_dir / "certify_smoothing.png", radii, {f"sigma={cfg.sigma}": smooth_acc},
              "L2 radius", "certified accuracy")
        figures = ["certify_verified.png", "certify_smoothing.png"]

    data_out = {"eps": eps, "verified_accuracy": {k: v for k, v in curves.items()},
                "certified_model_source": source, "unsupported": unsupported,
                "smoothing": {"sigma": cfg.sigma, "n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha,
                              "examples": n_s, "radii": radii, "certified_accuracy": smooth_acc,
                              "abstain_rate": float(np.mean(pred == smoothing.ABSTAIN))},
                "clever": {"nb_batch": ccfg.nb_batch, "batch_size": ccfg.batch_size,
                           "radius": ccfg.radius,
                           "scores": [{"image": r[0], "norm": r[1], "score": r[2]}
                                      for r in clever_rows]}}
    md = "\n".join([
        "Verified accuracy: the fraction of test images whose label is provably constant "
        "over the Linf ball (survey eq. 5, on margins f_y - f_j).",
        "",
        markdown_table(["model", "method", "n"] + [f"eps={e}" for e in eps], rows),
        "",
        f"IBP-trained CNN: {source}" if source else "(no certified model: input is not 28x28x1)",
        "",
        *([("Not certified (a layer the bound interpreter does not support): "
            + "; ".join(unsupported)), ""] if unsupported else []),
        f"Randomized smoothing (sigma={cfg.sigma}, N0={cfg.n0}, **N={cfg.n}** instead of the "
        f"paper's 100,000, alpha={cfg.alpha}; the largest certifiable radius shrinks with N), "
        f"{n_s} images:",
        "",
        markdown_table(["radius"] + [str(r) for r in radii], [["certified acc."] + smooth_acc]),
        "",
        f"CLEVER untargeted scores ({ccfg.nb_batch} batches x {ccfg.batch_size} samples instead "
        f"of 500 x 1024, radius {ccfg.radius}):",
        "",
        markdown_table(["image", "norm", "CLEVER"], clever_rows),
    ])
    return Section("certify", "Certified robustness", data_out, md, tuple(figures))
