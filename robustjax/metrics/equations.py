"""The survey's equations (Gupta & Passerone, §5.3): robustness indicator (1), corruption error
(2), fooling rate (3), retention rate (4), certification condition (5), robustness curve.

* **Eq. (1)** ``R(f|x, y) = 1`` iff ``f(x') = f(x)`` for every ``x'`` in the perturbation set
  (the survey's condition compares with the clean *prediction*). ``require_correct=True`` also
  asks ``f(x) = y`` (robust *and* correct, "robust accuracy" when averaged).
* **Eq. (2)** mCE / relative mCE live in ``robustjax.corruptions.metrics`` (one
  implementation, shared); :func:`corruption_error`, :func:`mce` and :func:`relative_mce`
  here forward to it at call time.
* **Eq. (3)** fooling rate. The survey's ``FR = P / Q`` is garbled; robustjax uses the usual
  definitions: ``reference="label"`` (default) = share of the examples correct on clean input
  whose perturbed prediction is wrong; ``reference="prediction"`` = share of all examples whose
  perturbed prediction differs from the clean prediction (Moosavi-Dezfooli et al. 2017,
  universal perturbations: ``P(k(x + v) != k(x))``).
* **Eq. (4)** retention rate (Zhou et al. 2022) = accuracy on corrupted / accuracy on clean.
* **Eq. (5)** ``lower_y > upper_j for all j != y`` lives in ``robustjax.certify``;
  :func:`robust_condition` forwards to it at call time.
* **Robustness curve** (survey §5.3, after Dong et al. 2020): given each example's minimal
  adversarial perturbation size ``eps*_i`` (from a bisection search the caller runs; 0 for an
  example misclassified already, ``inf`` when no adversarial example was found), the curve at
  ``eps`` is the share of examples with ``eps*_i <= eps`` (the attack succeeds within budget
  ``eps``); ``1 - curve`` is the accuracy under attack at each budget.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from robustjax import validation
from robustjax.metrics.accumulators import Average, Ratio

Array = jax.Array


def robustness_indicator(logits_clean: Array, logits_perturbed: Array,
                         y: Optional[Array] = None, *, require_correct: bool = False) -> Array:
    """Eq. (1): bool ``[b]``, True where every perturbation keeps the clean prediction.

    Args:
      logits_clean: float ``[b, K]`` on the clean examples.
      logits_perturbed: float ``[m, b, K]``, the logits of ``m`` perturbed versions of each
        example (``[b, K]`` is taken as ``m = 1``).
      y: int ``[b]``, needed with ``require_correct=True``.
    """
    lc, lp = jnp.asarray(logits_clean), jnp.asarray(logits_perturbed)
    if lp.ndim == 2:
        lp = lp[None]
    if lp.shape[1:] != lc.shape:
        raise validation.InputError(
            f"logits_perturbed must be [m, b, K] with [b, K] = {jnp.shape(logits_clean)} "
            f"(the shape of logits_clean), got {jnp.shape(logits_perturbed)}")
    if require_correct and y is None:
        raise validation.InputError("require_correct=True needs the labels y")
    finish = validation.logits_checks(("logits_clean", lc), y=y)
    # per example (rows of [b, m * K]), so a bad row names the example
    finish_perturbed = validation.start_checks(
        logits=(("logits_perturbed", jnp.swapaxes(lp, 0, 1).reshape(lc.shape[0], -1)),))
    with validation.completing(finish), validation.completing(finish_perturbed):
        pred = jnp.argmax(lc, -1)
        r = jnp.all(jnp.argmax(lp, -1) == pred[None], axis=0)
        if require_correct:
            r = r & (pred == jnp.asarray(y))
        return r


def fooling_rate_stats(logits_clean: Array, logits_perturbed: Array, y: Optional[Array] = None,
                       *, reference: str = "label") -> Average:
    """Eq. (3) as a mergeable ``Average``; ``.compute()`` is the fooling rate in [0, 1].

    ``reference="label"`` needs ``y`` and counts clean-correct examples only;
    ``reference="prediction"`` compares with the clean prediction over all examples.
    """
    if reference not in ("label", "prediction"):
        raise validation.InputError(f"unknown reference {reference!r}; valid: 'label', "
                                    f"'prediction'")
    if reference == "label" and y is None:
        raise validation.InputError("reference='label' needs the labels y (or pass "
                                    "reference='prediction')")
    finish = validation.logits_checks(("logits_clean", logits_clean),
                                      ("logits_perturbed", logits_perturbed), y=y)
    with validation.completing(finish):
        return _fooling_rate_stats(logits_clean, logits_perturbed, y, reference=reference)


@functools.partial(jax.jit, static_argnames="reference")
def _fooling_rate_stats(logits_clean, logits_perturbed, y=None, *, reference="label"):
    pc, pp = jnp.argmax(logits_clean, -1), jnp.argmax(logits_perturbed, -1)
    if reference == "label":
        if y is None:
            raise ValueError("reference='label' needs the labels y")
        y = jnp.asarray(y)
        return Average.from_values(pp != y, pc == y)
    if reference == "prediction":
        return Average.from_values(pp != pc)
    raise ValueError(f"unknown reference {reference!r}; valid: 'label', 'prediction'")


def fooling_rate(logits_clean, logits_perturbed, y=None, *, reference: str = "label") -> Array:
    """One-shot eq. (3); see :func:`fooling_rate_stats`."""
    return fooling_rate_stats(logits_clean, logits_perturbed, y, reference=reference).compute()


def retention_rate_stats(logits_clean: Array, logits_corrupted: Array, y: Array) -> Ratio:
    """Eq. (4) as a mergeable ``Ratio`` (# correct on corrupted / # correct on clean)."""
    finish = validation.logits_checks(("logits_clean", logits_clean),
                                      ("logits_corrupted", logits_corrupted), y=y)
    with validation.completing(finish):
        return _retention_rate_stats(logits_clean, logits_corrupted, y)


@jax.jit
def _retention_rate_stats(logits_clean, logits_corrupted, y) -> Ratio:
    y = jnp.asarray(y)
    return Ratio.from_values(jnp.argmax(logits_corrupted, -1) == y,
                             jnp.argmax(logits_clean, -1) == y)


def retention_rate(logits_clean, logits_corrupted, y) -> Array:
    """One-shot eq. (4): corrupted accuracy / clean accuracy (NaN if clean accuracy is 0)."""
    return retention_rate_stats(logits_clean, logits_corrupted, y).compute()


@struct.dataclass
class RobustnessCurve:
    """Accumulator of the robustness curve on a fixed grid of budgets.

    ``eps``: float32 ``[n]`` the budgets (part of the state so merges check they agree);
    ``below``: ``Average`` of the per-example indicators ``eps*_i <= eps_k`` (vector ``[n]``).
    """

    eps: Array
    below: Average

    @classmethod
    def empty(cls, eps) -> "RobustnessCurve":
        return cls(jnp.asarray(eps, jnp.float32), Average.empty())

    @classmethod
    def from_min_eps(cls, min_eps: Array, eps) -> "RobustnessCurve":
        """``min_eps``: float ``[b]`` minimal perturbation sizes (``inf`` = not found)."""
        eps = jnp.asarray(eps, jnp.float32)
        if eps.ndim != 1:
            raise validation.InputError(f"eps must be a 1-D grid of budgets, got shape "
                                        f"{eps.shape}")
        min_eps = jnp.asarray(min_eps, jnp.float32)
        if min_eps.ndim != 1 or min_eps.shape[0] == 0:
            raise validation.InputError(f"min_eps must be a non-empty vector [b] of minimal "
                                        f"perturbation sizes, got shape {min_eps.shape}")
        if not isinstance(min_eps, jax.core.Tracer):
            bad = np.flatnonzero(np.isnan(np.asarray(min_eps)))
            if bad.size:
                raise validation.InputError(
                    f"min_eps is NaN at indices {bad[:10].tolist()}: use inf for an example "
                    f"without an adversarial example and 0 for one misclassified already")
        return cls(eps, _below(min_eps, eps))

    def merge(self, other: "RobustnessCurve") -> "RobustnessCurve":
        if self.eps.shape != other.eps.shape:
            raise ValueError("cannot merge robustness curves on different eps grids")
        concrete = not any(isinstance(e, jax.core.Tracer) for e in (self.eps, other.eps))
        if concrete and not np.array_equal(np.asarray(self.eps), np.asarray(other.eps)):
            raise ValueError("cannot merge robustness curves on different eps grids")
        return type(self)(self.eps, self.below.merge(other.below))

    def compute(self) -> Array:
        """float32 ``[n]``: share of examples with minimal perturbation <= each budget."""
        v = self.below.compute()
        return (jnp if isinstance(v, jax.Array) else np).broadcast_to(v, self.eps.shape)


@jax.jit
def _below(min_eps, eps) -> Average:
    return Average.from_values(min_eps[:, None] <= eps[None, :])


def robustness_curve(min_eps: Array, eps) -> Array:
    """One-shot robustness curve: ``mean_i [min_eps_i <= eps_k]`` for each budget ``eps_k``."""
    return RobustnessCurve.from_min_eps(min_eps, eps).compute()


# --- Shared implementations from other packages, imported at call time -------------------


def _corruption_metrics():
    try:
        from robustjax.corruptions import metrics
    except ImportError as e:
        raise ImportError("mCE lives in robustjax.corruptions.metrics, which is not "
                          f"available in this installation: {e}") from None
    return metrics


def corruption_error(*args, **kwargs):
    """Eq. (2): forwards to ``robustjax.corruptions.metrics.corruption_error``."""
    return _corruption_metrics().corruption_error(*args, **kwargs)


def mce(*args, **kwargs):
    """Mean corruption error: forwards to ``robustjax.corruptions.metrics.mce``."""
    return _corruption_metrics().mce(*args, **kwargs)


def relative_mce(*args, **kwargs):
    """Relative mCE: forwards to ``robustjax.corruptions.metrics.relative_mce``."""
    return _corruption_metrics().relative_mce(*args, **kwargs)


def robust_condition(*args, **kwargs):
    """Eq. (5): forwards to ``robustjax.certify``'s ``robust_condition(lower, upper, y)``
    (bool ``[b]``: ``lower_y > upper_j`` for all ``j != y``)."""
    try:
        from robustjax import certify
        fn = getattr(certify, "robust_condition", None)
        if fn is None:
            from robustjax.certify import api
            fn = api.robust_condition
    except ImportError as e:
        raise ImportError("the certification condition lives in robustjax.certify, which is "
                          f"not available in this installation: {e}") from None
    return fn(*args, **kwargs)
