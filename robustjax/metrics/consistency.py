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
import optax

from robustjax.metrics.accumulators import Average
from robustjax.metrics.task import _check_logits_labels

Array = jax.Array


@jax.jit
def eni_values(logits_clean: Array, logits_pert: Array, y: Array, x: Array,
               x_pert: Array) -> tuple[Array, Array]:
    """Per-example ENI ratios float32 ``[b]`` and the bool mask ``[b]`` of defined ones.

    ``logits_*`` float ``[b, K]`` of the model on ``x`` and ``x_pert`` (float NHWC).
    """
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


@jax.jit
def eni_stats(logits_clean: Array, logits_pert: Array, y: Array, x: Array,
              x_pert: Array) -> Average:
    """Mergeable ``Average`` of ENI over the batch's defined examples; ``.compute()`` = ENI."""
    values, defined = eni_values(logits_clean, logits_pert, y, x, x_pert)
    return Average.from_values(values, defined)


def eni(apply_fn, params, x: Array, y: Array, x_pert: Array) -> Array:
    """ENI of a model on one batch: ``x``, ``x_pert`` float NHWC in [0, 1], ``y`` int ``[b]``."""
    return eni_stats(apply_fn(params, x), apply_fn(params, x_pert), y, x, x_pert).compute()
