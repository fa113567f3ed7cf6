"""Pieces every detector shares: input checks, a cached jit for eager calls, batched feature
extraction, and the decision rule ``detect(scores, threshold) = scores > threshold``.

The threshold itself comes from ``robustjax.metrics.threshold_at_fpr`` (the metric and the
detector must agree on what "5% FPR" means, so there is one implementation).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import validation


def is_traced(*trees) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(trees))


@functools.lru_cache(maxsize=None)
def jitted(fn: Callable, static_argnums: tuple[int, ...]) -> Callable:
    """``jax.jit(fn)`` once per (function, static positions): eager calls compile once."""
    return jax.jit(fn, static_argnums=static_argnums)


def check_x(x, name: str = "x") -> jax.Array:
    """``x`` as float32 NHWC in [0, 1] (values checked outside ``jit``), or a clear error."""
    validation.check_images(x, name=name)
    return jnp.asarray(x, jnp.float32)


def check_state(state: Any, cls: type, fit_name: str) -> None:
    """Raise a TypeError unless ``state`` is a ``cls`` made by ``fit_name``."""
    if not isinstance(state, cls):
        got = "None" if state is None else type(state).__name__
        raise TypeError(f"state must be a {cls.__name__} returned by {fit_name}(...), got "
                        f"{got}. Fit the detector on clean data first.")


def check_image_shape(x: jax.Array, fitted: tuple[int, ...], fit_name: str) -> None:
    if tuple(x.shape[1:]) != tuple(fitted):
        raise ValueError(f"x has per-image shape {tuple(x.shape[1:])} but the detector was "
                         f"fitted ({fit_name}) on images of shape {tuple(fitted)} (H, W, C); "
                         f"fit it again on images like these")


def map_batches(fn: Callable, x: jax.Array, batch_size: int) -> jax.Array:
    """``fn(x)`` evaluated in chunks of ``batch_size`` rows and concatenated (numpy-side loop,
    for fitting on a training set that does not fit one forward pass)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    n = x.shape[0]
    if n <= batch_size:
        return fn(x)
    return jnp.concatenate([fn(x[i:i + batch_size]) for i in range(0, n, batch_size)])


def detect(scores, threshold: float) -> jax.Array:
    """bool ``[b]``: flag ``scores > threshold`` (``scores`` float ``[b]``, higher = more likely
    adversarial; ``threshold`` from ``threshold_at_fpr`` on clean scores)."""
    s = jnp.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must be a vector [b] (one score per example), got shape "
                         f"{s.shape}")
    t = np.asarray(threshold) if not is_traced(threshold) else threshold
    if np.ndim(t) != 0:
        raise ValueError(f"threshold must be a scalar, got shape {np.shape(t)}")
    return s > t
