"""Noise corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019): gaussian, shot, impulse,
speckle. Batched, jittable, vmappable; every pixel and channel draws independently.

All functions take ``x`` float32 ``[B, H, W, 3]`` in [0, 1], a Python ``severity`` in 1..5 and a
PRNG ``key``; they return the same shape in [0, 1]. Parameters are the published ones (pixel
values scaled to [0, 1], which is also the scale of the reference's noise parameters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robustjax.corruptions._ops import param

GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)  # std of N(0, c^2) added to x
SHOT_NOISE = (60, 25, 12, 5, 3)  # photons per unit intensity: Poisson(x c) / c
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)  # salt-and-pepper amount (half salt, half pepper)
SPECKLE_NOISE = (0.15, 0.2, 0.35, 0.45, 0.6)  # std of the multiplicative noise: x + x N(0, c^2)


def gaussian_noise(x, severity, key, *, scale_pixels=False):
    """``clip(x + c n)``, ``n ~ N(0, 1)`` per pixel and channel, ``c = GAUSSIAN_NOISE[s-1]``."""
    del scale_pixels
    c = param(GAUSSIAN_NOISE, severity)
    return jnp.clip(x + c * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


def shot_noise(x, severity, key, *, scale_pixels=False):
    """``clip(Poisson(x c) / c)``, ``c = SHOT_NOISE[s-1]``."""
    del scale_pixels
    c = param(SHOT_NOISE, severity)
    counts = jax.random.poisson(key, x * c, x.shape)  # c may be traced (one compile for all)
    return jnp.clip(counts.astype(x.dtype) / c, 0.0, 1.0)


def impulse_noise(x, severity, key, *, scale_pixels=False):
    """Salt and pepper as ``skimage.util.random_noise(mode='s&p', amount=c)``: each value is
    replaced with probability ``c`` by 1 or 0 with equal odds."""
    del scale_pixels
    c = param(IMPULSE_NOISE, severity)
    k_flip, k_salt = jax.random.split(key)
    flipped = jax.random.uniform(k_flip, x.shape) < c
    salted = jax.random.uniform(k_salt, x.shape) < 0.5
    return jnp.where(flipped, salted.astype(x.dtype), x)


def speckle_noise(x, severity, key, *, scale_pixels=False):
    """``clip(x + x c n)``, ``n ~ N(0, 1)``, ``c = SPECKLE_NOISE[s-1]``."""
    del scale_pixels
    c = param(SPECKLE_NOISE, severity)
    return jnp.clip(x + x * c * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)
