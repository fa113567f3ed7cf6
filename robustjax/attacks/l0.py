"""L0 in pixels, the norm of the sparse attacks (one-pixel, Sparse-RS, JSMA).

A pixel counts once however many of its channels changed, as in Su et al. 2019 and Croce et
al. 2022 (Sparse-RS counts ``k`` pixels of an ``h x w`` image).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l0_pixels(delta: jax.Array) -> jax.Array:
    """Changed pixels per example: delta [b, H, W, C] -> float32 [b] (any channel != 0)."""
    changed = jnp.any(delta != 0, axis=-1)
    return jnp.sum(changed, axis=(1, 2)).astype(jnp.float32)


def l0_features(delta: jax.Array) -> jax.Array:
    """Changed features (pixel channels) per example: delta [b, ...] -> float32 [b]."""
    return jnp.sum((delta != 0).reshape(delta.shape[0], -1), axis=1).astype(jnp.float32)
