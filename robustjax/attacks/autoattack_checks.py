"""Reliability checks of an AutoAttack evaluation, after the reference code's ``checks.py``
(Croce & Hein, fra31/auto-attack; its ``flags_doc.md`` explains each flag).

Each check looks at the model on the first batch, warns with ``AutoAttackWarning`` (or
``GradientMaskingWarning``) saying what to do, and returns nothing, except ``check_range_output``
(the number of classes). Settings that cannot work (the DLR loss with too few classes) raise.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import _core
from robustjax.attacks._core import GradientMaskingWarning

DOC = "see Croce & Hein's flags_doc.md (fra31/auto-attack)"


class AutoAttackWarning(UserWarning):
    """An AutoAttack evaluation may be unreliable (randomized model, probabilities, ...)."""


def _warn(msg, cls=AutoAttackWarning):
    warnings.warn(msg, cls, stacklevel=3)


def check_randomized(apply_fn, params, x, y, n: int = 5, alpha: float = 1e-4) -> bool:
    """Warn when the model's output changes between calls (a randomized defense).

    Calls the model ``n`` times, each with the ``j``-th draw of its params
    (``_core.redraw``: a randomized robustjax model draws from the key in its params), and
    compares the L2-normalised outputs and the number of correct predictions.
    """
    outs, correct = [], []
    for j in range(n):
        z = np.asarray(apply_fn(_core.redraw(params, j), x), np.float64)
        outs.append(z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-10))
        correct.append(int(np.sum(z.argmax(-1) == np.asarray(y))))
    diff = max((np.linalg.norm(outs[a] - outs[b], axis=-1).max()
                for a in range(n) for b in range(a + 1, n)), default=0.0)
    if len(set(correct)) > 1 or diff > alpha:
        _warn("the model's output changes from one call to the next (max difference of the "
              f"normalised outputs {diff:.2e}): it seems to be a randomized defense. Use "
              "AutoAttackConfig(version='rand') (APGD-CE and APGD-DLR with EOT over 20 draws) "
              f"instead; {DOC}.")
        return True
    return False


def check_range_output(apply_fn, params, x, alpha: float = 1e-5) -> int:
    """Warn when the outputs look like probabilities (in [0, 1], rows summing to 1): the
    attacks' losses expect logits. Returns the number of classes."""
    z = np.asarray(apply_fn(params, x), np.float64)
    if z.max() < 1 + alpha and z.min() > -alpha and np.all(np.abs(z.sum(-1) - 1) < alpha):
        _warn("the model's outputs are in [0, 1] and every row sums to 1: it seems to output "
              "probabilities, but AutoAttack's losses need logits. Remove the final softmax "
              f"(or return log-probabilities) before evaluating; {DOC}.")
    return int(z.shape[-1])


def check_dynamic(apply_fn, params, x) -> None:
    """Warn about a model that JAX cannot differentiate faithfully.

    ``differentiable = False`` on ``apply_fn`` (a non-differentiable defense) and an all-zero
    input gradient of some example are gradient masking (``GradientMaskingWarning``); a
    forward pass with a data-dependent loop or a host callback is a dynamic defense, against
    which AutoAttack's fixed attacks may be insufficient (the reference's ``check_dynamic``).
    """
    if getattr(apply_fn, "differentiable", True) is False:
        _warn(f"the model {apply_fn!r} is not differentiable, so AutoAttack's gradient-based "
              "attacks see no gradient and its robust accuracy is an overestimate. Evaluate "
              "robustjax.defenses.transforms.bpda(defended) (and eot(...) for a randomized "
              "defense) instead.", GradientMaskingWarning)
    jaxpr = jax.make_jaxpr(lambda z: apply_fn(params, z))(x)
    prims = set()

    def walk(jx):
        for eqn in jx.eqns:
            prims.add(eqn.primitive.name)
            for v in eqn.params.values():
                for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                    if hasattr(sub, "jaxpr"):
                        walk(sub.jaxpr if hasattr(sub.jaxpr, "eqns") else sub.jaxpr.jaxpr)
                    elif hasattr(sub, "eqns"):
                        walk(sub)

    walk(jaxpr.jaxpr)
    dynamic = prims & {"while", "pure_callback", "io_callback", "callback"}
    if dynamic:
        _warn(f"the model's forward pass contains {', '.join(sorted(dynamic))}: it seems to "
              "be a dynamic defense (input-dependent iterations or host code), and the "
              "evaluation with AutoAttack might be insufficient. Add an adaptive attack "
              f"designed for this defense; {DOC}.")

    def ce(z):
        logits = apply_fn(params, z)
        return jnp.sum(_core.cross_entropy(logits, jnp.argmax(logits, -1)))

    try:
        g = np.asarray(jax.grad(ce)(x)).reshape(x.shape[0], -1)
    except (ValueError, TypeError, NotImplementedError) as e:  # e.g. a dynamic while loop
        _warn(f"JAX cannot differentiate the model ({type(e).__name__}: {str(e)[:120]}): the "
              "gradient-based attacks will fail or see no gradient. Give its non-differentiable "
              "parts a BPDA backward pass (robustjax.attacks.bpda) or a scan with static "
              "length.", GradientMaskingWarning)
        return
    n_zero = int(np.sum(np.abs(g).sum(-1) == 0))
    if n_zero:
        _warn(f"{n_zero} of {x.shape[0]} points have an all-zero input gradient: gradient-based "
              "attacks cannot move them and the evaluation might be unreliable. Check for "
              "saturated or non-differentiable layers (use BPDA) and look at Square's results; "
              f"{DOC}.", GradientMaskingWarning)


def check_n_classes(n_cls: int, attacks, apgd_targets: int, fab_targets: int) -> None:
    """Raise when the DLR loss cannot be used; warn when more targets are asked than exist."""
    if "apgd-dlr" in attacks and n_cls < 3:
        raise ValueError(f"with only {n_cls} classes the DLR loss of APGD-DLR is undefined (it "
                         "needs >= 3 classes): drop 'apgd-dlr' (version='custom') or use "
                         "APGD-CE only")
    if "apgd-t" in attacks and n_cls < 4:
        raise ValueError(f"with only {n_cls} classes the targeted DLR loss of APGD-T is "
                         "undefined (it needs >= 4 classes): drop 'apgd-t' (version='custom')")
    for name, t in (("apgd-t", apgd_targets), ("fab-t", fab_targets)):
        if name in attacks and t + 1 > n_cls:
            _warn(f"{name.upper()} asks for {t} target classes but only {n_cls - 1} are "
                  f"possible with {n_cls} classes: it runs {n_cls - 1}. Set the number of "
                  "targets to at most (classes - 1) to silence this.")


def check_custom(config, randomized: bool) -> None:
    """Warn when a custom version uses fewer iterations, queries or EOT draws than
    AutoAttack's versions (its robust accuracy is then an overestimate)."""
    if config.version != "custom":
        return
    if config.steps < 100:
        _warn(f"custom version with steps={config.steps}: AutoAttack's attacks use 100 "
              "iterations; fewer overestimate the robust accuracy. Use steps=100.")
    if "square" in config.attacks and config.n_queries < 5000:
        _warn(f"custom version with n_queries={config.n_queries}: AutoAttack's Square uses "
              "5000 queries; use n_queries=5000 or more.")
    if any(a in config.attacks for a in ("apgd-ce", "apgd-dlr")) and config.apgd_restarts < 1:
        _warn("custom version without APGD restarts")
    if randomized and config.eot_iter < 20:
        _warn(f"a randomized model evaluated with eot_iter={config.eot_iter}: AutoAttack's rand "
              "version averages 20 draws per gradient; use eot_iter=20.")


def check_eps(eps: float, norm: str, n_features: int) -> None:
    """Warn about an eps beyond the norm's meaningful range for images in [0, 1]."""
    limit = {"linf": 1.0, "l2": float(np.sqrt(n_features)), "l1": float(n_features)}[norm]
    if eps >= limit:
        _warn(f"eps={eps} for the {norm} norm covers the whole [0, 1] image box (its "
              f"diameter is {limit:g}): every example can be changed into any image, so the "
              "robust accuracy is meaningless. Pixel-unit eps are e.g. 8/255 (Linf), 0.5 (L2), "
              "12 (L1) on CIFAR-10.")
    elif norm == "linf" and eps > 0.5:
        _warn(f"Linf eps={eps} > 0.5 lets every pixel reach either end of [0, 1]; did you "
              "mean a pixel-unit eps such as 8/255?")


def check_square_sr(accuracy_after: dict, alpha: float = 0.002) -> None:
    """Warn when Square (black-box) lowered the robust accuracy reached by the white-box
    attacks before it by more than ``alpha``: a sign of gradient masking."""
    if "square" in accuracy_after and len(accuracy_after) > 2:
        before = min(v for k, v in accuracy_after.items() if k != "square")
        if accuracy_after["square"] < before - alpha:
            _warn(f"Square Attack has decreased the robust accuracy by "
                  f"{before - accuracy_after['square']:.2%}: the gradient-based attacks may be "
                  "masked, and the evaluation using AutoAttack might be unreliable. Run Square "
                  "with more queries and restarts, or an adaptive attack.", GradientMaskingWarning)
