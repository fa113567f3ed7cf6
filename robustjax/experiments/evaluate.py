"""Evaluating one trained run against an evaluation ``Profile``.

``make_evaluator(apply_fn, x, y, profile)`` compiles every attack, certifier and accuracy once
and corrupts / distorts the test set once (the same corrupted images for every run, from a
fixed key), then returns ``evaluate(params, key) -> {column: value}``. Columns (``COLUMNS``;
fractions in [0, 1]):

* ``clean``: top-1 accuracy;
* ``pgd``: accuracy under Linf PGD at ``eps`` (random start from ``key``);
* ``apgd``: accuracy under the per-example worst of APGD-CE and (when measured) PGD;
* ``autoattack``: robust accuracy under AutoAttack (``attacks.autoattack``, Linf at ``eps``);
* ``mce``: mean corruption error over ``corruptions`` x ``severities`` (lower is better) and
  ``retention``: mean corrupted accuracy / clean accuracy (survey eq. 4);
* ``spatial``: mean accuracy over the spatial distortions x severities;
* ``ibp`` / ``crown``: verified accuracy at ``certify_eps`` (``robustjax.certify.certify``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import attacks, certify, corruptions
from robustjax.experiments.spec import Profile

# metric -> the table columns it produces; LOWER_IS_BETTER marks error columns
COLUMNS = {"clean": ("clean",), "pgd": ("pgd",), "apgd": ("apgd",),
           "autoattack": ("autoattack",),
           "corruption": ("mce", "retention"), "spatial": ("spatial",), "ibp": ("ibp",),
           "crown": ("crown",)}
LOWER_IS_BETTER = ("mce",)


def columns(profile: Profile) -> tuple[str, ...]:
    return tuple(c for m in profile.metrics for c in COLUMNS[m])


def check_applicable(apply_fn, params, x, y, profile: Profile) -> None:
    """Raise ValueError before training if a certified metric cannot run on this model."""
    for method in ("ibp", "crown"):
        if method not in profile.metrics:
            continue
        try:
            certify.certify(apply_fn, params, jnp.asarray(x[:1]), jnp.asarray(y[:1]),
                            profile.certify_eps, method)
        except certify.UnsupportedPrimitiveError as e:
            raise ValueError(f"evaluation metric {method!r} cannot run on this model: {e}. "
                             f"Remove it from evaluation.metrics or use a model made of "
                             f"supported layers (e.g. 'cnn', 'mlp')") from None


def _chunks(n, size):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


@functools.lru_cache(maxsize=16)
def _programs(apply_fn, profile: Profile):
    """Jitted predict, PGD, APGD and certifiers (cached per model function and profile)."""
    predict = jax.jit(lambda p, xb: jnp.argmax(apply_fn(p, xb), -1))
    step = profile.pgd_step_size or 2.5 * profile.eps / profile.pgd_steps
    pgd = jax.jit(functools.partial(attacks.pgd, apply_fn, config=attacks.PGDConfig(
        eps=profile.eps, step_size=step, steps=profile.pgd_steps)))
    apgd = jax.jit(functools.partial(attacks.apgd, apply_fn, config=attacks.APGDConfig(
        eps=profile.eps, steps=profile.apgd_steps)))
    certifiers = {m: jax.jit(functools.partial(certify.certify, apply_fn,
                                               eps=profile.certify_eps, method=m))
                  for m in ("ibp", "crown") if m in profile.metrics}
    return predict, pgd, apgd, certifiers


def make_evaluator(apply_fn, x, y, profile: Profile):
    """-> ``evaluate(params, key) -> dict`` (see the module docstring)."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    spans = _chunks(len(x), profile.batch_size)
    metrics = profile.metrics
    predict, pgd, apgd, certifiers = _programs(apply_fn, profile)
    # The corrupted and distorted test sets: computed once, shared by every run.
    corrupted, distorted = {}, {}
    if "corruption" in metrics:
        ckey = jax.random.PRNGKey(0)
        for i, name in enumerate(profile.corruptions):
            for s in profile.severities:
                k = jax.random.fold_in(ckey, 10 * i + s)
                corrupted[name, s] = np.concatenate(
                    [np.asarray(corruptions.corrupt(x[a:b], name, s, jax.random.fold_in(k, a),
                                                    quantize=profile.quantize_corruptions))
                     for a, b in spans])
    if "spatial" in metrics:
        for name in profile.spatial:
            for s in profile.spatial_severities:
                distorted[name, s] = np.concatenate(
                    [np.asarray(corruptions.distort(x[a:b], name, s)) for a, b in spans])

    def accuracy(params, images):
        hits = sum(int(np.sum(np.asarray(predict(params, images[a:b])) == y[a:b]))
                   for a, b in spans)
        return hits / len(y)

    def evaluate(params, key) -> dict:
        out = {}
        if "clean" in metrics or "corruption" in metrics:
            clean = accuracy(params, x)
            if "clean" in metrics:
                out["clean"] = clean
        pgd_success = None
        if "pgd" in metrics or "apgd" in metrics:
            k = jax.random.fold_in(key, 0)
            if "pgd" in metrics:
                pgd_success = np.concatenate([np.asarray(pgd(params, x[a:b], y[a:b],
                                                             jax.random.fold_in(k, a)).success)
                                              for a, b in spans])
                out["pgd"] = 1.0 - float(np.mean(pgd_success))
            if "apgd" in metrics:
                k = jax.random.fold_in(key, 1)
                success = np.concatenate([np.asarray(apgd(params, x[a:b], y[a:b],
                                                          jax.random.fold_in(k, a)).success)
                                          for a, b in spans])
                if pgd_success is not None:
                    success = success | pgd_success
                out["apgd"] = 1.0 - float(np.mean(success))
        if "autoattack" in metrics:
            result = attacks.autoattack(
                apply_fn, params, x, y, jax.random.fold_in(key, 2),
                attacks.AutoAttackConfig(eps=profile.eps, norm="linf",
                                         version=profile.autoattack_version,
                                         batch_size=profile.batch_size))
            out["autoattack"] = float(result.robust_accuracy)
        if "corruption" in metrics:
            errors = {name: [1.0 - accuracy(params, corrupted[name, s])
                             for s in profile.severities] for name in profile.corruptions}
            mce = corruptions.mean_corruption_error(errors)
            out["mce"] = mce
            out["retention"] = (float(corruptions.retention_rate(1.0 - mce, clean))
                                if clean > 0 else None)
        if "spatial" in metrics:
            out["spatial"] = float(np.mean([accuracy(params, img)
                                            for img in distorted.values()]))
        for m, fn in certifiers.items():
            ok = np.concatenate([np.asarray(fn(params, jnp.asarray(x[a:b]),
                                               jnp.asarray(y[a:b]))) for a, b in spans])
            out[m] = float(np.mean(ok))
        return out

    return evaluate
