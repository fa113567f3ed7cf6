"""JPEG compression as an input transformation (Dziugaite et al. 2016; Guo et al. 2018).

Two versions of the same codec, both on NHWC float batches in [0, 1] with 1 (grey) or 3 (RGB)
channels, shapes and dtype (float32) preserved:

* ``jpeg_exact``: Pillow's (libjpeg's) encode/decode on the host through ``jax.pure_callback``
  (shared with ``robustjax.corruptions.digital.pillow_jpeg``). Runs under ``jit``/``vmap``; has
  no gradient.
* ``jpeg_differentiable``: the same pipeline written in JAX, as in Shin & Song 2017
  ("JPEG-resistant adversarial images"): JFIF RGB -> YCbCr, 4:2:0 chroma subsampling (2x2
  means, Pillow's default), level shift by 128, orthonormal 8x8 DCT-II, division by libjpeg's
  standard tables (ITU T.81 Annex K) scaled by ``quality`` as ``jpeg_set_quality`` does,
  rounding, de-quantisation, inverse DCT, libjpeg's "fancy" (triangle, 3/4-1/4) chroma
  upsampling, YCbCr -> RGB, clipping. Only the rounding of the DCT coefficients is replaced:
  ``"cubic"`` uses Shin & Song's ``round(z) + (z - round(z))^3`` (smooth, within 1/8 of a
  quantisation step of the true rounding), ``"ste"`` the true rounding forward and the identity
  backward (straight-through, Bengio et al. 2013, the default: closest to the codec). Every
  uint8 the codec stores (input, YCbCr planes before and after coding, output) is rounded
  straight-through in both modes. What else differs
  from libjpeg: float DCTs and colour conversions instead of its fixed-point ones, so a DCT
  coefficient near a rounding boundary can land one quantisation step away; the two versions
  agree to under 1/255 on average (see the tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.corruptions.digital import pillow_jpeg

# libjpeg's jcparam.c std_luminance_quant_tbl / std_chrominance_quant_tbl (ITU T.81 Annex K).
LUMINANCE_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], np.float32).reshape(8, 8)
CHROMINANCE_TABLE = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32, np.float32).reshape(8, 8)
ROUNDINGS = ("cubic", "ste")


def check_quality(quality) -> None:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
            or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer in 1..100 (libjpeg's scale; 75 is "
                         f"Pillow's default), got {quality!r}")


def _check_channels(x) -> None:
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"JPEG takes NHWC batches with 1 (grey) or 3 (RGB) channels, got shape "
                         f"{tuple(x.shape)}")


def quantisation_table(base: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg's ``jpeg_quality_scaling`` + ``jpeg_add_quant_table`` (baseline: entries 1..255)."""
    check_quality(quality)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base.astype(np.int64) * scale + 50) // 100, 1, 255).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _dct_matrix() -> np.ndarray:
    """Orthonormal 8-point DCT-II matrix ``D[k, n]``; JPEG's 2-D FDCT is ``D B D^T``."""
    k, n = np.arange(8)[:, None], np.arange(8)[None, :]
    d = np.cos((2 * n + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def _round(z, rounding: str):
    if rounding == "cubic":  # Shin & Song 2017, Sec. 3.1
        r = jnp.round(z)
        return r + (z - r) ** 3
    return z + jax.lax.stop_gradient(jnp.round(z) - z)  # straight-through


def _u8(plane):
    """A stored uint8 plane: clipped, rounded straight-through (a cubic rounding here would
    zero the gradient at every input already on the 1/255 grid)."""
    return _round(jnp.clip(plane, 0.0, 255.0), "ste")


def _pad_to(plane, multiple: int):
    """Edge-replicate [b, H, W] up to multiples of ``multiple`` (libjpeg's edge expansion)."""
    h, w = plane.shape[1:]
    ph, pw = -h % multiple, -w % multiple
    return jnp.pad(plane, ((0, 0), (0, ph), (0, pw)), mode="edge")


def _code_plane(plane, table: np.ndarray, rounding: str):
    """Level shift, 8x8 DCT, quantise, de-quantise, inverse DCT of [b, H, W] (H, W % 8 == 0)."""
    b, h, w = plane.shape
    d = jnp.asarray(_dct_matrix())
    blocks = (plane - 128.0).reshape(b, h // 8, 8, w // 8, 8)
    coef = jnp.einsum("ki,bxiyj,lj->bxkyl", d, blocks, d)
    q = jnp.asarray(table)[None, None, :, None, :]
    coef = _round(coef / q, rounding) * q
    blocks = jnp.einsum("ki,bxkyl,lj->bxiyj", d, coef, d)
    return blocks.reshape(b, h, w) + 128.0


def _fancy_upsample(plane):
    """libjpeg's ``h2v2_fancy_upsample``: 2x per axis, weights 3/4 (nearer) and 1/4 (further)."""

    def up(a, axis):
        p = jnp.concatenate([jax.lax.slice_in_dim(a, 0, 1, axis=axis), a,
                             jax.lax.slice_in_dim(a, a.shape[axis] - 1, None, axis=axis)], axis)
        n = a.shape[axis]
        prev = jax.lax.slice_in_dim(p, 0, n, axis=axis)
        nxt = jax.lax.slice_in_dim(p, 2, n + 2, axis=axis)
        even, odd = 0.75 * a + 0.25 * prev, 0.75 * a + 0.25 * nxt
        return jnp.stack([even, odd], axis=axis + 1).reshape(
            a.shape[:axis] + (2 * n,) + a.shape[axis + 1:])

    return up(up(plane, 1), 2)


def jpeg_differentiable(x, key=None, *, quality: int = 75, rounding: str = "ste"):
    """Differentiable JPEG round trip of ``x`` [b, H, W, 1 or 3] in [0, 1] -> same shape."""
    del key
    check_quality(quality)
    _check_channels(x)
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    b, h, w, c = x.shape
    # every uint8 the codec stores is rounded here too: the input, the converted planes before
    # the DCT, the decoded planes and the output
    v = _u8(x.astype(jnp.float32) * 255.0)
    lum = quantisation_table(LUMINANCE_TABLE, quality)
    if c == 1:
        y = _u8(_code_plane(_pad_to(v[..., 0], 8), lum, rounding))
        return y[:, :h, :w, None] / 255.0
    r, g, bl = v[..., 0], v[..., 1], v[..., 2]
    yy = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl + 128.0
    chrom = quantisation_table(CHROMINANCE_TABLE, quality)
    yy, cb, cr = (_u8(p) for p in (yy, cb, cr))
    yy = _u8(_code_plane(_pad_to(yy, 16), lum, rounding))[:, :h, :w]

    def chroma(p):
        p = _pad_to(p, 16)
        small = p.reshape(b, p.shape[1] // 2, 2, p.shape[2] // 2, 2).mean(axis=(2, 4))
        return _fancy_upsample(_u8(_code_plane(small, chrom, rounding)))[:, :h, :w]

    cb, cr = chroma(cb) - 128.0, chroma(cr) - 128.0
    rgb = jnp.stack([yy + 1.402 * cr, yy - 0.344136 * cb - 0.714136 * cr, yy + 1.772 * cb], -1)
    return _u8(rgb) / 255.0


def jpeg_exact(x, key=None, *, quality: int = 75):
    """Pillow's JPEG round trip of ``x`` [b, H, W, 1 or 3] in [0, 1] (host callback, no
    gradient)."""
    del key
    check_quality(quality)
    _check_channels(x)
    return pillow_jpeg(x, quality)


__all__ = ["jpeg_differentiable", "jpeg_exact", "quantisation_table"]
