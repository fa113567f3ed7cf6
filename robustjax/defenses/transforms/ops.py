"""Pixel-space squeezing operations shared by input-transformation defenses and detectors.

Both are pure functions of an NHWC float batch in [0, 1]; shapes and dtypes are preserved.

* ``bit_depth_reduction`` (Xu et al. 2018, "Feature Squeezing"): ``round(x (2^b - 1)) / (2^b - 1)``.
* ``median_filter`` (Xu et al. 2018): per channel, the ``size x size`` window median with
  ``scipy.ndimage.median_filter``'s conventions: the window covers offsets
  ``-(size // 2) .. size - 1 - size // 2`` and the border is reflected half-sample
  (``mode="reflect"``, numpy's ``"symmetric"``); for an even window the value of rank
  ``size**2 // 2`` (the upper median) is taken, as scipy does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bit_depth_reduction(x: jax.Array, bits: int) -> jax.Array:
    """Quantise [0, 1] pixels to ``2**bits`` levels (``bits`` in 1..16, static)."""
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [1, 16], got {bits!r}")
    levels = float(2**bits - 1)
    return jnp.round(x * levels) / levels


def median_filter(x: jax.Array, size: int = 2) -> jax.Array:
    """Per-channel ``size x size`` median of an NHWC batch (scipy.ndimage conventions)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [batch, H, W, C], got shape {x.shape}")
    if size == 1:
        return x
    before = size // 2
    after = size - 1 - before
    padded = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), mode="symmetric")
    h, w = x.shape[1], x.shape[2]
    windows = jnp.stack([padded[:, i:i + h, j:j + w, :]
                         for i in range(size) for j in range(size)], axis=-1)
    return jnp.sort(windows, axis=-1)[..., (size * size) // 2]


__all__ = ["bit_depth_reduction", "median_filter"]
