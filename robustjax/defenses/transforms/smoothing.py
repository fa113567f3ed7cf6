"""Smoothing transformations: Gaussian and mean filters, total-variation minimisation.

All take an NHWC float batch in [0, 1] and return the same shape and dtype, in [0, 1]; every
channel of every image is filtered on its own.

* ``gaussian_filter``: ``scipy.ndimage.gaussian_filter`` over H and W (``sigma``, ``truncate``,
  border ``mode="reflect"``, i.e. half-sample symmetric); a spatial-smoothing defense
  (Li & Li 2017; the local smoothing of Xu et al. 2018, "Feature Squeezing").
* ``mean_filter``: ``scipy.ndimage.uniform_filter`` of ``size`` over H and W (same border and
  window conventions as ``ops.median_filter``).
* ``tv_minimisation`` (Guo et al. 2018, "Countering adversarial images using input
  transformations", Sec. 3.2; Rudin, Osher & Fatemi 1992): per channel,
  ``argmin_z 1/2 ||z - x||_2^2 + weight * TV(z)`` with the isotropic TV of forward
  differences, solved by ``steps`` iterations of Chambolle's (2004) dual projection algorithm
  (step ``tau = 1/4``), exactly as ``skimage.restoration.denoise_tv_chambolle(x, weight,
  eps=0, max_num_iter=steps, channel_axis=-1)``. Guo et al. also drop pixels at random and
  fit only the kept ones; that variant (``keep_prob < 1``) would make the transform random and
  is not implemented here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _check_nhwc(x) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [batch, H, W, C], got shape {tuple(x.shape)}")


def _separable(x, kernel: np.ndarray, before: int):
    """Correlate H and W of NHWC ``x`` with the 1-D ``kernel`` (symmetric-padded borders)."""
    after = len(kernel) - 1 - before
    k = jnp.asarray(kernel, x.dtype)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (before, after)
        p = jnp.pad(x, pad, mode="symmetric")
        n = x.shape[axis]
        x = sum(k[i] * jnp.take(p, jnp.arange(i, i + n), axis=axis) for i in range(len(kernel)))
    return x


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy's 1-D Gaussian: radius ``int(truncate * sigma + 0.5)``, weights summing to 1."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * t * t / (sigma * sigma))
    return (w / w.sum()).astype(np.float32)


def gaussian_filter(x, key=None, *, sigma: float = 1.0, truncate: float = 4.0):
    """Gaussian smoothing of H and W with standard deviation ``sigma`` pixels."""
    del key
    _check_nhwc(x)
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
    kernel = gaussian_kernel(float(sigma), truncate)
    return _separable(x, kernel, len(kernel) // 2)


def mean_filter(x, key=None, *, size: int = 3):
    """Mean over ``size x size`` windows (scipy.ndimage.uniform_filter conventions)."""
    del key
    _check_nhwc(x)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return _separable(x, np.full(size, 1.0 / size, np.float32), size // 2)


def _grad(u):
    """Forward differences of [b, H, W, C] along H and W, zero at the last row/column."""
    gh = jnp.pad(u[:, 1:] - u[:, :-1], ((0, 0), (0, 1), (0, 0), (0, 0)))
    gw = jnp.pad(u[:, :, 1:] - u[:, :, :-1], ((0, 0), (0, 0), (0, 1), (0, 0)))
    return gh, gw


def _neg_div(ph, pw):
    """skimage's ``d``: the negative adjoint of ``_grad`` applied to the dual field."""
    d = -(ph + pw)
    d = d.at[:, 1:].add(ph[:, :-1])
    return d.at[:, :, 1:].add(pw[:, :, :-1])


def total_variation(x):
    """Isotropic TV per image and channel summed: ``sum sqrt(dh^2 + dw^2)`` -> [b] float32."""
    gh, gw = _grad(x)
    return jnp.sum(jnp.sqrt(gh * gh + gw * gw), axis=(1, 2, 3))


def tv_minimisation(x, key=None, *, weight: float = 0.1, steps: int = 50):
    """ROF total-variation denoising of every channel (Chambolle 2004), clipped to [0, 1].

    ``weight`` is the TV weight (skimage's ``weight``); larger is smoother.
    """
    del key
    _check_nhwc(x)
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
        raise ValueError(f"weight must be a positive number, got {weight!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    tau = 0.25  # 1 / (2 ndim), the largest step for which Chambolle's iteration converges

    def dual_step(_, p):
        gh, gw = _grad(x + _neg_div(*p))
        norm = 1.0 + jnp.sqrt(gh * gh + gw * gw) * (tau / weight)
        return (p[0] - tau * gh) / norm, (p[1] - tau * gw) / norm

    # skimage's iteration i returns x + div(p_i) after i dual steps: steps - 1 of them here
    zeros = jnp.zeros_like(x)
    ph, pw = jax.lax.fori_loop(0, steps - 1, dual_step, (zeros, zeros))
    out = x + _neg_div(ph, pw)
    return jnp.clip(out, 0.0, 1.0)


__all__ = ["gaussian_filter", "gaussian_kernel", "mean_filter", "total_variation",
           "tv_minimisation"]
