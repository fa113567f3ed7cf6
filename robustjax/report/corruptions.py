"""Report section: natural corruptions (ImageNet-C, Hendrycks & Dietterich 2019) and spatial
distortions of the model under test, plus prediction panels in the spirit of the robustness
survey's figures 3-6.

For the default MNIST CNN (28 x 28 x 1) the corruptions run on the gray images replicated to RGB
(as imagecorruptions does) and are returned as luma, with pixel-unit parameters scaled by
28 / 224 (``scale_pixels=True``): the published pixel sizes are for 224-px ImageNet images. There
are no AlexNet normalisers for MNIST, so the score is the unnormalised mean corruption error over
the 15 benchmark corruptions (and the 4 extras separately) and the retention rate (mean
corrupted accuracy / clean accuracy).

The score follows the benchmark the model belongs to (``convention``): a 1000-class ImageNet
model gets ImageNet-C's mCE and relative mCE with the AlexNet normalisers
(``robustjax.corruptions.metrics``); a CIFAR-10 model CIFAR-10-C's convention, the accuracy
averaged over the 15 corruptions x 5 severities with no normalisation; anything else the
unnormalised mean error. Each corruption's errors are stored as they finish (``ctx.cached``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import parallel, runfiles
from robustjax.corruptions import (
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SPATIAL_SEVERITIES,
    corrupt,
    mce,
    relative_mce,
    spatial,
)
from robustjax.report.base import ReportContext, Section, markdown_table, section_key
from robustjax.types import Model

QUICK_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "brightness", "contrast", "fog")
QUICK_SEVERITIES = (1, 3, 5)


_JITTED = {}


def _predict(model: Model, x, batch: int = 256) -> np.ndarray:
    # one jitted apply per apply_fn (a fresh jax.jit wrapper per call would recompile)
    fn = _JITTED.setdefault(model.apply_fn, jax.jit(model.apply_fn))
    return np.concatenate([np.asarray(fn(model.params, jnp.asarray(x[i:i + batch])))
                           for i in range(0, len(x), batch)])


def corruption_errors(model: Model, x, y, key, names=tuple(CORRUPTIONS), severities=(1, 2, 3, 4, 5),
                      scale_pixels: bool = False, progress=lambda it, **kw: it,
                      cached=lambda name, compute: compute(), quantize: bool = True):
    """``{name: [error per severity]}`` of ``model`` on ``x`` corrupted on the fly.

    ``cached(name, compute)`` may store each corruption's list (the report's resumable store).
    ``quantize``: the corrupted images rounded to 8 bits, as ImageNet-C stores them (the
    AlexNet normalisers and published mCEs were measured on those files).
    """
    out = {}
    for i, name in enumerate(progress(names, desc="corruptions")):
        def errs(i=i, name=name):
            values = []
            for s in severities:
                xc = corrupt(jnp.asarray(x), name, s, jax.random.fold_in(key, 10 * i + s),
                             scale_pixels=scale_pixels, quantize=quantize)
                values.append(float(np.mean(_predict(model, xc).argmax(-1) != y)))
            return values

        out[name] = cached(name, errs)
    return out


CONVENTIONS = ("imagenet-c", "cifar10-c", "unnormalised")


def convention(spec, dataset: str = "") -> str:
    """Which corruption benchmark's score applies: ``"imagenet-c"`` (1000 classes: mCE with
    AlexNet normalisers), ``"cifar10-c"`` (CIFAR-10 data or a 10-class 32x32x3 model: mean
    accuracy over the 15 corruptions x 5 severities) or ``"unnormalised"``."""
    if spec.num_classes == 1000:
        return "imagenet-c"
    if dataset.startswith("cifar10") or (tuple(spec.input_shape) == (32, 32, 3)
                                         and spec.num_classes == 10):
        return "cifar10-c"
    return "unnormalised"


def spatial_errors(model: Model, x, y, severities=(1, 2, 3, 4, 5)):
    """``{distortion: [error per severity]}`` (robustjax's severity grid, zero fill)."""
    names = tuple(SPATIAL_SEVERITIES)
    # one compilation for all distortions and severities (the parameters are traced)
    f = jax.jit(lambda xx, vs: [spatial.apply(xx, n, v) for n, v in zip(names, vs)])
    out = {n: [] for n in names}
    for s in severities:
        batches = f(jnp.asarray(x), [jnp.float32(SPATIAL_SEVERITIES[n][s - 1]) for n in names])
        for n, xd in zip(names, batches):
            out[n].append(float(np.mean(_predict(model, xd).argmax(-1) != y)))
    return out


def heatmap(errors: dict, severities, path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(errors)
    grid = np.array([errors[n] for n in names])
    fig, ax = plt.subplots(figsize=(1.2 * len(severities) + 3, 0.32 * len(names) + 1.2))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("severity")
    for (r, c), v in np.ndenumerate(grid):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="top-1 error")
    ax.set_title(title)
    fig.tight_layout()
    runfiles.save_figure(fig, path, dpi=110)
    plt.close(fig)


def prediction_panel(model: Model, x, class_names, key, path, *, corruption=("fog", 3),
                     distortion=("rotate", 3), extra_columns=None, top: int = 3,
                     scale_pixels: bool = False):
    """A figure with one row per image: clean, corrupted, distorted (and any ``extra_columns``,
    e.g. ``{"PGD": x_adv}``), each titled with the model's top-``top`` classes and
    probabilities (survey figs. 3-6). ``x`` float32 ``[n, H, W, C]``; returns the top-k table
    ``{column: [[(class, prob), ...] per image]}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = jnp.asarray(x)
    columns = {
        "clean": x,
        f"{corruption[0]} s{corruption[1]}": corrupt(x, corruption[0], corruption[1], key,
                                                      scale_pixels=scale_pixels),
        f"{distortion[0]} s{distortion[1]}": spatial.distort(x, *distortion),
    }
    columns.update(extra_columns or {})
    table = {}
    fig, axes = plt.subplots(len(x), len(columns), figsize=(3.1 * len(columns), 3.4 * len(x)),
                             squeeze=False)
    for c, (title, imgs) in enumerate(columns.items()):
        probs = np.asarray(jax.nn.softmax(_predict(model, imgs), axis=-1))
        rows = []
        for r in range(len(x)):
            best = np.argsort(-probs[r])[:top]
            preds = [(class_names[j] if class_names else str(j), float(probs[r, j])) for j in best]
            rows.append(preds)
            ax = axes[r, c]
            img = np.asarray(imgs[r])
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("\n".join(f"{n[:24]} {p:.2f}" for n, p in preds), fontsize=8)
            if r == 0:
                ax.set_title(title)
        table[title] = rows
    fig.tight_layout()
    runfiles.save_figure(fig, path, dpi=90)
    plt.close(fig)
    return table


def _attacked_column(model: Model, x, y, key) -> dict:
    """PGD-10 (Linf 2/255) adversarial versions of ``x`` for the panels (survey fig. 6)."""
    from robustjax import attacks

    cfg = attacks.PGDConfig(eps=2 / 255, step_size=0.5 / 255, steps=10)
    res = attacks.pgd(model.apply_fn, model.params, jnp.asarray(x), jnp.asarray(y),
                      jax.random.fold_in(key, 998), cfg)
    return {"PGD Linf 2/255": res.x_adv}


def section(ctx: ReportContext) -> Section:
    key = section_key(ctx, "corruptions")
    x, y = np.asarray(ctx.x), np.asarray(ctx.y)
    if ctx.quick:
        x, y = x[:16], y[:16]
        names, severities = QUICK_CORRUPTIONS, QUICK_SEVERITIES
    else:
        names, severities = tuple(CORRUPTIONS), (1, 2, 3, 4, 5)
    h, w = x.shape[1:3]
    scale = min(h, w) < 224
    clean_error = float(np.mean(_predict(ctx.model, x).argmax(-1) != y))
    quantize = bool(ctx.quantize_corruptions)
    # (the spatial distortions have no stored 8-bit benchmark: always unrounded, so their
    # settings leave quantize_8bit out)
    stored = {"n": int(len(y)), "severities": list(severities), "scale_pixels": bool(scale)}
    corrupted = {**stored, "quantize_8bit": quantize}
    errors = corruption_errors(
        ctx.model, x, y, key, names, severities, scale, ctx.progress,
        cached=lambda name, compute: ctx.cached("corruptions", name, corrupted, compute),
        quantize=quantize)
    spatial_err = ctx.cached("corruptions", "spatial", stored,
                             lambda: spatial_errors(ctx.model, x, y, severities))
    bench = [n for n in names if n in BENCHMARK_CORRUPTIONS]
    extra = [n for n in names if n in EXTRA_CORRUPTIONS]
    mean_err = float(np.mean([errors[n] for n in bench]))
    clean_acc = 1.0 - clean_error
    retention = float((1.0 - mean_err) / clean_acc) if clean_acc > 0 else float("nan")
    data = {
        "examples": int(len(y)),
        "severities": list(severities),
        "scale_pixels": bool(scale),
        "quantize_8bit": quantize,
        "clean_error": clean_error,
        "corruption_errors": errors,
        "mean_corruption_error": mean_err,
        "mean_extra_corruption_error": float(np.mean([errors[n] for n in extra])) if extra else None,
        "retention_rate": retention,
        "retention_per_corruption": {n: float((1 - np.mean(errors[n])) / clean_acc)
                                     for n in names} if clean_acc > 0 else {},
        "spatial_errors": spatial_err,
        "spatial_grid": {k: list(v) for k, v in SPATIAL_SEVERITIES.items()},
    }
    conv = convention(ctx.model.spec, ctx.dataset)
    complete = len(bench) == len(BENCHMARK_CORRUPTIONS) and len(severities) == 5
    data["convention"] = conv
    imagenet = conv == "imagenet-c" and complete
    if imagenet:
        data["mCE"] = mce(errors)
        data["relative_mCE"] = relative_mce(errors, clean_error)
    if conv == "cifar10-c":
        data["mean_corruption_accuracy"] = 1.0 - mean_err
    figures = []
    path = ctx.out_dir / "corruptions_heatmap.png"
    heatmap({**errors, **{f"[spatial] {k}": v for k, v in spatial_err.items()}}, severities, path,
            f"{ctx.model.spec.name}: top-1 error (clean {clean_error:.3f})")
    figures.append(path.name)
    if "imagenet_model" in ctx.extras:  # e.g. EfficientNet-Lite0 from the model zoo
        from robustjax import data as datasets

        model = ctx.extras["imagenet_model"]
        xn, _ = datasets.load("natural", "test")
        xn = xn[:2] if ctx.quick else xn
        path = ctx.out_dir / "corruptions_panels.png"
        yn = np.asarray(datasets.load("natural", "test")[1])[:len(xn)]
        # a figure of a few photos: on the default device, not split over a mesh (whose
        # partitioned fog rounds in the last bit differently, 2e-7 at 224 x 224)
        with parallel.use_mesh(None):
            data["panels"] = prediction_panel(model, xn, model.spec.class_names,
                                              jax.random.fold_in(key, 999), path,
                                              extra_columns=_attacked_column(model, xn, yn,
                                                                             key))
        figures.append(path.name)
    ran = f"{len(bench)} benchmark corruptions x {len(severities)} severities"
    if imagenet:
        score = (f"ImageNet-C convention: mCE {100 * data['mCE']:.1f}%, relative mCE "
                 f"{100 * data['relative_mCE']:.1f}%, normalised by AlexNet's errors")
    elif conv == "imagenet-c":
        score = ("ImageNet-C convention, but no mCE: the AlexNet normalisers are per corruption "
                 f"summed over severities 1-5, so mCE needs all 15 benchmark corruptions at 5 "
                 f"severities; this run has {ran}"
                 + (" (quick mode)" if ctx.quick else ""))
    elif conv == "cifar10-c":
        score = ("CIFAR-10-C convention (no AlexNet normalisation): mean accuracy "
                 f"{data['mean_corruption_accuracy']:.3f} over {ran}")
    else:
        score = ("no AlexNet normalisers for this dataset, so no mCE: the score is the "
                 f"unnormalised mean corruption error over {len(bench)} benchmark corruptions")
    rows = [[n] + [f"{e:.3f}" for e in errors[n]] + [f"{np.mean(errors[n]):.3f}"] for n in names]
    srows = [[n] + [f"{e:.3f}" for e in spatial_err[n]] for n in spatial_err]
    md = "\n".join([
        f"{len(y)} test images, clean error {clean_error:.3f}. Corruptions of Hendrycks & "
        "Dietterich (2019) generated on the fly"
        + (" (pixel-unit parameters scaled to the image size, gray images via RGB)" if scale
           else "")
        + (", rounded to 8 bits as ImageNet-C stores them" if quantize
           else ", unrounded (not the stored 8-bit benchmark)") + ".",
        "",
        f"**Mean corruption error {mean_err:.3f}; retention rate {retention:.3f}** ({score}).",
        "",
        markdown_table(["corruption"] + [f"s{s}" for s in severities] + ["mean"], rows),
        "",
        "Spatial distortions (grid: " + "; ".join(
            f"{k} {list(v)}" for k, v in SPATIAL_SEVERITIES.items()) + "):",
        "",
        markdown_table(["distortion"] + [f"s{s}" for s in severities], srows),
    ])
    return Section("corruptions", "Natural corruptions and spatial distortions", data, md,
                   tuple(figures))
