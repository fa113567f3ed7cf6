"""Blur corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019): defocus, glass, motion,
zoom, and the extra gaussian blur.

``x`` is float32 ``[B, H, W, 3]`` in [0, 1]; ``severity`` a Python int in 1..5; ``key`` a PRNG
key (used by glass and motion blur). The reference parameters are in pixels for 224 x 224 images;
with ``scale_pixels=True`` pixel-unit parameters (radii, sigmas, shifts) are multiplied by
``min(H, W) / 224`` (documented deviation, for small images such as 28 x 28 MNIST).
All are jittable; glass blur runs the reference's sequential pixel moves in parallel waves that
give exactly the sequential result (``glass_schedule``), one ``lax.fori_loop`` trip per wave.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.corruptions import _ops, _philox

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
    blur = lambda im: jnp.clip(_ops.gaussian_blur_image(im, sigma), 0.0, 1.0)  # noqa: E731
    return _ops.map_batch(blur, x)


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


@functools.lru_cache(maxsize=None)
def disk_factors(radius: float, alias_blur: float):
    """``disk_kernel(radius, alias_blur)`` as the 1-D Gaussian ``g`` (applied along both axes),
    the half-widths of the disk's rows ``(dy, w)`` (row ``dy`` is a box ``|dx| <= w``) and the
    disk's weight ``1 / #pixels``; ``None`` when the kernel does not factor so (the smoothed disk
    reaches the edge of its grid, where the reference reflects the Gaussian: radius >= 8).

    Correlating with ``g``, then ``g``, then the disk's boxes costs ~30 additions per value
    instead of the kernel's 225 taps (or an FFT); the factors are checked against the kernel."""
    kernel = disk_kernel(radius, alias_blur)
    half = kernel.shape[0] // 2
    ksize = 3 if radius <= 8 else 5
    reach = int(np.floor(radius + 1e-9))
    if reach + ksize // 2 > half:
        return None
    rows = []
    for dy in range(-reach, reach + 1):
        w = max((v for v in range(reach + 1) if v * v + dy * dy <= radius**2), default=-1)
        if w >= 0:
            rows.append((dy, w))
    g = np.exp(-((np.arange(ksize) - (ksize - 1) / 2) ** 2) / (2 * alias_blur**2))
    g = g / g.sum()
    disk = np.zeros_like(kernel, np.float64)
    for dy, w in rows:
        disk[half + dy, half - w: half + w + 1] = 1.0
    weight = 1.0 / disk.sum()
    kr = ksize // 2  # the Gaussian's matrix without reflection (zeros beyond the grid)
    m = sum(gj * np.eye(kernel.shape[0], k=j - kr) for j, gj in enumerate(g))
    if not np.allclose(m @ (disk * weight) @ m.T, kernel, rtol=0, atol=1e-7):
        return None
    return g.astype(np.float32), tuple(rows), float(weight)


def _disk_correlate(x, g, rows, weight):
    """Correlation of ``[B, H, W, C]`` with ``disk_kernel`` from its ``disk_factors``
    (BORDER_REFLECT_101)."""
    h, w = x.shape[-3], x.shape[-2]
    reach = max(abs(dy) for dy, _ in rows)
    r = reach + len(g) // 2
    p = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    p = _ops.correlate_valid(_ops.correlate_valid(p, g, 1), g, 2)
    # materialised: the boxes read every value up to 2 reach + 1 times
    p = _ops.materialize(p * np.float32(weight))  # [B, H + 2 reach, W + 2 reach, C]
    boxes, box, width = {}, None, -1
    for need in sorted({bw for _, bw in rows}):
        while width < need:  # grow the box by one column on each side
            width += 1
            taps = {reach - width, reach + width}
            for t in taps:
                col = jax.lax.slice_in_dim(p, t, t + w, axis=2)
                box = col if box is None else box + col
        boxes[need] = _ops.materialize(box)
    out = None
    for dy, bw in rows:
        tap = jax.lax.slice_in_dim(boxes[bw], reach + dy, reach + dy + h, axis=1)
        out = tap if out is None else out + tap
    return out


def defocus_blur(x, severity, key=None, *, scale_pixels=False):
    """Correlation with ``disk_kernel`` (OpenCV ``filter2D``, BORDER_REFLECT_101), clipped:
    through ``disk_factors`` when the kernel factors (severities 1-3 at 224 px), else FFTs.
    Runs in chunks of images (``map_batch``)."""
    del key
    radius, alias = DEFOCUS_BLUR[severity - 1]
    radius = radius * _ops.pixel_scale(x.shape, scale_pixels)
    factors = disk_factors(radius, alias)
    if factors is not None and 2 * max(abs(dy) for dy, _ in factors[1]) + 2 < min(x.shape[-3:-1]):
        blur = lambda im: _disk_correlate(im, *factors)  # noqa: E731
    else:
        blur = lambda im: _ops.conv2d_same(im, disk_kernel(radius, alias), "reflect")  # noqa: E731
    return jnp.clip(_ops.map_batch(blur, x), 0.0, 1.0)


def motion_blur_with_angle(x, severity, angle, *, scale_pixels=False):
    """Motion blur of every image of ``x`` along ``angle`` (degrees, ``[B]``): deterministic part."""
    radius, sigma = MOTION_BLUR[severity - 1]
    px = _ops.pixel_scale(x.shape, scale_pixels)
    radius, sigma = max(1, int(round(radius * px))), sigma * px
    blur = lambda im, a: _ops.motion_blur_image(im, radius, sigma, a)  # noqa: E731
    return jnp.clip(_ops.map_images(blur, x, angle), 0.0, 1.0)


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


@functools.lru_cache(maxsize=None)
def glass_schedule(h: int, w: int, delta: int, iterations: int = 1):
    """A parallel schedule of the reference's sequential pixel moves.

    The reference visits ``(hh, ww)`` for hh from ``H-d`` down to ``d+1`` and, in each row, ww
    from ``W-d`` down to ``d+1`` (visit ``(a, b)``: ``hh = H-d-a``, ``ww = W-d-b``), copies
    ``img[hh, ww] = img[hh + dy, ww + dx]`` with ``dx, dy`` in ``[-d, d)``, and repeats the whole
    sweep ``iterations`` times. A move touches only cells of the ``2d x 2d`` window around its
    target, so two moves can interfere only if their rows and their columns both differ by less
    than ``2d``. Visit ``(a, b)`` of sweep ``i`` goes to wave ``t = 4d^2 i + 2d a + b``: for
    every pair that can interfere, ``t`` grows with the reference's visit order, and moves of
    one wave never interfere, so each wave runs as one gather/scatter and the result is exactly
    the reference's. That is ``2d (H-2d-1) + W-2d + 4d^2 (iterations-1)`` waves instead of
    ``iterations (H-2d)(W-2d)`` sequential moves (1,128 instead of 145,200 at severity 3).

    Returns ``(sweeps, rows, cols)``, ``int32 [T, S]``: the sweep and visit ``(a, b)`` of slot
    ``s`` of wave ``t``; ``-1`` marks padding slots."""
    nh, nw = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    if nh == 0 or nw == 0:
        empty = np.zeros((0, 1), np.int32)
        empty.flags.writeable = False
        return (empty,) * 3
    span, lag = 2 * delta, 4 * delta * delta
    waves = span * (nh - 1) + nw + lag * (iterations - 1)
    i, a, b = np.meshgrid(np.arange(iterations), np.arange(nh), np.arange(nw), indexing="ij")
    i, a, b = i.ravel(), a.ravel(), b.ravel()
    t = lag * i + span * a + b
    order = np.argsort(t, kind="stable")
    t, i, a, b = t[order], i[order], a[order], b[order]
    slot = np.arange(t.size) - np.searchsorted(t, t)  # rank within its wave
    out = np.full((3, waves, int(slot.max()) + 1), -1, np.int32)
    out[0, t, slot], out[1, t, slot], out[2, t, slot] = i, a, b
    out.flags.writeable = False  # cached: shared by glass_moves and _glass_moves
    return out[0], out[1], out[2]


def _glass_moves(img, codes, delta, iterations):
    """Apply the reference's pixel moves wave by wave (see ``glass_schedule``).

    ``img``: uint8 ``[B, H, W, C <= 4]``; ``codes``: integers ``[T, S, B]``, the move of slot
    ``s`` of wave ``t`` in image ``b`` as ``(dy + d) 2d + (dx + d)`` (padding slots are
    ignored). One ``fori_loop`` trip per wave moves all its pixels for the whole batch with one
    gather and one scatter.
    """
    b, h, w, c = img.shape
    _, rows, cols = glass_schedule(h, w, delta, iterations)
    waves, slots = rows.shape
    if waves == 0:
        return img
    span = 2 * delta
    valid = jnp.asarray(rows >= 0)
    # [T, S] target cells; padding slots write to scratch cells after the image
    target = jnp.asarray(np.where(rows >= 0, (h - delta - rows) * w + (w - delta - cols),
                                  h * w + np.arange(slots)).astype(np.int32))
    # Pixels major, batch minor ([cells, B], one packed uint32 per pixel): a wave's targets are
    # the same cells in every image, so its scatter writes whole rows; the sources differ per
    # image and are gathered one by one, from one contiguous slab of codes per wave.
    # 1.6x faster than a batch-major layout on XLA:CPU.
    packed = _pack(img.reshape(b, h * w, c)).T
    flat = jnp.concatenate([packed, jnp.zeros((slots, b), jnp.uint32)], axis=0)
    column = jnp.arange(b, dtype=jnp.int32)[None, :]

    def wave(t, im):
        dst = target[t]
        code = codes[t].astype(jnp.int32)
        shift = (code // span - delta) * w + (code % span - delta)
        shift = jnp.where(valid[t][:, None], shift, 0)
        src = ((dst[:, None] + shift) * b + column).reshape(-1)
        vals = im.reshape(-1).at[src].get(mode="promise_in_bounds").reshape(slots, b)
        return im.at[dst].set(vals, mode="promise_in_bounds", unique_indices=True)

    flat = jax.lax.fori_loop(0, waves, wave, flat)
    return _unpack(flat[: h * w].T, c).reshape(b, h, w, c)


def _pack(pixels):
    """uint8 ``[..., C <= 4]`` -> uint32 ``[...]``."""
    out = jnp.zeros(pixels.shape[:-1], jnp.uint32)
    for i in range(pixels.shape[-1]):
        out = out | (pixels[..., i].astype(jnp.uint32) << (8 * i))
    return out


def _unpack(packed, c: int):
    return jnp.stack([((packed >> (8 * i)) & 0xFF).astype(jnp.uint8) for i in range(c)], -1)


def glass_moves(key, shape, delta: int, iterations: int):
    """Random moves for ``_glass_moves``: codes ``[T, S, B]`` uniform in ``[0, (2d)^2)``, i.e.
    ``dx, dy`` uniform in ``[-d, d)``. A code is ``v mod (2d)^2`` for ``v`` a byte of a Philox
    word when ``(2d)^2`` divides 256 (exact), else a 16-bit half (modulo bias below 3e-4
    relative for ``2d = 6``). Several codes per word: the generator, not the moves, is the
    cost; uint8 codes when they fit."""
    waves, slots = glass_schedule(shape[1], shape[2], delta, iterations)[1].shape
    batch, span = shape[0], 2 * delta
    width = 8 if 256 % (span * span) == 0 else 16  # bits per move
    per_word = 32 // width
    q = -(-batch // per_word)
    # computed into its own buffer: each word is read by per_word moves
    words = _ops.computed(lambda k: _philox.bits(k, (waves, slots, q)), key)
    offsets = jnp.asarray(np.arange(per_word, dtype=np.uint32) * width)
    parts = (words[..., None, :] >> offsets[:, None]) & jnp.uint32((1 << width) - 1)
    v = parts.reshape(waves, slots, per_word * q)[..., :batch] % jnp.uint32(span * span)
    return v.astype(jnp.uint8 if span * span <= 256 else jnp.int32)


def glass_blur(x, severity, key, *, scale_pixels=False):
    """Gaussian blur, quantise to uint8 (truncation, as the reference), local pixel moves by
    offsets uniform in ``[-d, d)``, Gaussian blur again."""
    sigma, delta, iters = GLASS_BLUR[severity - 1]
    px = _ops.pixel_scale(x.shape, scale_pixels)
    sigma, delta = sigma * px, max(1, int(round(delta * px)))
    levels = _ops.map_batch(
        lambda im: jnp.floor(_ops.gaussian_blur_image(im, sigma) * 255.0).astype(jnp.uint8), x)
    moves = glass_moves(key, x.shape, delta, iters)
    y = _glass_moves(levels, moves, delta, iters)
    return _ops.map_batch(
        lambda im: jnp.clip(_ops.gaussian_blur_image(im.astype(jnp.float32) / 255.0, sigma),
                            0.0, 1.0), y)
