"""Noise corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019): gaussian, shot, impulse,
speckle. Batched, jittable, vmappable; every pixel and channel draws independently.

All functions take ``x`` float32 ``[B, H, W, 3]`` in [0, 1], a ``severity`` in 1..5 and a
PRNG ``key``; they return the same shape in [0, 1]. Parameters are the published ones (pixel
values scaled to [0, 1], which is also the scale of the reference's noise parameters).
The per-pixel draws come from ``_philox`` (Philox-2x32-10 keyed by ``key``), which fuses into
the noise kernel; ``jax.random``'s threefry alone would cost more than the reference.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.corruptions import _philox
from robustjax.corruptions._ops import param

GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)  # std of N(0, c^2) added to x
SHOT_NOISE = (60, 25, 12, 5, 3)  # photons per unit intensity: Poisson(x c) / c
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)  # salt-and-pepper amount (half salt, half pepper)
SPECKLE_NOISE = (0.15, 0.2, 0.35, 0.45, 0.6)  # std of the multiplicative noise: x + x N(0, c^2)


def gaussian_noise(x, severity, key, *, scale_pixels=False):
    """``clip(x + c n)``, ``n ~ N(0, 1)`` per pixel and channel, ``c = GAUSSIAN_NOISE[s-1]``."""
    del scale_pixels
    c = param(GAUSSIAN_NOISE, severity)
    return jnp.clip(x + c * _philox.normal(key, x.shape), 0.0, 1.0)


def shot_noise(x, severity, key, *, scale_pixels=False):
    """``clip(Poisson(x c) / c)``, ``c = SHOT_NOISE[s-1]``."""
    del scale_pixels
    c = param(SHOT_NOISE, severity)
    lam_max = SHOT_NOISE[severity - 1] if isinstance(severity, (int, np.integer)) else max(SHOT_NOISE)
    return jnp.clip(poisson(key, x * c, lam_max) / c, 0.0, 1.0)


def poisson_support(lam_max: float, tail: float = 1e-10) -> int:
    """Smallest ``K`` with ``P(Poisson(lam_max) > K) < tail``."""
    pmf = math.exp(-lam_max)
    cdf, k = pmf, 0
    while 1.0 - cdf >= tail:
        k += 1
        pmf *= lam_max / k
        cdf += pmf
    return k


def poisson(key, lam, lam_max: float):
    """Poisson samples (float32) for rates ``lam <= lam_max``, by inverse transform:
    ``k = #{i <= K : u > F(i)}`` for one uniform ``u`` per value, with ``F`` the CDF accumulated
    as ``p(i+1) = p(i) lam / (i+1)`` and ``K = poisson_support(lam_max)``.

    The ``K`` terms are unrolled so that XLA fuses them into one element-wise kernel (a
    ``while_loop`` would write its state to memory every trip, 2.5x slower). The truncation at
    ``K`` moves less than 1e-10 of probability per value, far below the float32 round-off of
    ``F`` (~1e-7) that any inverse-transform sampler in float32 has. Rates above 80 (where
    ``exp(-lam)`` underflows) use ``jax.random.poisson``."""
    if lam_max > 80:
        return jax.random.poisson(key, lam, lam.shape).astype(jnp.float32)
    u = _philox.uniform(key, lam.shape)
    p = jnp.exp(-lam)
    cdf, k = p, jnp.zeros(lam.shape, jnp.float32)
    for i in range(poisson_support(lam_max)):
        k = k + (u > cdf)
        p = p * lam * np.float32(1.0 / (i + 1))
        cdf = cdf + p
    return k


def impulse_noise(x, severity, key, *, scale_pixels=False):
    """Salt and pepper as ``skimage.util.random_noise(mode='s&p', amount=c)``: each value is
    replaced with probability ``c`` by 1 or 0 with equal odds."""
    del scale_pixels
    c = param(IMPULSE_NOISE, severity)
    u = _philox.uniform(key, x.shape)  # u < c: replaced; then u < c / 2: salt (equal odds)
    return jnp.where(u < c, (u < 0.5 * c).astype(x.dtype), x)


def speckle_noise(x, severity, key, *, scale_pixels=False):
    """``clip(x + x c n)``, ``n ~ N(0, 1)``, ``c = SPECKLE_NOISE[s-1]``."""
    del scale_pixels
    c = param(SPECKLE_NOISE, severity)
    return jnp.clip(x + x * c * _philox.normal(key, x.shape), 0.0, 1.0)
