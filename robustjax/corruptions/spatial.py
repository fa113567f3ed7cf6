"""Spatial distortions: rotation, translation, scaling, shear and perspective tilt.

Every distortion is a 3 x 3 homography about the image centre, applied by inverse mapping with
bilinear interpolation; pixels that fall outside the source are filled with ``fill`` (0 = black,
as torchvision's ``affine`` used by ImageNet-P). Jittable and vmappable: the distortion
parameter is a traced float (one per image or one for the batch).

Severity grid (robustjax's own, there is no standard one; ImageNet-P's sequences span
rotations of +-15 degrees, shifts of +-20 px at 224 px, scales 0.4-1.15 and tilts of +-15
degrees):

============  =============================================  ==============================
distortion    parameter                                      severities 1..5
============  =============================================  ==============================
rotate        angle, degrees (counter-clockwise)             5, 10, 15, 20, 30
translate     horizontal and vertical shift, fraction of     0.04, 0.08, 0.12, 0.16, 0.20
              the side (right and down)
scale         zoom factor about the centre (< 1 shrinks)     0.9, 0.8, 0.7, 0.6, 0.5
shear         horizontal shear factor x' = x + k y           0.1, 0.2, 0.3, 0.4, 0.5
tilt          3-D rotation about both axes, degrees, focal   5, 10, 15, 20, 25
              length sqrt(H^2 + W^2) (ImageNet-P's tilt)
============  =============================================  ==============================
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robustjax.corruptions import _ops

SPATIAL_SEVERITIES = {
    "rotate": (5.0, 10.0, 15.0, 20.0, 30.0),
    "translate": (0.04, 0.08, 0.12, 0.16, 0.20),
    "scale": (0.9, 0.8, 0.7, 0.6, 0.5),
    "shear": (0.1, 0.2, 0.3, 0.4, 0.5),
    "tilt": (5.0, 10.0, 15.0, 20.0, 25.0),
}


def _centred(m, h, w):
    """Conjugates a centre-based transform into pixel coordinates (x right, y down)."""
    t = jnp.array([[1.0, 0.0, (w - 1) / 2], [0.0, 1.0, (h - 1) / 2], [0.0, 0.0, 1.0]])
    t_inv = jnp.array([[1.0, 0.0, -(w - 1) / 2], [0.0, 1.0, -(h - 1) / 2], [0.0, 0.0, 1.0]])
    return t @ m @ t_inv


def rotation_matrix(angle_deg, h, w):
    a = jnp.deg2rad(angle_deg)
    c, s = jnp.cos(a), jnp.sin(a)
    # counter-clockwise on screen (y points down)
    m = jnp.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    return _centred(m, h, w)


def translation_matrix(fraction, h, w):
    return jnp.array([[1.0, 0.0, fraction * w], [0.0, 1.0, fraction * h], [0.0, 0.0, 1.0]])


def horizontal_translation_matrix(pixels, h, w):
    del h, w
    return jnp.array([[1.0, 0.0, pixels], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def scale_matrix(factor, h, w):
    return _centred(jnp.diag(jnp.array([factor, factor, 1.0])), h, w)


def shear_matrix(k, h, w):
    return _centred(jnp.array([[1.0, k, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), h, w)


def tilt_matrix(angle_deg, h, w):
    """ImageNet-P's tilt: ``P2 T RX RY P1`` with phi = theta = angle, f = sqrt(H^2 + W^2)."""
    a = jnp.deg2rad(angle_deg)
    c, s = jnp.cos(a), jnp.sin(a)
    f = (h**2 + w**2) ** 0.5
    p1 = jnp.array([[1.0, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1], [0, 0, 1]])
    rx = jnp.array([[1.0, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]])
    ry = jnp.array([[c, 0, -s, 0], [0, 1.0, 0, 0], [s, 0, c, 0], [0, 0, 0, 1]])
    t = jnp.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, f], [0, 0, 0, 1]])
    p2 = jnp.array([[f, 0, w / 2, 0], [0, f, h / 2, 0], [0, 0, 1.0, 0]])
    return p2 @ t @ rx @ ry @ p1


MATRICES = {
    "rotate": rotation_matrix,
    "translate": translation_matrix,
    "scale": scale_matrix,
    "shear": shear_matrix,
    "tilt": tilt_matrix,
}


def warp(img, forward, fill: float = 0.0):
    """Warps ``[H, W, C]`` by the forward homography ``forward`` (source -> output pixel
    coordinates, x right, y down): output(p) = bilinear source(forward^-1 p)."""
    return warp_batch(img[None], forward[None], fill)[0]


def warp_batch(x, forward, fill: float = 0.0, nearest: bool = False):
    """``warp`` of every image of ``x [B, H, W, C]`` by its homography ``forward [B, 3, 3]``
    (bilinear; ``nearest``: the nearest pixel, as torchvision's nearest interpolation)."""
    h, w = x.shape[1], x.shape[2]
    inv = jnp.linalg.inv(forward)
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    pts = jnp.einsum("hwk,bjk->bhwj", jnp.stack([xs, ys, jnp.ones_like(xs)], -1), inv)
    sx, sy = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]
    x0, y0 = jnp.floor(sx), jnp.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]

    def tap(yy, xx):
        inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
        v = _ops.gather_pixels(x, jnp.clip(yy, 0, h - 1).astype(jnp.int32),
                               jnp.clip(xx, 0, w - 1).astype(jnp.int32))
        return jnp.where(inside[..., None], v, fill)

    if nearest:
        return tap(jnp.round(sy), jnp.round(sx))
    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def apply(x, name: str, value, fill: float = 0.0):
    """Distorts every image of ``x`` (``[B, H, W, C]``) by ``name`` with parameter ``value``
    (scalar or ``[B]``, units as in the module table)."""
    if name not in MATRICES:
        raise ValueError(f"unknown distortion {name!r}; valid: {', '.join(MATRICES)}")
    h, w = x.shape[-3], x.shape[-2]
    value = jnp.broadcast_to(jnp.asarray(value, jnp.float32), (x.shape[0],))
    mats = jax.vmap(lambda v: MATRICES[name](v, h, w))(value)
    return warp_batch(x, mats, fill)


def distort(x, name: str, severity: int, fill: float = 0.0):
    """``apply`` with the parameter of ``SPATIAL_SEVERITIES[name][severity - 1]``."""
    if name not in SPATIAL_SEVERITIES:
        raise ValueError(f"unknown distortion {name!r}; valid: {', '.join(SPATIAL_SEVERITIES)}")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    return apply(x, name, SPATIAL_SEVERITIES[name][severity - 1], fill)
