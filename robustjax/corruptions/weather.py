"""Weather corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019): snow, frost, fog, and
the extra spatter.

``x`` is float32 ``[B, H, W, 3]`` in [0, 1]; ``severity`` a Python int in 1..5; ``key`` a PRNG
key. Snow and fog are jittable; frost is jittable but its six texture images are read and
resized on the host once per image size (Pillow + NumPy, then cached and embedded as a
constant); spatter is jittable at every severity: its water drops (severities 1-3) compute a
Canny edge map and a distance transform in JAX (``_spatter_mask.py``).
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.corruptions import _ops, _philox, _spatter_mask

SNOW = (
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)  # flake mean, std, zoom, threshold, blur radius, blur sigma, image weight
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # image, texture weights
FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # strength, wibble decay
SPATTER = (
    (0.65, 0.3, 4, 0.69, 0.6, 0),
    (0.65, 0.3, 3, 0.68, 0.6, 0),
    (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1),
    (0.67, 0.4, 1, 0.65, 1.5, 1),
)  # mean, std, sigma, threshold, intensity / mud sigma, mud?

FROST_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets" / "frost"
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


# ----------------------------------------------------------------------------------------- snow


def snow_from_field(x, severity, field, angle, *, scale_pixels=False):
    """Snow given the flake field and the blur angles (``[B]``, degrees): the deterministic part
    of ``snow``. ``field`` ~ N(mean, std) is ``[B, H, W]`` as the reference draws it, or only its
    central part that the zoom reads (``[B, ceil(H / zoom), ceil(W / zoom)]``)."""
    mean, std, zoom, thresh, radius, sigma, weight = SNOW[severity - 1]
    del mean, std
    px = _ops.pixel_scale(x.shape, scale_pixels)
    radius, sigma = max(1, int(round(radius * px))), sigma * px
    h, w = x.shape[-3], x.shape[-2]
    zh = _ops.clipped_zoom_matrix(h, float(zoom), _ops.clipped_zoom_size(h, zoom))
    zw = _ops.clipped_zoom_matrix(w, float(zoom), _ops.clipped_zoom_size(w, zoom))
    (th, ch), (tw, cw) = _ops.clipped_zoom_crop(h, zoom), _ops.clipped_zoom_crop(w, zoom)
    if field.shape[-2:] == (ch, cw):
        zh, zw = zh[:, th: th + ch], zw[:, tw: tw + cw]
    elif field.shape[-2:] != (h, w):
        raise ValueError(f"snow field must be [B, {h}, {w}] or its central [B, {ch}, {cw}], "
                         f"got {field.shape}")
    layer = _ops.apply_taps(field[..., None], _ops.matrix_taps(zh), _ops.matrix_taps(zw))
    layer = jnp.clip(jnp.where(layer < thresh, 0.0, layer), 0.0, 1.0)
    layer = _ops.map_images(lambda im, a: _ops.motion_blur_image(im, radius, sigma, a), layer, angle)
    layer = (jnp.round(layer * 255.0) / 255.0)[:, :h, :w, :]
    gray = _ops.rgb_to_gray(x)
    x = weight * x + (1 - weight) * jnp.maximum(x, gray * 1.5 + 0.5)
    return jnp.clip(x + layer + layer[:, ::-1, ::-1, :], 0.0, 1.0)


def snow(x, severity, key, *, scale_pixels=False):
    """Thresholded, zoomed Gaussian flakes, motion-blurred along an angle in [-135, -45)."""
    mean, std, zoom = SNOW[severity - 1][:3]
    kf, ka = jax.random.split(key)
    # only the central part that the zoom reads is drawn (the reference draws the whole image
    # and crops it; the values outside never reach the output): 1/zoom^2 of the draws
    crop = tuple(_ops.clipped_zoom_crop(n, zoom)[1] for n in x.shape[-3:-1])
    field = _ops.computed(lambda k: mean + std * _philox.normal(k, (x.shape[0],) + crop), kf)
    angle = jax.random.uniform(ka, (x.shape[0],), minval=-135.0, maxval=-45.0)
    return snow_from_field(x, severity, field, angle, scale_pixels=scale_pixels)


# ------------------------------------------------------------------------------------------ fog


def plasma_fractal(key, mapsize: int, wibbledecay: float):
    """Diamond-square height map (``[mapsize, mapsize]`` in [0, 1]) as imagecorruptions'
    ``plasma_fractal``: new points are the mean of their 4 neighbours (wrap-around) plus
    ``wibble * U(-wibble, wibble)``, ``wibble`` starting at 100 and divided by ``wibbledecay``
    per level."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    # The reference fills a full map in place with strided slices; here the grid of one level
    # (values every ``step`` pixels) is kept compact and interleaved with the new points, which
    # is the same computation without scatters.
    levels = mapsize.bit_length() - 1
    sizes = [1 << i for i in range(levels)]  # side of the coarse grid at each level
    # one draw for all levels (one RNG kernel to compile instead of 3 per level)
    u = 2.0 * _philox.uniform(key, (sum(3 * n * n for n in sizes),)) - 1.0
    scales, wibble = [], 100.0
    for _ in sizes:
        scales.append(wibble * wibble)
        wibble = wibble / wibbledecay
    if not isinstance(wibbledecay, (int, float)):
        # decay given as an array (fog's severity table): materialised, else XLA redoes the
        # chain of divisions per element when the severity is traced
        scales = _ops.materialize(jnp.stack(scales))
    grid = jnp.zeros((1, 1), jnp.float32)
    offset = 0
    for level, n in enumerate(sizes):
        draws = []
        for _ in range(3):
            draws.append(u[offset : offset + n * n].reshape(n, n) * scales[level])
            offset += n * n

        # materialised: every value is read at several offsets, and each level's grid feeds
        # the next level (XLA would otherwise recompute the levels below per read)
        sq = grid + jnp.roll(grid, -1, axis=0)
        centre = _ops.materialize((sq + jnp.roll(sq, -1, axis=1)) / 4 + draws[0])  # middles
        ul = grid
        top = (centre + jnp.roll(centre, 1, axis=0) + ul + jnp.roll(ul, -1, axis=1)) / 4 + draws[1]
        left = (centre + jnp.roll(centre, 1, axis=1) + ul + jnp.roll(ul, -1, axis=0)) / 4 + draws[2]
        even = jnp.stack([grid, top], axis=-1).reshape(n, 2 * n)
        odd = jnp.stack([left, centre], axis=-1).reshape(n, 2 * n)
        grid = _ops.materialize(jnp.stack([even, odd], axis=1).reshape(2 * n, 2 * n))
    m = grid
    m = m - m.min()
    return m / m.max()


def fog_from_map(x, severity, plasma):
    """Fog given the plasma maps ``[B, M, M]`` (``M >= H, W``): deterministic part of ``fog``."""
    strength = _ops.param(FOG, severity)[0]
    h, w = x.shape[-3], x.shape[-2]
    max_val = jnp.max(x, axis=(-3, -2, -1), keepdims=True)
    x = x + strength * plasma[:, :h, :w, None]
    return jnp.clip(x * max_val / (max_val + strength), 0.0, 1.0)


def fog(x, severity, key, *, scale_pixels=False):
    """Plasma-fractal fog; the map side is the next power of two >= max(H, W, 3) as the reference."""
    del scale_pixels
    mapsize = 1 << (max(x.shape[-3:]) - 1).bit_length()
    keys = jax.random.split(key, x.shape[0])
    decay = _ops.param(FOG, severity)[1]
    # chunks of maps, vmapped within a chunk: per-image maps (lax.map) spend their time in the
    # many small levels, a whole-batch vmap in memory traffic (0.68 / 0.62 / 0.57 ms/img)
    plasma = jax.vmap(lambda k: plasma_fractal(k, mapsize, decay))
    maps = _ops.map_batch(plasma, keys, image_bytes=4 * mapsize * mapsize)
    return fog_from_map(x, severity, maps)


# ---------------------------------------------------------------------------------------- frost


@functools.lru_cache(maxsize=8)
def frost_textures(h: int, w: int, px: float = 1.0):
    """The six frost textures resized as the reference does for an ``h x w`` image
    (OpenCV-style bicubic by ``1.1 x`` the factor that makes them cover the image, times ``px``),
    stacked: ``(uint8 [6, Hmax, Wmax, 3], int32 [6, 2] valid sizes)``."""
    from PIL import Image

    images = []
    for name in FROST_FILES:
        path = FROST_DIR / name
        if not path.exists():
            raise FileNotFoundError(f"frost texture {path} is missing (robustjax/assets/frost)")
        tex = np.asarray(Image.open(path).convert("RGB"), np.float64)
        fh, fw = tex.shape[:2]
        scale = max(1.0, h / fh, w / fw) * 1.1 * px
        nh, nw = int(np.ceil(fh * scale)), int(np.ceil(fw * scale))
        nh, nw = max(nh, h + 1), max(nw, w + 1)
        mh, mw = _ops.cv2_cubic_matrix(fh, nh), _ops.cv2_cubic_matrix(fw, nw)
        res = (mh @ tex.reshape(fh, -1)).reshape(nh, fw, 3)
        res = np.tensordot(res, mw, axes=([1], [1])).transpose(0, 2, 1)  # [nh, nw, 3]
        images.append(np.clip(np.round(res), 0, 255).astype(np.uint8))
    hmax, wmax = max(t.shape[0] for t in images), max(t.shape[1] for t in images)
    stack = np.zeros((len(images), hmax, wmax, 3), np.uint8)
    for i, t in enumerate(images):
        stack[i, : t.shape[0], : t.shape[1]] = t
    return stack, np.array([t.shape[:2] for t in images], np.int32)


def frost_from_crop(x, severity, index, start, *, scale_pixels=False):
    """Frost given the texture ``index`` (``[B]``) and crop corners ``start`` (``[B, 2]``)."""
    a, b = _ops.param(FROST, severity)
    h, w = x.shape[-3], x.shape[-2]
    tex, _ = frost_textures(h, w, _ops.pixel_scale(x.shape, scale_pixels))
    tex = jnp.asarray(tex)
    crop = jax.vmap(
        lambda i, s: jax.lax.dynamic_slice(tex[i], (s[0], s[1], 0), (h, w, 3))
    )(index, start)
    return jnp.clip(a * x + b * crop.astype(jnp.float32) / 255.0, 0.0, 1.0)


def frost(x, severity, key, *, scale_pixels=False):
    """``clip(a x + b texture)`` with a random texture and a random crop of it."""
    h, w = x.shape[-3], x.shape[-2]
    _, sizes = frost_textures(h, w, _ops.pixel_scale(x.shape, scale_pixels))
    sizes = jnp.asarray(sizes)
    ki, kr, kc = jax.random.split(key, 3)
    index = jax.random.randint(ki, (x.shape[0],), 0, len(FROST_FILES))
    rows = jax.random.randint(kr, (x.shape[0],), 0, sizes[index, 0] - h)
    cols = jax.random.randint(kc, (x.shape[0],), 0, sizes[index, 1] - w)
    return frost_from_crop(x, severity, index, jnp.stack([rows, cols], -1),
                           scale_pixels=scale_pixels)


# -------------------------------------------------------------------------------------- spatter


def spatter_from_field(x, severity, field, *, scale_pixels=False):
    """Spatter given the liquid field ``[B, H, W]`` ~ N(mean, std): deterministic part."""
    _, _, sigma, thresh, intensity, mud = SPATTER[severity - 1]
    px = _ops.pixel_scale(x.shape, scale_pixels)
    liquid = _ops.gaussian_blur_image(field[..., None], sigma * px)
    liquid = jnp.where(liquid < thresh, 0.0, liquid)
    if mud:
        m = (liquid > thresh).astype(jnp.float32)
        m = _ops.gaussian_blur_image(m, intensity * px)
        m = jnp.where(m < 0.8, 0.0, m)
        color = jnp.asarray([63, 42, 20], jnp.float32) / 255.0
        return jnp.clip(x * (1 - m) + color * m, 0.0, 1.0)
    m = _spatter_mask.liquid_mask(liquid)
    color = jnp.asarray([175, 238, 238], jnp.float32) / 255.0
    return jnp.clip(x + intensity * m * color, 0.0, 1.0)


def spatter(x, severity, key, *, scale_pixels=False):
    """Water drops (severities 1-3) or mud (4-5)."""
    mean, std = SPATTER[severity - 1][:2]
    field = _ops.computed(lambda k: mean + std * _philox.normal(k, x.shape[:-1]), key)
    return _ops.map_batch(
        lambda im, f: spatter_from_field(im, severity, f, scale_pixels=scale_pixels), x, field)
