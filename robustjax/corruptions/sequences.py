"""ImageNet-P perturbation sequences (Hendrycks & Dietterich, ICLR 2019), generated from still
images as the paper's ``make_imagenet_p.py`` does, for difficulty 1.

``PERTURBATIONS[name](x, key)`` maps ``x`` float32 ``[B, H, W, 3]`` in [0, 1] to frames
``[B, T, H, W, 3]``; frame 0 is the clean image for the noise sequences (compared with every
frame) and the first frame of the temporal ones (compared consecutively). Deviations from the
reference, which works on a 256-px resize and crops 224 px after each frame: we distort the
given image directly (pixels from outside are filled with 0), the ImageMagick motion blur is
replaced by imagecorruptions' (the one of ImageNet-C), and frames are not MP4-encoded. Pixel
units (shifts, blur radii) are for 224-px images; ``scale_pixels=True`` scales them to
``min(H, W)``. Use ``metrics.flip_probability`` / ``metrics.top5_distance`` with ``noise=
NOISE_SEQUENCE[name]`` on the model's outputs.

==============  ======  ============================================================
perturbation    frames  frame i
==============  ======  ============================================================
gaussian_noise  31      0: clean; i >= 1: clip(x + 0.03 N(0, 1))
shot_noise      31      0: clean; i >= 1: clip(Poisson(300 x) / 300)
motion_blur     31      motion blur radius 10, sigma 3, angle 4 (i - 30) degrees
zoom_blur       31      mean of x and its zooms by 1 + 0.004 j, j = 1..i
snow            31      one flake layer (N(0.05, 0.3), zoom 3, > 0.5) blurred with
                        radius 14, sigma 4, angle 4 i - 150; image weight 0.85
brightness      31      HSV value + 0.02 (i - 15)
translate       41      horizontal shift of i - 20 pixels
rotate          31      rotation by i - 15 degrees
tilt            31      perspective tilt by i - 15 degrees
scale           31      zoom by (2.5 i + 40) / 100
==============  ======  ============================================================
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.corruptions import _ops, spatial

NOISE_SEQUENCE = {
    "gaussian_noise": True,
    "shot_noise": True,
    "motion_blur": False,
    "zoom_blur": False,
    "snow": False,
    "brightness": False,
    "translate": False,
    "rotate": False,
    "tilt": False,
    "scale": False,
}


def _with_clean(x, frames):
    return jnp.concatenate([x[:, None], frames], axis=1)


def gaussian_noise_sequence(x, key, *, scale_pixels=False):
    del scale_pixels
    noise = jax.random.normal(key, (x.shape[0], 30) + x.shape[1:], x.dtype)
    return _with_clean(x, jnp.clip(x[:, None] + 0.03 * noise, 0.0, 1.0))


def shot_noise_sequence(x, key, *, scale_pixels=False):
    del scale_pixels
    lam = jnp.broadcast_to(x[:, None] * 300.0, (x.shape[0], 30) + x.shape[1:])
    counts = jax.random.poisson(key, lam, lam.shape).astype(x.dtype)  # rate up to 300
    return _with_clean(x, jnp.clip(counts / 300.0, 0.0, 1.0))


def motion_blur_sequence(x, key=None, *, scale_pixels=False):
    del key
    px = _ops.pixel_scale(x.shape, scale_pixels)
    radius, sigma = max(1, int(round(10 * px))), 3.0 * px
    angles = 4.0 * (jnp.arange(31, dtype=jnp.float32) - 30)
    blur_one = lambda im: jax.vmap(lambda a: _ops.motion_blur_image(im, radius, sigma, a))(angles)
    return jnp.clip(jax.vmap(blur_one)(x), 0.0, 1.0)


def zoom_blur_sequence(x, key=None, *, scale_pixels=False):
    del key, scale_pixels
    zooms = jax.vmap(lambda z: spatial.apply(x, "scale", z), out_axes=1)(
        1.0 + 0.004 * jnp.arange(1, 31, dtype=jnp.float32)
    )
    frames = jnp.concatenate([x[:, None], zooms], axis=1)
    return jnp.cumsum(frames, axis=1) / jnp.arange(1, 32, dtype=x.dtype)[None, :, None, None, None]


def snow_sequence(x, key, *, scale_pixels=False):
    px = _ops.pixel_scale(x.shape, scale_pixels)
    radius, sigma = max(1, int(round(14 * px))), 4.0 * px
    b, h, w = x.shape[:3]
    field = 0.05 + 0.3 * jax.random.normal(key, (b, h, w, 1), x.dtype)
    # make_imagenet_p's clipped_zoom trims the zoomed layer symmetrically
    zh = _ops.clipped_zoom_size(h, 3)
    zw = _ops.clipped_zoom_size(w, 3)
    mh = _ops.clipped_zoom_matrix(h, 3.0, zh)[(zh - h) // 2 : (zh - h) // 2 + h]
    mw = _ops.clipped_zoom_matrix(w, 3.0, zw)[(zw - w) // 2 : (zw - w) // 2 + w]
    layer = _ops.apply_taps(field, _ops.matrix_taps(mh), _ops.matrix_taps(mw))
    layer = jnp.floor(jnp.clip(jnp.where(layer < 0.5, 0.0, layer), 0.0, 1.0) * 255.0) / 255.0
    angles = 4.0 * jnp.arange(31, dtype=jnp.float32) - 150.0
    flakes = jax.vmap(
        lambda lay: jax.vmap(lambda a: _ops.motion_blur_image(lay, radius, sigma, a))(angles)
    )(layer)
    base = 0.85 * x + 0.15 * jnp.maximum(x, _ops.rgb_to_gray(x) * 1.5 + 0.5)
    return jnp.clip(base[:, None] + flakes + flakes[:, :, ::-1, ::-1], 0.0, 1.0)


def brightness_sequence(x, key=None, *, scale_pixels=False):
    del key, scale_pixels
    c = 0.02 * (jnp.arange(31, dtype=x.dtype) - 15)
    frames = jax.vmap(lambda ci: _ops.hsv_value_shift(x, ci), out_axes=1)(c)
    return jnp.clip(frames, 0.0, 1.0)


def _spatial_sequence(name, values):
    def seq(x, key=None, *, scale_pixels=False):
        del key
        v = jnp.asarray(values, jnp.float32)
        if name == "translate":
            v = v * _ops.pixel_scale(x.shape, scale_pixels)
            h, w = x.shape[1:3]
            return jax.vmap(
                lambda t: jax.vmap(
                    lambda im: spatial.warp(im, spatial.horizontal_translation_matrix(t, h, w))
                )(x),
                out_axes=1,
            )(v)
        return jax.vmap(lambda t: spatial.apply(x, name, t), out_axes=1)(v)

    seq.__name__ = f"{name}_sequence"
    return seq


PERTURBATIONS = {
    "gaussian_noise": gaussian_noise_sequence,
    "shot_noise": shot_noise_sequence,
    "motion_blur": motion_blur_sequence,
    "zoom_blur": zoom_blur_sequence,
    "snow": snow_sequence,
    "brightness": brightness_sequence,
    "translate": _spatial_sequence("translate", np.arange(41) - 20.0),
    "rotate": _spatial_sequence("rotate", np.arange(31) - 15.0),
    "tilt": _spatial_sequence("tilt", np.arange(31) - 15.0),
    "scale": _spatial_sequence("scale", (np.arange(31) * 2.5 + 40) / 100.0),
}


def perturbation_sequence(x, name: str, key=None, *, scale_pixels=False):
    """Frames ``[B, T, H, W, C]`` of ImageNet-P perturbation ``name`` (1 or 3 channels)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; valid: {', '.join(PERTURBATIONS)}")
    if key is None and NOISE_SEQUENCE[name] or (key is None and name == "snow"):
        raise ValueError(f"perturbation {name!r} is random: pass a PRNG key")
    rgb, channels = _ops.as_rgb(jnp.asarray(x, jnp.float32))
    return _ops.from_rgb(PERTURBATIONS[name](rgb, key, scale_pixels=scale_pixels), channels)
