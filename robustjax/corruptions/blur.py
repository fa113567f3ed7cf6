"""Blur corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019): defocus, glass, motion,
zoom, and the extra gaussian blur.

``x`` is float32 ``[B, H, W, 3]`` in [0, 1]; ``severity`` a Python int in 1..5; ``key`` a PRNG
key (used by glass and motion blur). The reference parameters are in pixels for 224 x 224 images;
with ``scale_pixels=True`` pixel-unit parameters (radii, sigmas, shifts) are multiplied by
``min(H, W) / 224`` (documented deviation, for small images such as 28 x 28 MNIST).
All are jittable; glass blur runs its ``(H - 2d) (W - 2d) iterations`` sequential pixel moves
in a ``lax.fori_loop`` (vectorised over the batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.corruptions import _ops

GAUSSIAN_BLUR = (1, 2, 3, 4, 6)  # sigma (pixels)
DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # disk radius, alias blur
GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # sigma, delta, iters
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # radius, sigma (pixels)
ZOOM_BLUR = (
    np.arange(1, 1.11, 0.01),
    np.arange(1, 1.16, 0.01),
    np.arange(1, 1.21, 0.02),
    np.arange(1, 1.26, 0.02),
    np.arange(1, 1.31, 0.03),
)  # zoom factors averaged with the image


def gaussian_blur(x, severity, key=None, *, scale_pixels=False):
    """``skimage.filters.gaussian(x, sigma=c)`` (mode 'nearest', truncate 4), clipped."""
    del key
    sigma = GAUSSIAN_BLUR[severity - 1] * _ops.pixel_scale(x.shape, scale_pixels)
    return jnp.clip(_ops.gaussian_blur_image(x, sigma), 0.0, 1.0)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """imagecorruptions' anti-aliased disk: a normalised disk on a 17 x 17 grid (radius <= 8) or
    ``2r+1`` grid, smoothed by a 3 x 3 (5 x 5) Gaussian of std ``alias_blur`` with OpenCV's
    BORDER_REFLECT_101."""
    half = 8 if radius <= 8 else int(np.ceil(radius))
    ksize = 3 if radius <= 8 else 5
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-((np.arange(ksize) - (ksize - 1) / 2) ** 2) / (2 * alias_blur**2))
    m = _ops.filter_matrix(len(grid), g / g.sum(), "mirror")
    return (m @ disk @ m.T).astype(np.float32)


def defocus_blur(x, severity, key=None, *, scale_pixels=False):
    """Convolution with ``disk_kernel`` (OpenCV ``filter2D``, BORDER_REFLECT_101), clipped."""
    del key
    radius, alias = DEFOCUS_BLUR[severity - 1]
    radius = radius * _ops.pixel_scale(x.shape, scale_pixels)
    kernel = disk_kernel(radius, alias)
    return jnp.clip(_ops.conv2d_same(x, kernel, "reflect"), 0.0, 1.0)


def motion_blur_with_angle(x, severity, angle, *, scale_pixels=False):
    """Motion blur of every image of ``x`` along ``angle`` (degrees, ``[B]``): deterministic part."""
    radius, sigma = MOTION_BLUR[severity - 1]
    px = _ops.pixel_scale(x.shape, scale_pixels)
    radius, sigma = max(1, int(round(radius * px))), sigma * px
    blur = jax.vmap(lambda im, a: _ops.motion_blur_image(im, radius, sigma, a))
    return jnp.clip(blur(x, angle), 0.0, 1.0)


def motion_blur(x, severity, key, *, scale_pixels=False):
    """Motion blur along a direction drawn uniformly in [-45, 45) degrees per image."""
    angle = jax.random.uniform(key, (x.shape[0],), minval=-45.0, maxval=45.0)
    return motion_blur_with_angle(x, severity, angle, scale_pixels=scale_pixels)


def zoom_blur(x, severity, key=None, *, scale_pixels=False):
    """Mean of ``x`` and its central zooms by each factor (``clipped_zoom``, scipy order 1)."""
    del key, scale_pixels  # zoom factors are relative to the image size already
    h, w = x.shape[-3], x.shape[-2]
    out = x
    for z in ZOOM_BLUR[severity - 1]:
        taps_h = _ops.matrix_taps(_ops.clipped_zoom_matrix(h, float(z)))
        taps_w = _ops.matrix_taps(_ops.clipped_zoom_matrix(w, float(z)))
        out = out + _ops.apply_taps(x, taps_h, taps_w)
    return jnp.clip(out / (len(ZOOM_BLUR[severity - 1]) + 1), 0.0, 1.0)


def _glass_moves(img, offsets, delta):
    """The reference's sequential pixel moves: for each iteration, h from H-d down to d+1, w from
    W-d down to d+1, ``img[h, w] = img[h + dy, w + dx]`` (NumPy's tuple 'swap' on pixel views
    copies rather than swaps; the reference therefore moves pixels, and so do we)."""
    h, w = img.shape[0], img.shape[1]
    iters, nh, nw = offsets.shape[:3]

    def body(t, im):
        i, r = t // (nh * nw), t % (nh * nw)
        a, b = r // nw, r % nw
        hh, ww = h - delta - a, w - delta - b
        dx, dy = offsets[i, a, b, 0], offsets[i, a, b, 1]
        src = jax.lax.dynamic_slice(im, (hh + dy, ww + dx, 0), (1, 1, im.shape[2]))
        return jax.lax.dynamic_update_slice(im, src, (hh, ww, 0))

    return jax.lax.fori_loop(0, iters * nh * nw, body, img)


def glass_blur(x, severity, key, *, scale_pixels=False):
    """Gaussian blur, quantise to uint8 (truncation, as the reference), local pixel moves by
    offsets uniform in ``[-d, d)``, Gaussian blur again."""
    sigma, delta, iters = GLASS_BLUR[severity - 1]
    px = _ops.pixel_scale(x.shape, scale_pixels)
    sigma, delta = sigma * px, max(1, int(round(delta * px)))
    h, w = x.shape[-3], x.shape[-2]
    nh, nw = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    y = jnp.floor(_ops.gaussian_blur_image(x, sigma) * 255.0) / 255.0
    offsets = jax.random.randint(key, (x.shape[0], iters, nh, nw, 2), -delta, delta)
    y = jax.vmap(lambda im, off: _glass_moves(im, off, delta))(y, offsets)
    return jnp.clip(_ops.gaussian_blur_image(y, sigma), 0.0, 1.0)
