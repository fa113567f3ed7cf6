"""Noise corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019): gaussian, shot, impulse,
speckle. Batched, jittable, vmappable; every pixel and channel draws independently.

All functions take ``x`` float32 ``[B, H, W, 3]`` in [0, 1], a Python ``severity`` in 1..5 and a
PRNG ``key``; they return the same shape in [0, 1]. Parameters are the published ones (pixel
values scaled to [0, 1], which is also the scale of the reference's noise parameters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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
    return jnp.clip(poisson(key, x * c, max(SHOT_NOISE)) / c, 0.0, 1.0)


def poisson(key, lam, lam_max: float):
    """Poisson samples (float32) by inverse transform: ``k = #{i : u > F(i)}`` for one uniform
    ``u`` per value, with ``F`` the CDF accumulated as ``p(i+1) = p(i) lam / (i+1)``; the loop
    runs until every value is placed. Much faster than ``jax.random.poisson`` on a CPU for the
    rates of shot noise; rates above 80 (where ``exp(-lam)`` underflows) use it instead."""
    if lam_max > 80:
        return jax.random.poisson(key, lam, lam.shape).astype(jnp.float32)
    u = jax.random.uniform(key, lam.shape)
    cap = float(np.ceil(lam_max + 12 * np.sqrt(lam_max) + 20))  # float32 round-off guard

    def cond(state):
        i, _, cdf, _ = state
        return (i < cap) & jnp.any(u > cdf)

    def body(state):
        i, p, cdf, k = state
        for _ in range(8):  # 8 steps per loop trip: fewer reductions and state copies
            k = k + (u > cdf)
            p = p * lam / (i + 1.0)
            i, cdf = i + 1.0, cdf + p
        return i, p, cdf, k

    p0 = jnp.exp(-lam)
    state = (jnp.float32(0.0), p0, p0, jnp.zeros(lam.shape, jnp.float32))
    return jax.lax.while_loop(cond, body, state)[3]


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
