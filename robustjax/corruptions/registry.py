"""The corruption registry and the batch entry point ``corrupt``.

``CORRUPTIONS`` maps the ImageNet-C names (imagecorruptions' spelling) to functions
``f(x, severity, key, *, scale_pixels=False)`` on float32 ``[B, H, W, 3]`` images in [0, 1].
The first 15 are the benchmark corruptions (mCE), the last 4 the held-out extras.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import parallel, validation
from robustjax.corruptions import _ops
from robustjax.corruptions.blur import defocus_blur, gaussian_blur, glass_blur, motion_blur, zoom_blur
from robustjax.corruptions.digital import (
    brightness,
    contrast,
    elastic_transform,
    jpeg_compression,
    pixelate,
    pixelate_8bit,
    saturate,
)
from robustjax.corruptions.noise import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from robustjax.corruptions.weather import fog, frost, snow, spatter

CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "spatter": spatter,
    "saturate": saturate,
}
BENCHMARK_CORRUPTIONS = tuple(CORRUPTIONS)[:15]
EXTRA_CORRUPTIONS = tuple(CORRUPTIONS)[15:]
SEVERITIES = (1, 2, 3, 4, 5)
# Corruptions whose severity only changes values, not shapes: the severity may be traced.
TRACED_SEVERITY = (
    "gaussian_noise",
    "impulse_noise",
    "speckle_noise",
    "contrast",
    "brightness",
    "saturate",
    "fog",
    "frost",
    "elastic_transform",
    "jpeg_compression",
)
# Run on the host (through jax.pure_callback): still usable under jit and vmap, CPU only.
HOST_CORRUPTIONS = ("jpeg_compression",)
# Pixel-wise corruptions (every value on its own): ``corrupt`` runs them on the batch viewed as
# ``[B, H*W*C]``. XLA:CPU vectorises a fused loop only along its minor axis, and one over
# ``[..., 3]`` runs these 2-3x slower; the values are the same either way.
PIXELWISE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
# How the reference makes its 8-bit output (``quantize=True``): imagecorruptions ends with
# ``np.uint8(float_output)``, which truncates (``quantize_8bit``); pixelate and JPEG come out of
# Pillow as 8-bit images already. Pixelate then runs Pillow's own rounding instead (these
# 8-bit versions replace the corruption); JPEG's values are on the 8-bit grid, so truncating
# them changes nothing.
EIGHT_BIT = {"pixelate": pixelate_8bit}
# float32 arithmetic lands a few ulps below an integer the reference's float64 reaches exactly;
# without this guard such values would truncate one level low (mismatches with the reference's
# 8-bit outputs on its fixtures: 1.1% of values unguarded, 0.76% with it).
_TRUNCATION_GUARD = 1e-4


def corrupt(x, name: str, severity: int, key=None, *, scale_pixels: bool = False,
            quantize: bool = False):
    """Corrupts a batch with one ImageNet-C corruption.

    Args:
      x: float32 ``[B, H, W, C]`` in [0, 1], ``C`` 1 or 3. Grayscale images are replicated to
        three channels (as imagecorruptions does), corrupted, and returned as the ITU-R 601
        luma of the result (``[B, H, W, 1]``).
      name: a key of ``CORRUPTIONS``.
      severity: Python int in 1..5 (static under ``jit``).
      key: PRNG key; required by the random corruptions. The same key gives the same output.
      scale_pixels: False (default) uses the published parameters, which are in pixels for
        224 x 224 images; True multiplies pixel-unit parameters by ``min(H, W) / 224``.

    Returns:
      float32 array of the shape of ``x``, in [0, 1].

    Example:
      >>> f = jax.jit(corrupt, static_argnames=("name", "severity"))
      >>> y = f(x, "fog", 3, jax.random.key(0))
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    if not isinstance(x, jax.Array):  # (asarray on a jax.Array still dispatches an op)
        x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected a batch [B, H, W, C], got shape {x.shape}")
    validation.check_shapes(x)  # NHWC floats, a non-empty batch
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"corruptions expect 1 or 3 channels (NHWC), got shape {x.shape}")
    if key is None:
        key = jax.random.key(0) if name in _DETERMINISTIC else None
        if key is None:
            raise ValueError(f"corruption {name!r} is random: pass a PRNG key")
    # under a caller's trace (a traced key with a concrete x too) only shapes are checked
    concrete = not isinstance(x, jax.core.Tracer) and not isinstance(key, jax.core.Tracer)
    mesh = parallel.active_mesh() if concrete else None
    if mesh is not None:  # the batch padded and split over the devices (robustjax.parallel)
        x, key, n, padded = parallel.place(x, key, *mesh)
    if name in TRACED_SEVERITY:
        out = _compiled(name, None, bool(scale_pixels), concrete, bool(quantize))(x, key, severity)
    else:
        out = _compiled(name, severity, bool(scale_pixels), concrete, bool(quantize))(x, key)
    if concrete:  # the value checks ran inside the corruption's program: read them now
        out, stats = out
        lo, hi = np.asarray(stats)
        validation.value_checks_from((lo, hi, 0, 0), x)()
    if name in PIXELWISE:
        out = (_from_flat_rgb if x.shape[-1] == 3 else _from_flat_gray)(out, x.shape,
                                                                        bool(quantize))
    if mesh is not None:
        out = parallel.unplace(out, n, padded)
    return out


def _from_flat(flat, shape, quantize):
    # A program whose fused loop writes [B, H, W, 3] runs it over the minor axis of 3 (5-7x
    # slower for the noises at 224 x 224); writing [B, H*W*3] and reshaping in a second
    # program keeps the fast loop (donated for RGB: no copy). Inside a caller's jit it is inlined.
    # The 8-bit rounding of these corruptions happens here, after a gray image's luma.
    out = _ops.from_rgb(flat.reshape(shape[:-1] + (3,)), shape[-1])
    return quantize_8bit(out) if quantize else out


_from_flat_rgb = jax.jit(_from_flat, static_argnums=(1, 2), donate_argnums=0)
_from_flat_gray = jax.jit(_from_flat, static_argnums=(1, 2))


def quantize_8bit(x):
    """``x`` in [0, 1] truncated to the 8-bit grid as the reference's ``np.uint8`` does."""
    return jnp.floor(x * 255.0 + _TRUNCATION_GUARD) / 255.0


@functools.lru_cache(maxsize=None)
def _compiled(name: str, severity: int, scale_pixels: bool, checked: bool = False,
              quantize: bool = False):
    # The whole eager call is one XLA computation per (corruption, severity): channels in and
    # out, the corruption, and (``checked``) the input checks' statistics, so an eager call is
    # one dispatch and one read of two numbers. Inside a caller's jit it is simply inlined.
    fn = EIGHT_BIT.get(name, CORRUPTIONS[name]) if quantize else CORRUPTIONS[name]

    def program(x, key, s):
        rgb, channels = _ops.as_rgb(x.astype(jnp.float32))
        if name in PIXELWISE:  # flat out: reshaped after the program (see ``_from_flat``)
            out = fn(rgb.reshape(rgb.shape[0], -1), s, key, scale_pixels=scale_pixels)
        else:
            out = _ops.from_rgb(fn(rgb, s, key, scale_pixels=scale_pixels), channels)
        if quantize and name not in PIXELWISE and name not in EIGHT_BIT:  # (see _from_flat)
            out = quantize_8bit(out)
        if not checked:
            return out
        return out, jnp.stack(validation.min_max(x))

    if severity is None:
        return jax.jit(lambda x, key, s: program(x, key, jnp.asarray(s, jnp.int32)))
    return jax.jit(lambda x, key: program(x, key, severity))


_DETERMINISTIC = (
    "defocus_blur",
    "zoom_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
    "gaussian_blur",
    "saturate",
)


def corrupt_all(x, key, *, names=tuple(CORRUPTIONS), severities=SEVERITIES, **kwargs):
    """``{(name, severity): corrupt(x, name, severity, fold_in(key, ...))}`` (eager helper)."""
    out = {}
    for i, name in enumerate(names):
        for s in severities:
            out[(name, s)] = corrupt(x, name, s, jax.random.fold_in(key, 10 * i + s), **kwargs)
    return out
