"""Attack losses, all maximised by the attacker (see ``robustjax.attacks._core``): cross-entropy,
the C&W margin and DLR (Croce & Hein 2020), per example ``[b]``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def _true_and_best_other(logits: Array, y: Array) -> tuple[Array, Array]:
    """``z_y`` and ``max_{j != y} z_j``, each [b]."""
    k = logits.shape[-1]
    onehot = jax.nn.one_hot(y, k, dtype=bool)
    z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
    return z_y, other


def cross_entropy(logits: Array, y: Array, targeted: bool = False) -> Array:
    """Softmax cross-entropy [b]; negated when ``targeted`` (``y`` is then the target)."""
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y[:, None], axis=-1)[:, 0]
    return -ce if targeted else ce


def margin(logits: Array, y: Array, targeted: bool = False, kappa: float = math.inf) -> Array:
    """C&W margin (Carlini & Wagner 2017, f6) [b], capped at ``kappa``.

    Untargeted: ``min(max_{j != y} z_j - z_y, kappa)``; targeted (``y`` = target):
    ``min(z_y - max_{j != y} z_j, kappa)``. Positive means the attack has succeeded.
    """
    z_y, other = _true_and_best_other(logits, y)
    value = z_y - other if targeted else other - z_y
    return jnp.minimum(value, kappa)


def dlr(logits: Array, y: Array, targeted: bool = False) -> Array:
    """Difference of logits ratio (Croce & Hein 2020, eq. 5) [b], shift and scale invariant.

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi`` sorted
    decreasingly (needs >= 3 classes). Targeted (``y`` = target ``t``):
    ``(z_t - max_{i != t} z_i) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``, the paper's targeted
    DLR (eq. 6) with the best other class in place of the unknown true label (>= 4 classes).
    Negating the untargeted form instead would be flat (ratio -1) whenever ``t`` is third.
    For APGD-T's version with the true label see ``dlr_targeted``.
    """
    need = 4 if targeted else 3
    if logits.shape[-1] < need:
        raise ValueError(f"{'targeted ' if targeted else ''}DLR needs at least {need} classes, "
                         f"got logits of shape {logits.shape}")
    z_sorted = jnp.sort(logits, axis=-1)
    z_y, other = _true_and_best_other(logits, y)
    if targeted:
        scale = z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12
        return (z_y - other) / scale
    return -(z_y - other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_targeted(logits: Array, y: Array, target: Array) -> Array:
    """Targeted DLR of APGD-T (Croce & Hein 2020, eq. 6) [b]; ``y`` true, ``target`` wanted.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``; needs >= 4 classes.
    """
    if logits.shape[-1] < 4:
        raise ValueError(f"targeted DLR needs at least 4 classes, got {logits.shape}")
    z_sorted = jnp.sort(logits, axis=-1)
    z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    z_t = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
    scale = z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12
    return -(z_y - z_t) / scale


LOSSES = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return LOSSES[name]


def success_mask(logits: Array, y: Array, targeted: bool = False) -> Array:
    """[b] bool: ``argmax != y`` (untargeted) or ``argmax == y`` (targeted, y = target)."""
    pred = jnp.argmax(logits, axis=-1)
    return pred == y if targeted else pred != y
