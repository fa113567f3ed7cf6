"""Consistency-based robustness (survey Table 3): empirical noise insensitivity (ENI).

Definition (AISafety's ``ENI``; a local Lipschitz ratio of the loss, cf. Xu & Mannor 2012,
"Robustness and generalization"): for an example ``(x, y)`` and a perturbed version ``x'``
(adversarial or noisy),

    ENI(x, x') = |l(f(x), y) - l(f(x'), y)| / ||x - x'||_inf,

with ``l`` the cross-entropy at the true label; the metric is the mean over examples with
``x' != x``. Smaller is more insensitive (a local Lipschitz ratio of the loss).

Choices where AISafety's code differs: it sums the losses over the whole batch, divides by the
batch's largest L-infinity distance and then by the batch size, and evaluates the adversarial
loss at the *target* label; robustjax computes the ratio per example at the true label and
averages it, which is what the definition describes and streams exactly over batches.
Examples with ``||x - x'||_inf = 0`` are left out (the ratio is undefined).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import validation
from robustjax.metrics.accumulators import Average
from robustjax.metrics.task import _check_logits_labels

Array = jax.Array


def _checks(logits_clean, logits_pert, y, x, x_pert):
    validation.check_image_pair(x, x_pert, ("x", "x_pert"))
    finish_logits = validation.logits_checks(("logits_clean", logits_clean),
                                             ("logits_pert", logits_pert), y=y)
    if np.shape(logits_clean)[0] != np.shape(x)[0]:
        raise validation.InputError(
            f"logits_clean has {np.shape(logits_clean)[0]} rows but x has {np.shape(x)[0]} "
            f"images: pass the model's logits on x and x_pert.")
    finish_images = validation.start_checks(images=(("x", x), ("x_pert", x_pert)))

    def finish():
        finish_images()
        finish_logits()

    return finish


def eni_values(logits_clean: Array, logits_pert: Array, y: Array, x: Array,
               x_pert: Array) -> tuple[Array, Array]:
    """Per-example ENI ratios float32 ``[b]`` and the bool mask ``[b]`` of defined ones.

    ``logits_*`` float ``[b, K]`` of the model on ``x`` and ``x_pert`` (float NHWC in
    [0, 1]); concrete inputs are checked (``robustjax.validation``).
    """
    with validation.completing(_checks(logits_clean, logits_pert, y, x, x_pert)):
        return _eni_values(logits_clean, logits_pert, y, x, x_pert)


@jax.jit
def _eni_values(logits_clean, logits_pert, y, x, x_pert):
    lc, lp, y = jnp.asarray(logits_clean, jnp.float32), jnp.asarray(logits_pert, jnp.float32), \
        jnp.asarray(y)
    _check_logits_labels(lc, y, "logits_clean")
    _check_logits_labels(lp, y, "logits_pert")
    b = lc.shape[0]
    dist = jnp.max(jnp.abs(jnp.asarray(x_pert, jnp.float32) - jnp.asarray(x, jnp.float32))
                   .reshape(b, -1), axis=1)
    dl = jnp.abs(optax.softmax_cross_entropy_with_integer_labels(lc, y)
                 - optax.softmax_cross_entropy_with_integer_labels(lp, y))
    defined = dist > 0
    return jnp.where(defined, dl / jnp.where(defined, dist, 1.0), 0.0), defined


def eni_stats(logits_clean: Array, logits_pert: Array, y: Array, x: Array,
              x_pert: Array) -> Average:
    """Mergeable ``Average`` of ENI over the batch's defined examples; ``.compute()`` = ENI."""
    with validation.completing(_checks(logits_clean, logits_pert, y, x, x_pert)):
        return _eni_stats(logits_clean, logits_pert, y, x, x_pert)


@jax.jit
def _eni_stats(logits_clean, logits_pert, y, x, x_pert) -> Average:
    values, defined = _eni_values(logits_clean, logits_pert, y, x, x_pert)
    return Average.from_values(values, defined)


def eni(apply_fn, params, x: Array, y: Array, x_pert: Array) -> Array:
    """ENI of a model on one batch: ``x``, ``x_pert`` float NHWC in [0, 1], ``y`` int ``[b]``.

    The model is checked against ``x`` (``robustjax.validation``: NHWC, its channels and
    size, labels inside its classes) before it runs.
    """
    validation.check_image_pair(x, x_pert, ("x", "x_pert"))
    _, finish = validation.check_model_call(apply_fn, params, x, y)
    with validation.completing(finish):
        logits_clean = apply_fn(params, x)
    return eni_stats(logits_clean, apply_fn(params, x_pert), y, x, x_pert).compute()
