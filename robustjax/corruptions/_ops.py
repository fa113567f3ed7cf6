"""Linear operators and colour conversions shared by the corruptions.

Every separable linear filter (Gaussian blur with a boundary mode, 1-D interpolation for zooms,
Pillow's box and nearest resizes, OpenCV's bicubic resize) is a matrix ``M`` of shape
``[out, in]`` built once in NumPy (float64, static shapes) and applied in JAX as
``M_h @ img @ M_w.T`` per channel. The matrices reproduce the reference libraries' index
conventions (SciPy ``ndimage``, Pillow, OpenCV) so the corruptions agree with
``imagecorruptions`` pixel for pixel up to float rounding.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.corruptions._fusion import (  # noqa: F401 (re-exported)
    computed,
    map_batch,
    map_images,
    materialize,
)

Array = jax.Array

# SciPy ndimage boundary modes -> a function mapping an out-of-range integer index into range.


def _reflect_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Maps integer indices into [0, n) the way ``scipy.ndimage`` extends a signal."""
    if mode == "nearest":  # a a a | a b c d | d d d
        return np.clip(i, 0, n - 1)
    if mode == "reflect":  # d c b a | a b c d | d c b a   (half-sample symmetric)
        period = 2 * n
        i = np.mod(i, period)
        return np.where(i >= n, period - 1 - i, i)
    if mode == "mirror":  # d c b | a b c d | c b a   (OpenCV BORDER_REFLECT_101)
        if n == 1:
            return np.zeros_like(i)
        period = 2 * n - 2
        i = np.mod(i, period)
        return np.where(i >= n, period - i, i)
    raise ValueError(f"mode must be 'nearest', 'reflect' or 'mirror', got {mode!r}")


def filter_matrix(n: int, kernel: np.ndarray, mode: str) -> np.ndarray:
    """The ``[n, n]`` matrix of a centred 1-D correlation with ``kernel`` (odd length)."""
    radius = len(kernel) // 2
    mat = np.zeros((n, n))
    rows = np.arange(n)
    for j, w in enumerate(kernel):
        cols = _reflect_index(rows + j - radius, n, mode)
        np.add.at(mat, (rows, cols), w)
    return mat


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """SciPy's ``gaussian_filter`` kernel: radius ``int(truncate * sigma + 0.5)``, sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


@functools.lru_cache(maxsize=None)
def gaussian_matrix(n: int, sigma: float, mode: str = "nearest", truncate: float = 4.0):
    """``skimage.filters.gaussian`` along one axis (default mode 'nearest', truncate 4)."""
    return filter_matrix(n, gaussian_kernel1d(sigma, truncate), mode).astype(np.float32)


@functools.lru_cache(maxsize=None)
def zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``scipy.ndimage.zoom(order=1)`` along one axis: output i samples input i*(n_in-1)/(n_out-1)."""
    mat = np.zeros((n_out, n_in))
    ratio = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    coord = np.arange(n_out) * ratio
    i0 = np.clip(np.floor(coord).astype(int), 0, n_in - 1)
    i1 = np.clip(i0 + 1, 0, n_in - 1)
    frac = coord - i0
    np.add.at(mat, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(mat, (np.arange(n_out), i1), frac)
    return mat.astype(np.float32)


@functools.lru_cache(maxsize=None)
def clipped_zoom_matrix(n: int, factor: float, n_keep: int | None = None) -> np.ndarray:
    """imagecorruptions' ``clipped_zoom`` along one axis as a ``[n_keep, n]`` matrix.

    Crops the central ``ceil(n / factor)`` samples, zooms them by ``factor`` with
    ``scipy.ndimage.zoom(order=1)`` (output length ``round(crop * factor)``) and keeps the first
    ``n_keep`` outputs (default ``n``); rows past the zoomed length are zero, as the reference
    adds a too-short layer only where it exists.
    """
    n_keep = n if n_keep is None else n_keep
    top, crop = clipped_zoom_crop(n, factor)
    n_out = int(round(crop * float(factor)))
    z = zoom_matrix(crop, n_out).astype(np.float64)
    mat = np.zeros((n_keep, n))
    m = min(n_keep, n_out)
    mat[:m, top : top + crop] = z[:m]
    return mat.astype(np.float32)


def clipped_zoom_crop(n: int, factor: float) -> tuple[int, int]:
    """(start, length) of the central part of an ``n``-long axis that ``clipped_zoom`` reads."""
    crop = int(np.ceil(n / float(factor)))
    return (n - crop) // 2, crop


def clipped_zoom_size(n: int, factor: float) -> int:
    return int(round(clipped_zoom_crop(n, factor)[1] * float(factor)))


@functools.lru_cache(maxsize=None)
def pil_box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's ``Image.BOX`` resample along one axis (``precompute_coeffs`` of Resample.c)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    mat = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        xs = np.arange(xmin, xmax)
        t = (xs - center + 0.5) / filterscale
        w = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
        mat[xx, xs] = w / w.sum()
    return mat.astype(np.float32)


@functools.lru_cache(maxsize=None)
def pil_nearest_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's ``Image.NEAREST`` resize along one axis: source ``floor((x + 0.5) * n_in / n_out)``."""
    src = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(int)
    mat = np.zeros((n_out, n_in), np.float32)
    mat[np.arange(n_out), np.clip(src, 0, n_in - 1)] = 1.0
    return mat


def cv2_cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """OpenCV's ``INTER_CUBIC`` resize along one axis (A = -0.75, half-pixel centres, replicate)."""
    a = -0.75
    scale = n_in / n_out
    fx = (np.arange(n_out) + 0.5) * scale - 0.5
    sx = np.floor(fx).astype(int)
    t = fx - sx
    w = np.stack(
        [
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            np.zeros_like(t),
        ],
        axis=1,
    )
    w[:, 3] = 1.0 - w[:, :3].sum(axis=1)
    mat = np.zeros((n_out, n_in))
    for k in range(4):
        np.add.at(mat, (np.arange(n_out), np.clip(sx - 1 + k, 0, n_in - 1)), w[:, k])
    return mat


def apply_separable(img: Array, mat_h, mat_w) -> Array:
    """``mat_h @ img @ mat_w.T`` on every channel; ``img`` is ``[..., H, W, C]``.

    Banded matrices (Gaussian kernels, resizes) are applied as a few shifted gathers, which on a
    CPU is several times cheaper than dense matrix products for 224-px images."""
    mat_h, mat_w = np.asarray(mat_h), np.asarray(mat_w)
    taps = max(int((mat_h != 0).sum(1).max()), int((mat_w != 0).sum(1).max()))
    if taps * 6 <= min(mat_h.shape[1], mat_w.shape[1]):
        return apply_taps(img, matrix_taps(mat_h), matrix_taps(mat_w))
    out = jnp.einsum("ih,...hwc->...iwc", jnp.asarray(mat_h, img.dtype), img)
    return jnp.einsum("jw,...iwc->...ijc", jnp.asarray(mat_w, img.dtype), out)


_PAD_MODES = {"nearest": "edge", "reflect": "symmetric", "mirror": "reflect"}


def filter_axis(img: Array, kernel: np.ndarray, mode: str, axis: int) -> Array:
    """Centred 1-D correlation along ``axis`` with SciPy's boundary ``mode``, as a sum of static
    slices of the padded array (no gathers: XLA fuses gathers badly into later gathers). The
    axis is merged with all minor axes first, so each slice is one contiguous run: XLA:CPU does
    not vectorise a loop whose innermost axis is the 3 colour channels (2x slower)."""
    r = len(kernel) // 2
    n = img.shape[axis]
    pad = [(0, 0)] * img.ndim
    pad[axis] = (r, r)
    if r >= n and mode != "nearest":  # reflections wider than the signal: fall back to a matrix
        mat = jnp.asarray(filter_matrix(n, kernel, mode), img.dtype)
        return jnp.moveaxis(jnp.tensordot(mat, jnp.moveaxis(img, axis, 0), axes=1), 0, axis)
    return correlate_valid(jnp.pad(img, pad, mode=_PAD_MODES[mode]), kernel, axis)


def correlate_valid(img: Array, kernel, axis: int) -> Array:
    """The 'valid' 1-D correlation of ``img`` with ``kernel`` along ``axis`` (the axis shrinks
    by ``len(kernel) - 1``), as a sum of static slices of ``img`` with the axis merged into the
    minor axes (one contiguous run per slice)."""
    axis = axis % img.ndim
    n = img.shape[axis] - len(kernel) + 1
    inner = math.prod(img.shape[axis + 1:])
    flat = img.reshape(img.shape[:axis] + (-1,))
    out = None
    for t, k in enumerate(kernel):
        if k == 0:
            continue
        tap = jax.lax.slice_in_dim(flat, t * inner, (t + n) * inner, axis=axis)
        tap = tap if k == 1 else float(k) * tap
        out = tap if out is None else out + tap
    return out.reshape(img.shape[:axis] + (n,) + img.shape[axis + 1:])


def gaussian_blur_image(img: Array, sigma, mode: str = "nearest", truncate: float = 4.0) -> Array:
    """``skimage.filters.gaussian(img, sigma, mode, truncate, channel_axis=-1)`` on ``[..., H, W, C]``."""
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    out = filter_axis(img, gaussian_kernel1d(float(sy), truncate), mode, img.ndim - 3)
    return filter_axis(out, gaussian_kernel1d(float(sx), truncate), mode, img.ndim - 2)


def rgb_to_gray(img: Array) -> Array:
    """ITU-R 601 luma (OpenCV ``COLOR_RGB2GRAY``) of ``[..., 3]`` -> ``[..., 1]``."""
    return img @ jnp.asarray([[0.299], [0.587], [0.114]], img.dtype)


def hsv_value_shift(x: Array, c) -> Array:
    """skimage's ``hsv2rgb`` of ``rgb2hsv(x)`` with the value ``v -> clip(v + c, 0, 1)``, for
    ``[..., 3]`` images in [0, 1].

    Every RGB component of an HSV colour is ``v`` times a function of hue and saturation, so
    with those kept the round trip is ``x v' / v`` (and grey ``v'`` where ``v = 0``): the same
    values as converting both ways, to float32 rounding, with 8x less arithmetic."""
    v = jnp.max(x, axis=-1, keepdims=True)
    new_v = jnp.clip(v + c, 0.0, 1.0)
    return jnp.where(v > 0, x * (new_v / jnp.where(v > 0, v, 1.0)), new_v)


def conv2d_same(img: Array, kernel: np.ndarray, pad_mode: str = "reflect") -> Array:
    """A 2-D correlation of every channel of ``[..., H, W, C]`` with an odd square ``kernel``,
    through FFTs of the padded image (XLA's CPU depthwise convolution is slow for 17-21 px
    kernels). ``pad_mode`` is a ``jnp.pad`` mode; 'reflect' is OpenCV's BORDER_REFLECT_101."""
    r = kernel.shape[0] // 2
    h, w = img.shape[-3], img.shape[-2]
    lead = [(0, 0)] * (img.ndim - 3)
    padded = jnp.pad(img, lead + [(r, r), (r, r), (0, 0)], mode=pad_mode)
    # FFT sizes with only the factors 2, 3, 5 (a padded 244 = 4 x 61 costs twice 250); any
    # size >= the padded image keeps wrap-around out of the kept region
    ph, pw = _smooth_size(h + 2 * r), _smooth_size(w + 2 * r)
    # correlation = convolution with the flipped kernel; place it so output (i, j) lands at
    # padded (i + r, j + r) without wrap-around into the kept region
    kf = np.zeros((ph, pw), np.float64)
    kf[: kernel.shape[0], : kernel.shape[1]] = kernel[::-1, ::-1]
    kf_hat = jnp.asarray(np.fft.rfft2(kf), jnp.complex64)
    img_hat = jnp.fft.rfft2(jnp.moveaxis(padded, -1, -3), s=(ph, pw))
    out = jnp.fft.irfft2(img_hat * kf_hat, s=(ph, pw))
    out = jnp.moveaxis(out, -3, -1)
    return out[..., 2 * r : 2 * r + h, 2 * r : 2 * r + w, :].astype(img.dtype)


def _smooth_size(n: int) -> int:
    """The smallest ``m >= n`` whose only prime factors are 2, 3 and 5."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def motion_blur_image(img: Array, radius: int, sigma: float, angle_deg) -> Array:
    """imagecorruptions' ``_motion_blur`` on ``[H, W, C]`` for a traced angle (degrees).

    The image is the sum over ``i < 2*radius+1`` of a half-Gaussian weight times the image shifted
    by ``-ceil(i*sin(angle) - 0.5)`` rows and ``-ceil(i*cos(angle) - 0.5)`` columns with edge
    replication; like the reference, shifts that leave the image stop the sum (weights not
    renormalised).
    """
    width = 2 * int(radius) + 1
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    k = jnp.asarray(k / k.sum(), jnp.float32)
    a = jnp.deg2rad(jnp.asarray(angle_deg, jnp.float32))
    i = jnp.arange(width, dtype=jnp.float32)
    dys = -jnp.ceil(i * jnp.sin(a) - 0.5).astype(jnp.int32)
    dxs = -jnp.ceil(i * jnp.cos(a) - 0.5).astype(jnp.int32)
    h, w = img.shape[0], img.shape[1]
    inside = (jnp.abs(dys) < h) & (jnp.abs(dxs) < w)
    k = k * jnp.cumprod(inside.astype(jnp.float32))
    pad, c = width, img.shape[2]
    # columns and channels merged: each tap is a run of W * C values (XLA:CPU vectorises the
    # minor axis; a minor axis of 3 channels runs ~2x slower)
    padded = jnp.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge").reshape(h + 2 * pad, -1)
    out = jnp.zeros((h, w * c), img.dtype)
    # unrolled, not a scan: the taps fuse into one pass over the image
    for t in range(width):
        out = out + k[t] * jax.lax.dynamic_slice(padded, (pad - dys[t], (pad - dxs[t]) * c), (h, w * c))
    return out.reshape(img.shape)


def as_rgb(x: Array) -> tuple[Array, int]:
    """Grayscale ``[..., 1]`` -> 3 equal channels (as imagecorruptions does); returns the channels."""
    c = x.shape[-1]
    if c == 1:
        return jnp.repeat(x, 3, axis=-1), 1
    if c == 3:
        return x, 3
    raise ValueError(f"corruptions expect 1 or 3 channels (NHWC), got shape {x.shape}")


def from_rgb(x: Array, channels: int) -> Array:
    """Back to the caller's channel count; grayscale outputs are the ITU-R 601 luma."""
    return rgb_to_gray(x) if channels == 1 else x


def pixel_scale(shape, scale_pixels: bool, reference: int = 224) -> float:
    """1 (published pixel parameters) or ``min(H, W) / 224`` when scaling to the image size."""
    return min(shape[-3], shape[-2]) / reference if scale_pixels else 1.0


def ceil_int(v: float) -> int:
    return int(math.ceil(v))


def matrix_taps(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sparse ``[out, in]`` matrix as ``(indices [out, T], weights [out, T])``."""
    nnz = max(1, int((mat != 0).sum(axis=1).max()))
    idx = np.zeros((mat.shape[0], nnz), np.int32)
    wts = np.zeros((mat.shape[0], nnz), np.float32)
    for r in range(mat.shape[0]):
        cols = np.nonzero(mat[r])[0]
        idx[r, : len(cols)] = cols
        wts[r, : len(cols)] = mat[r, cols]
    return idx, wts


def apply_taps(img: Array, taps_h, taps_w) -> Array:
    """Same as ``apply_separable`` for sparse matrices given by ``matrix_taps``: a few gathers."""
    (ih, wh), (iw, ww) = taps_h, taps_w
    out = sum(
        jnp.take(img, ih[:, t], axis=-3) * wh[:, t, None, None] for t in range(ih.shape[1])
    )
    return sum(jnp.take(out, iw[:, t], axis=-2) * ww[:, t, None] for t in range(iw.shape[1]))


def param(table, severity):
    """``table[severity - 1]`` as float32; ``severity`` may be a Python int or a traced int
    (then one compilation serves all five severities)."""
    if isinstance(severity, (int, np.integer)):
        return jnp.asarray(np.asarray(table, np.float32)[severity - 1])
    # materialised: a lookup fused into an element-wise loop is redone per element and stops
    # XLA:CPU vectorising it (3x slower brightness)
    return materialize(jnp.asarray(table, jnp.float32)[jnp.asarray(severity) - 1])


def gather_pixels(img: Array, rows: Array, cols: Array) -> Array:
    """``img[b, rows[b], cols[b]]`` for ``img [B, H, W, C]`` and integer ``rows, cols [B, ...]``
    (in range), as one flat ``take_along_axis`` (XLA's CPU gather is slow for batched 2-D
    indices)."""
    b, h, w, c = img.shape
    flat = img.reshape(b, h * w, c)
    idx = (rows * w + cols).reshape(b, -1, 1)
    out = jnp.take_along_axis(flat, idx, axis=1, mode="clip")
    return out.reshape(rows.shape + (c,))
