"""Report section: the survey's Table 3 metrics for the model under FGSM, PGD, a black-box
attack and corruptions, boundary distances, neuron metrics and the robustness curve.
ImageNet-scale inputs (``base.imagenet_scale``) get at most 64 images and fewer steps,
directions and queries (PGD-10, Square-100, EBD-1 3 x 31, EBD-2 50 steps, curve 4 x PGD-5).

Attacks and corruptions come from ``robustjax.attacks`` / ``robustjax.corruptions``, imported
when the section runs; if a package is missing its rows say "not available" instead. Callers may
pass their own in ``ctx.extras``:

* ``"metrics_attacks"``: ``{name: (kind, f)}`` with ``f(apply_fn, params, x, y, key)`` returning
  an ``AttackResult`` (or the adversarial images);
* ``"metrics_corruptions"``: ``{name: f(x, key) -> x_corrupted}``;
* ``"min_eps_fn"``: ``f(apply_fn, params, x, y, key) -> [b]`` minimal perturbations;
* ``"flax_module"``: the flax module behind ``ctx.model`` (for neuron metrics; otherwise the
  registry's default module is tried and checked against ``ctx.model``'s logits);
* ``"train_x"``: training images for DeepGauge's neuron ranges.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import metrics as M
from robustjax import runfiles
from robustjax.report.base import (
    ReportContext,
    Section,
    imagenet_scale,
    markdown_table,
    section_key,
)

EPS = 0.1  # Linf budget in pixel units for MNIST-scale models (the survey's Fig. 8 uses 0.1)
EPS_MAX_CURVE = 0.3
CORRUPTIONS_FULL = ("gaussian_noise", "impulse_noise", "defocus_blur", "brightness", "contrast")
CORRUPTIONS_QUICK = ("gaussian_noise", "contrast")
FIGURE = "metrics_robustness_curve.png"


def _default_attacks(quick: bool, large: bool = False):
    try:
        from robustjax.attacks import (FGSMConfig, PGDConfig, SquareConfig, fgsm, pgd,
                                       square)
    except ImportError as e:
        return {}, f"robustjax.attacks not available ({e}): FGSM/PGD rows not computed."
    steps = 5 if quick else (10 if large else 20)
    cfgs = {
        "FGSM": ("white-box", fgsm, FGSMConfig(eps=EPS)),
        f"PGD-{steps}": ("white-box", pgd, PGDConfig(eps=EPS, step_size=EPS / 4, steps=steps)),
    }
    if not quick:  # its compilation alone would take a third of the quick budget
        q = 100 if large else 300
        cfgs[f"Square-{q}"] = ("black-box", square, SquareConfig(eps=EPS, n_queries=q))
    out = {}
    for name, (kind, fn, cfg) in cfgs.items():
        out[name] = (kind, lambda a, p, x, y, k, fn=fn, cfg=cfg: fn(a, p, x, y, k, cfg))
    return out, "quick mode: the black-box Square row is skipped." if quick else ""


def _default_corruptions(quick: bool):
    try:
        from robustjax.corruptions import corrupt
    except ImportError as e:
        return {}, f"robustjax.corruptions not available ({e}): corruption rows not computed."
    names = CORRUPTIONS_QUICK if quick else CORRUPTIONS_FULL
    f = jax.jit(corrupt, static_argnames=("name", "severity", "scale_pixels"))
    return {f"{n} (s3)": (lambda x, k, n=n: f(x, n, 3, k, scale_pixels=True)) for n in names}, ""


def _min_eps_fn(quick: bool, large: bool = False):
    try:
        from robustjax.attacks import PGDConfig, min_eps, pgd
    except ImportError as e:
        return None, f"robustjax.attacks not available ({e}): robustness curve not computed."
    cfg = PGDConfig(eps=EPS_MAX_CURVE, step_size=EPS_MAX_CURVE / 4,
                    steps=5 if quick or large else 20)
    steps = 4 if quick or large else 8

    def fn(apply_fn, params, x, y, key):
        return min_eps(pgd, apply_fn, params, x, y, key, cfg, EPS_MAX_CURVE, steps)[0]

    return fn, (f"minimal Linf eps per example by bisection (robustjax.attacks.min_eps, PGD-"
                f"{cfg.steps}, {steps} halvings of [0, {EPS_MAX_CURVE}])")


def _module_candidates(ctx: ReportContext) -> list[dict]:
    """Constructor overrides to try: the training metadata's, the embedded default's, none."""
    out = []
    info = ctx.extras.get("training_info") or {}
    if isinstance(info.get("overrides"), dict):
        out.append(dict(info["overrides"]))
    try:
        from robustjax.models import default

        if ctx.model.spec.name == default.DEFAULT_ARCH:
            out.append(dict(default.DEFAULT_OVERRIDES))
    except ImportError:
        pass
    return out + [{}]


def _flax_module(ctx: ReportContext):
    """The flax module behind ``ctx.model``, or None (with a reason).

    ``ctx.extras["flax_module"]`` wins; otherwise registry modules built with the candidate
    overrides are accepted only if they reproduce ``ctx.model``'s logits.
    """
    if "flax_module" in ctx.extras:
        return ctx.extras["flax_module"], ""
    spec = ctx.model.spec
    try:
        from robustjax.models.registry import MODELS, wrap
    except ImportError as e:
        return None, f"no model registry ({e}); pass ctx.extras['flax_module']"
    if spec.name not in MODELS:
        return None, (f"model {spec.name!r} is not in the registry; pass "
                      "ctx.extras['flax_module'] for neuron metrics.")
    probe = jnp.asarray(ctx.x[:2])
    want = jax.jit(ctx.model.apply_fn)(ctx.model.params, probe)
    for overrides in _module_candidates(ctx):
        try:
            module = MODELS[spec.name].module(num_classes=spec.num_classes, **overrides)
            got = jax.jit(wrap(module, ctx.model.params, spec).apply_fn)(ctx.model.params, probe)
            if np.allclose(got, want, atol=1e-5):
                return module, ""
        except Exception:  # noqa: BLE001 - wrong shapes or names: try the next candidate
            continue
    return None, ("no registry module with the tried overrides reproduces the model's logits; "
                  "pass ctx.extras['flax_module'] for neuron metrics.")


def _train_images(ctx: ReportContext, n: int, n_eval: int):
    if "train_x" in ctx.extras:
        return np.asarray(ctx.extras["train_x"][:n]), "training images from ctx.extras"
    if tuple(ctx.model.spec.input_shape) == (28, 28, 1):
        try:
            from robustjax.data import load

            return np.asarray(load("mnist5k", "train")[0][:n]), "mnist5k training split"
        except Exception:
            pass
    rest = np.asarray(ctx.x[n_eval:n_eval + n])
    if len(rest) == 0:
        rest = np.asarray(ctx.x[:n])
    return rest, "held-out evaluation images (no training data available)"


def _f(v):
    v = float(v)
    return None if math.isnan(v) else v


def _threat_row(name, kind, logits_clean, logits_p, y, x, xp, success_mask):
    adv = M.AdversarialStats.from_batch(logits_p, y, logits_clean=logits_clean).compute()
    imp = M.ImperceptibilityStats.from_batch(x, xp, success_mask).compute()
    return {
        "name": name, "kind": kind,
        "accuracy": _f(adv["adv_accuracy"]), "success_rate": _f(adv["success_rate"]),
        "fooling_rate": _f(M.fooling_rate(logits_clean, logits_p, y)),
        "retention_rate": _f(M.retention_rate(logits_clean, logits_p, y)),
        "acac": _f(adv["acac"]), "actc": _f(adv["actc"]), "nte": _f(adv["nte"]),
        "eni": _f(M.eni_stats(logits_clean, logits_p, y, x, xp).compute()),
        **{k: _f(imp[k]) for k in ("l0_fraction", "l2_abs", "l2_rel", "linf_abs", "ssim", "psd")},
    }


def section(ctx: ReportContext) -> Section:
    quick = ctx.quick
    large = imagenet_scale(ctx.model.spec)  # lighter settings: a gradient costs ~100x MNIST's
    n = 16 if quick else (64 if large else 500)
    x, y = jnp.asarray(ctx.x[:n], jnp.float32), jnp.asarray(ctx.y[:n], jnp.int32)
    apply_fn, params = ctx.model.apply_fn, ctx.model.params
    apply = jax.jit(apply_fn)
    key = section_key(ctx, "metrics")
    k_att, k_cor, k_b1, k_curve, k_unc = jax.random.split(key, 5)
    notes, data = [], {"n": int(x.shape[0]), "eps": EPS}

    logits = apply(params, x)
    task = M.TaskStats.from_batch(logits, y).compute()
    data["clean"] = {"top1": _f(task["top1"]), "top5": _f(task["top5"])}

    attacks = ctx.extras.get("metrics_attacks")
    if attacks is None:
        attacks, note = _default_attacks(quick, large)
        notes += [note] if note else []
    corruptions = ctx.extras.get("metrics_corruptions")
    if corruptions is None:
        corruptions, note = _default_corruptions(quick)
        notes += [note] if note else []

    rows, x_pgd = [], None
    for i, (name, (kind, fn)) in enumerate(ctx.progress(attacks.items(), desc="attacks")):
        res = jax.jit(functools.partial(fn, apply_fn))(params, x, y, jax.random.fold_in(k_att, i))
        xa = getattr(res, "x_adv", res)
        la = apply(params, xa)
        ok = (jnp.argmax(la, -1) != y) & (jnp.argmax(logits, -1) == y)
        rows.append(_threat_row(name, kind, logits, la, y, x, xa, ok))
        if name.startswith("PGD"):
            x_pgd = xa
    for i, (name, fn) in enumerate(ctx.progress(corruptions.items(), desc="corruptions")):
        xc = jnp.clip(fn(x, jax.random.fold_in(k_cor, i)), 0.0, 1.0)
        everyone = jnp.ones(y.shape, bool)  # same shapes as the attack rows: no recompilation
        rows.append(_threat_row(name, "corruption", logits, apply(params, xc), y, x, xc,
                                everyone))
    data["threats"] = rows

    b1 = jax.jit(functools.partial(M.ebd1, apply_fn, config=M.EBD1Config(
        num_directions=3 if quick or large else 10,
        num_steps=15 if quick else (31 if large else 63))))(params, x, y, k_b1)
    b2 = jax.jit(functools.partial(M.ebd2, apply_fn, config=M.EBD2Config(
        max_steps=20 if quick else (50 if large else 100))))(params, x, y, None)
    data["boundary"] = {nm: {k: _f(v) for k, v in M.BoundaryStats.from_result(r).compute().items()}
                        for nm, r in (("ebd1", b1), ("ebd2", b2))}

    module, reason = _flax_module(ctx)
    if module is None:
        notes.append(f"Neuron metrics not computed: {reason}")
    else:
        spec = ctx.model.spec
        acts_fn = jax.jit(M.activations_fn(module, params, mean=spec.mean, std=spec.std))
        xt, src = _train_images(ctx, 64 if quick else 5000, n)
        ranges = M.NeuronRanges.empty()
        for s in range(0, len(xt), 250):
            ranges = ranges.merge(M.NeuronRanges.from_batch(acts_fn(jnp.asarray(xt[s:s + 250]))))
        acts = acts_fn(x)
        cov = M.CoverageStats.from_batch(acts, ranges, k=10).compute()
        unc = M.neuron_uncertainty(acts_fn, x, k_unc, M.NeuronUncertaintyConfig(
            num_samples=4 if quick else 16)).compute()
        sens = (M.neuron_sensitivity(acts, acts_fn(x_pgd)).compute() if x_pgd is not None
                else {k: float("nan") for k in acts})
        data["neurons"] = {
            "ranges_from": src, "kmnc": _f(cov["kmnc"]), "nbc": _f(cov["nbc"]),
            "snac": _f(cov["snac"]),
            "layers": {k: {"sensitivity_pgd": _f(sens[k]), "uncertainty": _f(unc[k]),
                           **{m: _f(v) for m, v in cov["per_layer"][k].items()}} for k in acts},
        }

    figures = []
    min_eps_fn = ctx.extras.get("min_eps_fn")
    curve_note = "minimal perturbations from ctx.extras['min_eps_fn']"
    if min_eps_fn is None:
        min_eps_fn, curve_note = _min_eps_fn(quick, large)
    if min_eps_fn is None:
        notes.append(curve_note)
    else:
        me = jax.jit(functools.partial(min_eps_fn, apply_fn))(params, x, y, k_curve)
        grid = np.linspace(0.0, EPS_MAX_CURVE, 31)
        curve = np.asarray(M.robustness_curve(me, grid))
        data["curve"] = {"eps": grid.tolist(), "share_broken": curve.tolist(),
                         "method": curve_note}
        figures.append(_plot_curve(ctx, grid, curve))

    return Section("metrics", "Robustness metrics (survey Table 3)", data,
                   _markdown(data, notes), tuple(figures))


def _plot_curve(ctx, grid, curve) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(grid, curve, label="share with minimal eps <= eps")
    ax.plot(grid, 1 - curve, "--", label="accuracy under attack")
    ax.set_xlabel("Linf eps (pixel units)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    runfiles.save_figure(fig, ctx.out_dir / FIGURE, dpi=100)
    plt.close(fig)
    return FIGURE


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _markdown(data, notes) -> str:
    def fmt(v):
        return "n/a" if v is None else v

    out = [f"{data['n']} evaluation images; clean top-1 {_num(data['clean']['top1'])}, "
           f"top-5 {_num(data['clean']['top5'])}. Attacks: Linf eps {data['eps']}."]
    rows = data["threats"]
    if rows:
        out.append(markdown_table(
            ["threat", "kind", "accuracy", "success rate", "fooling rate", "retention", "ACAC",
             "ACTC", "NTE", "ENI"],
            [[r["name"], r["kind"]] + [fmt(r[k]) for k in (
                "accuracy", "success_rate", "fooling_rate", "retention_rate", "acac", "actc",
                "nte", "eni")] for r in rows]))
        out.append("Imperceptibility (attacks: averaged over successful adversarial examples, "
                   "as DEEPSEC; corruptions: over all images). L2 and Linf in [0, 1] pixel "
                   "units; PSD with Luo et al.'s weight 1/std of the 3x3 neighbourhood, floored "
                   "at 1/255, so a change of flat background (MNIST) weighs 255x.")
        out.append(markdown_table(
            ["threat", "L0 fraction", "L2", "L2 relative", "Linf", "SSIM", "PSD"],
            [[r["name"]] + [fmt(r[k]) for k in ("l0_fraction", "l2_abs", "l2_rel", "linf_abs",
                                                "ssim", "psd")] for r in rows]))
    b = data["boundary"]
    out.append(markdown_table(
        ["boundary distance", "mean (pixel units)", "share found"],
        [["EBD-1 (nearest of random orthogonal directions, RMS units)",
          fmt(b["ebd1"]["distance"]), fmt(b["ebd1"]["found"])],
         ["EBD-2 (BIM sign steps of 1/255 until the prediction flips)",
          fmt(b["ebd2"]["distance"]), fmt(b["ebd2"]["found"])]]))
    if "neurons" in data:
        nd = data["neurons"]
        out.append(f"Neuron coverage (DeepGauge; ranges from {nd['ranges_from']}, k = 10): "
                   f"KMNC {_num(nd['kmnc'])}, NBC {_num(nd['nbc'])}, SNAC {_num(nd['snac'])}. "
                   "Sensitivity: mean |activation change| under PGD; uncertainty: activation "
                   "variance under Gaussian noise (std 0.05).")
        out.append(markdown_table(
            ["layer", "sensitivity (PGD)", "uncertainty", "KMNC", "NBC", "SNAC"],
            [[k] + [fmt(v[m]) for m in ("sensitivity_pgd", "uncertainty", "kmnc", "nbc", "snac")]
             for k, v in nd["layers"].items()]))
    if "curve" in data:
        c = data["curve"]
        pts = [f"{e:.2f}: {s:.3f}" for e, s in zip(c["eps"], c["share_broken"])][::5]
        out.append(f"Robustness curve ({c['method']}; figure {FIGURE}): share of examples "
                   "broken at eps "
                   + ", ".join(pts) + ".")
    out.append("mCE and relative mCE need ImageNet-C errors of AlexNet: see the corruptions "
               "section (robustjax.corruptions.metrics).")
    out += [f"Note: {n}" for n in notes]
    return "\n\n".join(out)
