"""Digital corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019): contrast, brightness,
saturate (extra), pixelate, JPEG compression, elastic transform.

``x`` is float32 ``[B, H, W, 3]`` in [0, 1]; ``severity`` a Python int in 1..5. All are jittable;
``jpeg_compression`` calls Pillow's JPEG codec on the host through ``jax.pure_callback`` (it
runs inside ``jit``/``vmap`` but not on an accelerator and is not differentiable).
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import os

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.corruptions import _ops, _philox

CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # factor on the deviation from the per-channel mean
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to the HSV value
SATURATE = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))  # HSV saturation * a + b
JPEG_QUALITY = (25, 18, 15, 10, 7)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # box-downsample factor, then nearest upsample
ELASTIC_ALPHA = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)
# elastic: displacement fields uniform in +-0.005 H, Gaussian-smoothed with sigma 0.01 (H, W)
# (mode 'reflect', truncate 3), times alpha; bilinear resampling with mode 'reflect'.


def contrast(x, severity, key=None, *, scale_pixels=False):
    """``clip((x - m) c + m)``, ``m`` the per-image per-channel mean."""
    del key, scale_pixels
    c = _ops.param(CONTRAST, severity)
    means = jnp.mean(x, axis=(-3, -2), keepdims=True)
    return jnp.clip((x - means) * c + means, 0.0, 1.0)


def brightness(x, severity, key=None, *, scale_pixels=False):
    """HSV value ``v -> clip(v + c)`` (skimage's rgb2hsv / hsv2rgb, in closed form:
    ``_ops.hsv_value_shift``)."""
    del key, scale_pixels
    return jnp.clip(_ops.hsv_value_shift(x, _ops.param(BRIGHTNESS, severity)), 0.0, 1.0)


def saturate(x, severity, key=None, *, scale_pixels=False):
    """HSV saturation ``s -> clip(s a + b)``.

    Every RGB component of an HSV colour is ``v (1 - w s)`` with ``w`` a function of the hue,
    so with ``h, v`` kept the round trip is ``v - (v - x) s' / s``. Grey pixels (``s = 0``) have
    hue 0 (red) in skimage, so they become ``(v, v (1 - s'), v (1 - s'))``. The same values as
    converting both ways (to float32 rounding), 6x less arithmetic."""
    del key, scale_pixels
    a, b = _ops.param(SATURATE, severity)
    # channel planes: XLA:CPU vectorises a fused loop along its long minor axis only
    planes = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.maximum(jnp.maximum(planes[0], planes[1]), planes[2])
    delta = v - jnp.minimum(jnp.minimum(planes[0], planes[1]), planes[2])
    grey = delta == 0
    s = jnp.where(grey, 0.0, delta / jnp.where(v == 0, 1.0, v))
    new_s = jnp.clip(s * a + b, 0.0, 1.0)
    ratio = new_s / jnp.where(grey, 1.0, s)
    faded = v * (1.0 - new_s)  # hue 0 (red): green and blue lose saturation
    out = [jnp.where(grey, v if i == 0 else faded, v - (v - p) * ratio) for i, p in enumerate(planes)]
    return jnp.clip(jnp.stack(out, axis=-1), 0.0, 1.0)


def pixelate(x, severity, key=None, *, scale_pixels=False):
    """Pillow ``resize(int(W c), int(H c), BOX)`` then ``resize(W, H, NEAREST)``, as one linear
    map per axis (without Pillow's intermediate uint8 rounding)."""
    del key, scale_pixels
    c = PIXELATE[severity - 1]
    h, w = x.shape[-3], x.shape[-2]
    sh, sw = int(h * c), int(w * c)
    mh = _ops.pil_nearest_matrix(sh, h) @ _ops.pil_box_matrix(h, sh)
    mw = _ops.pil_nearest_matrix(sw, w) @ _ops.pil_box_matrix(w, sw)
    return _ops.apply_separable(x, mh, mw)


def pixelate_8bit(x, severity, key=None, *, scale_pixels=False):
    """``pixelate`` with Pillow's 8-bit arithmetic, for ``corrupt(..., quantize=True)``.

    Pillow's BOX resize (Resample.c) runs the horizontal pass, rounds it to uint8, then the
    vertical pass and rounds again; NEAREST then copies pixels. Unrounded, the one linear map of
    ``pixelate`` misses the reference's 8-bit values on 15-48% of pixels; this is exact on the
    reference's fixtures. ``x`` should be on the 8-bit grid (as the reference's input is).
    """
    del key, scale_pixels
    c = PIXELATE[severity - 1]
    h, w = x.shape[-3], x.shape[-2]
    sh, sw = int(h * c), int(w * c)

    def box_sum(n_in, n_out):
        # 0/1 taps and their counts: an exact sum, one correctly rounded division, so that
        # halves (ties) round as Pillow's fixed point does (up)
        taps = (_ops.pil_box_matrix(n_in, n_out) > 0).astype(np.float32)
        return jnp.asarray(taps), jnp.asarray(taps.sum(1))

    def round_half_up(v):
        return jnp.floor(v + 0.5)

    (tw, nw), (th, nh) = box_sum(w, sw), box_sum(h, sh)
    v = x * 255.0
    v = round_half_up(jnp.einsum("jw,...hwc->...hjc", tw, v) / nw[:, None])
    v = round_half_up(jnp.einsum("ih,...hjc->...ijc", th, v) / nh[:, None, None])
    up_h = np.asarray(_ops.pil_nearest_matrix(sh, h)).argmax(1)
    up_w = np.asarray(_ops.pil_nearest_matrix(sw, w)).argmax(1)
    return jnp.take(jnp.take(v, up_h, axis=-3), up_w, axis=-2) / 255.0


_JPEG_WORKERS = max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def _jpeg_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(_JPEG_WORKERS)


def _jpeg_one(im: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image  # Pillow comes with matplotlib

    buf = io.BytesIO()
    grey = im.shape[-1] == 1  # Pillow's "L" mode takes [H, W]
    Image.fromarray(im[..., 0] if grey else im).save(buf, "JPEG", quality=quality)
    out = np.asarray(Image.open(buf))
    return out[..., None] if grey else out


def _jpeg_host(u8: np.ndarray, quality: int) -> np.ndarray:
    """Pillow JPEG round trip of every ``[H, W, C]`` uint8 image (C = 1 or 3) of ``u8``. One
    slice of the batch per core goes to a thread pool: Pillow's codec releases the GIL, so the
    host's cores work in parallel (one task per image spends its gain on scheduling: 0.45 vs
    0.33 ms/image on 2 cores)."""
    u8 = np.asarray(u8)
    flat = u8.reshape((-1,) + u8.shape[-3:])
    out = np.empty_like(flat)

    def run(part):
        for i in part:
            out[i] = _jpeg_one(flat[i], quality)

    list(_jpeg_pool().map(run, np.array_split(np.arange(len(flat)), _JPEG_WORKERS)))
    return out.reshape(u8.shape)


def pillow_jpeg(x, quality):
    """Pillow JPEG encode/decode of ``x`` [..., H, W, C] in [0, 1] (C = 1 grey or 3 RGB) at
    ``quality`` (1..100, an int or a traced int scalar); inputs rounded to uint8 first, output
    float32 multiples of 1/255. A host callback: runs under ``jit``/``vmap``, not differentiable.
    Shared with ``robustjax.defenses.transforms`` (the exact JPEG defense)."""
    quality = jnp.asarray(quality, jnp.int32)
    u8 = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.uint8)
    shape = jax.ShapeDtypeStruct(u8.shape, jnp.uint8)
    out = jax.pure_callback(
        lambda a, q: _jpeg_host(a, int(np.asarray(q).reshape(-1)[0])), shape, u8, quality,
        vmap_method="broadcast_all",
    )
    return out.astype(jnp.float32) * np.float32(1 / 255.0)


def jpeg_compression(x, severity, key=None, *, scale_pixels=False):
    """Pillow JPEG encode/decode at quality ``c`` (host callback; inputs rounded to uint8)."""
    del key, scale_pixels
    return pillow_jpeg(x, jnp.asarray(JPEG_QUALITY, jnp.int32)[jnp.asarray(severity) - 1])


def _sample_bilinear_reflect(img, rows, cols):
    """``scipy.ndimage.map_coordinates(order=1, mode='reflect')`` of ``[B, H, W, C]`` at float
    ``rows``, ``cols`` (``[B, H, W]``), the same coordinates for every channel."""
    h, w = img.shape[1], img.shape[2]

    def refl(i, n):  # half-sample symmetric extension
        i = jnp.mod(i, 2 * n)
        return jnp.where(i >= n, 2 * n - 1 - i, i)

    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    r1, c1 = refl(r0 + 1, h), refl(c0 + 1, w)
    r0, c0 = refl(r0, h), refl(c0, w)
    g = _ops.gather_pixels
    top = g(img, r0, c0) * (1 - fc) + g(img, r0, c1) * fc
    bottom = g(img, r1, c0) * (1 - fc) + g(img, r1, c1) * fc
    return top * (1 - fr) + bottom * fr


def elastic_from_fields(x, severity, ux, uy):
    """Elastic transform given the raw uniform fields ``ux, uy`` (``[B, H, W]``, uniform in
    ``+-0.005 H``): smooth, scale by alpha, resample. Deterministic part of ``elastic_transform``."""
    h, w = x.shape[-3], x.shape[-2]
    alpha = _ops.param(ELASTIC_ALPHA, severity)
    sig = (h * 0.01, w * 0.01)
    smooth = lambda u: _ops.gaussian_blur_image(u[..., None], sig, "reflect", 3.0)[..., 0]
    dx, dy = _ops.materialize(smooth(ux) * alpha), _ops.materialize(smooth(uy) * alpha)
    gy, gx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    out = _sample_bilinear_reflect(x, gy + dy, gx + dx)
    return jnp.clip(out, 0.0, 1.0)


def elastic_transform(x, severity, key, *, scale_pixels=False):
    """Random smooth displacement fields (all spatial parameters already scale with H)."""
    del scale_pixels
    b, h, w = x.shape[0], x.shape[-3], x.shape[-2]
    kx, ky = jax.random.split(key)
    m = h * 0.005
    # materialised: the smoothing reads each value at every tap
    draw = lambda k: m * (2.0 * _philox.uniform(k, (b, h, w)) - 1.0)  # noqa: E731
    ux, uy = _ops.computed(draw, kx), _ops.computed(draw, ky)
    return elastic_from_fields(x, severity, ux, uy)
