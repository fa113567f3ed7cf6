"""The drop shading of spatter's water mode (severities 1-3), in JAX.

imagecorruptions computes it with OpenCV on the uint8 liquid layer: Canny edges (3x3 Sobel, L1
gradient, thresholds 50/150), the distance to the nearest edge (``DIST_L2``), truncated at 20,
a 3x3 box blur, histogram equalisation, an emboss filter and a last 3x3 box blur. Every step is
here as batched array code:

* Canny: Sobel gradients, non-maximum suppression along the quantised gradient direction, and
  hysteresis as a fixed point: weak edge pixels 8-connected to a strong one are grown from the
  strong ones by repeated 3x3 dilation until nothing changes (a ``while_loop``);
* the distance transform is OpenCV's 5 x 5 chamfer distance (its fixed-point costs),
  propagated along the straight then the knight move lines by doubling;
* equalisation only needs the 21 levels 0..20 that the truncated, blurred distance can take
  (a histogram by one scatter-add).

Tested against a NumPy/SciPy version of the same pipeline (``tests/spatter_numpy_reference.py``)
and, statistically, against imagecorruptions itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.corruptions import _ops

_TAN22 = float(np.tan(np.deg2rad(22.5)))
_TRUNCATE = 20  # OpenCV THRESH_TRUNC at 20 in the reference
_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)


def _shifted(padded, dy: int, dx: int, h: int, w: int, r: int = 1):
    return padded[:, r + dy: r + dy + h, r + dx: r + dx + w]


def canny(img):
    """Boolean edges of uint8-valued float images ``[B, H, W]``, as ``cv2.Canny(img, 50, 150)``
    with its default 3x3 Sobel and L1 gradient magnitude."""
    _, h, w = img.shape
    smooth, diff = np.array([1.0, 2.0, 1.0]), np.array([-1.0, 0.0, 1.0])
    gx = _ops.filter_axis(_ops.filter_axis(img, diff, "nearest", 2), smooth, "nearest", 1)
    gy = _ops.filter_axis(_ops.filter_axis(img, diff, "nearest", 1), smooth, "nearest", 2)
    ax, ay = jnp.abs(gx), jnp.abs(gy)
    mag = _ops.materialize(ax + ay)  # read at 9 offsets below
    p = jnp.pad(mag, ((0, 0), (1, 1), (1, 1)))
    nb = lambda dy, dx: _shifted(p, dy, dx, h, w)  # noqa: E731
    horiz = ay <= _TAN22 * ax
    vert = ay > ax / _TAN22
    same = jnp.sign(gx) * jnp.sign(gy) >= 0
    keep = jnp.where(
        horiz, (mag > nb(0, -1)) & (mag >= nb(0, 1)),
        jnp.where(vert, (mag > nb(-1, 0)) & (mag >= nb(1, 0)),
                  jnp.where(same, (mag > nb(-1, -1)) & (mag > nb(1, 1)),
                            (mag > nb(-1, 1)) & (mag > nb(1, -1)))))
    weak = keep & (mag > 50)
    strong = weak & (mag > 150)

    def grow(edges):
        for _ in range(4):  # a few dilations per convergence test
            q = jnp.pad(edges, ((0, 0), (1, 1), (1, 1)))
            near = edges
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    near = near | _shifted(q, dy, dx, h, w)
            edges = weak & near
        return edges

    def cond(state):
        prev, cur = state
        return jnp.any(prev != cur)

    return jax.lax.while_loop(cond, lambda s: (s[1], grow(s[1])), (strong, grow(strong)))[1]


# OpenCV's DIST_L2 with a 5 x 5 mask: a chamfer distance whose moves cost 1 (axial), 1.4
# (diagonal) and 2.1969 (knight), in OpenCV's fixed point with 16 fraction bits
_SHIFT = 16
# the 8 move lines in two groups; lines adjacent in angle are in different groups
_STRAIGHT = (((0, 1), 1.0), ((1, 0), 1.0), ((1, 1), 1.4), ((1, -1), 1.4))
_KNIGHT = (((1, 2), 2.1969), ((2, 1), 2.1969), ((1, -2), 2.1969), ((2, -1), 2.1969))


def truncated_distance(edges, limit: int = _TRUNCATE):
    """``min(d, limit)`` for ``[B, H, W]`` booleans, with ``d`` the 5 x 5 chamfer distance to
    the nearest True pixel (``cv2.distanceTransform(.., DIST_L2, 5)``, its fixed-point costs)
    and ``limit`` everywhere when there is no edge.

    The chamfer distance is the gauge of the move set: the moves (1, 0), (2, 1), (1, 1), (1, 2),
    ... in angle order, and every two adjacent ones span a unimodular cone, so a shortest path
    is ``a`` moves along one line then ``b`` along the next, turning inside the bounding box of
    its ends (so inside the image). Adjacent lines alternate between straight (axial and
    diagonal) and knight lines, so two propagations find every shortest path: along all
    straight lines, then along all knight lines, each ``d(p) = min d(p -+ k m) + k cost(m)``
    for ``k`` up to ``limit / cost`` by doubling (steps 1, 2, 4, ...). That is 9 passes of 4-8
    taps instead of ``limit`` rounds of 16-tap relaxation. Integer costs make the result
    independent of the order of additions, as OpenCV's."""
    far = (limit + 1) << _SHIFT
    b, h, w = edges.shape
    # Flat layout with a border of ``far`` as wide as the longest shift: every tap is then one
    # contiguous slice (no per-element bounds selects; 1.6x faster on XLA:CPU). Taps of border
    # cells wrap into other rows, so the border is reset to ``far`` after every pass.
    pad = max(_max_step(lines, limit) * max(abs(v) for m, _ in lines for v in m)
              for lines in (_STRAIGHT, _KNIGHT))
    hp, wp = h + 2 * pad, w + 2 * pad
    dist = jnp.pad(jnp.where(edges, 0, far).astype(jnp.int32), ((0, 0), (pad, pad), (pad, pad)),
                   constant_values=far).reshape(b, hp * wp)
    yy, xx = np.meshgrid(np.arange(hp), np.arange(wp), indexing="ij")
    border = jnp.asarray(((np.minimum(yy, hp - 1 - yy) < pad) | (np.minimum(xx, wp - 1 - xx) < pad))
                         .reshape(-1))
    margin = pad * wp + pad
    for lines in (_STRAIGHT, _KNIGHT):
        k = 1
        while k <= _max_step(lines, limit):  # steps 1..k cover |shift| < 2k
            src = jnp.pad(dist, ((0, 0), (margin, margin)), constant_values=far)
            near = dist
            for (dy, dx), cost in lines:
                if k <= limit / cost:
                    step = k * int(round(cost * (1 << _SHIFT)))
                    for off in (k * (dy * wp + dx), -k * (dy * wp + dx)):
                        tap = jax.lax.slice_in_dim(src, margin - off, margin - off + hp * wp, axis=1)
                        near = jnp.minimum(near, tap + step)
            dist = _ops.materialize(jnp.where(border, far, near))  # read 8 times by the next pass
            k *= 2
    dist = dist.reshape(b, hp, wp)[:, pad: pad + h, pad: pad + w]
    return jnp.minimum(dist.astype(jnp.float32) * np.float32(2.0**-_SHIFT), float(limit))


def _max_step(lines, limit: int) -> int:
    """The largest doubling step needed: a power of two <= limit / the cheapest cost."""
    k = 1
    while 2 * k <= limit / min(cost for _, cost in lines):
        k *= 2
    return k


def _box3(img):
    """3x3 mean, mirror boundary (``cv2.blur``'s BORDER_REFLECT_101)."""
    ones = np.ones(3, np.float32)
    out = _ops.filter_axis(_ops.filter_axis(img, ones, "mirror", 1), ones, "mirror", 2)
    return out / 9.0


def _box3_uint8(img):
    """``cv2.blur`` of a uint8 image: the 3x3 mean rounded to the nearest integer."""
    return jnp.floor(_box3(img) + 0.5)


def equalize(levels, top: int = _TRUNCATE):
    """``cv2.equalizeHist`` of integer-valued ``[B, H, W]`` images with values in ``0..top``."""
    b = levels.shape[0]
    values = jnp.arange(top + 1, dtype=jnp.float32)
    # one scatter-add over the batch (XLA:CPU's 21 compare-and-sum reductions cost 20x more)
    bins = jnp.clip(levels, 0, top).astype(jnp.int32) + (top + 1) * jnp.arange(b)[:, None, None]
    hist = jnp.bincount(bins.reshape(-1), length=b * (top + 1)).reshape(b, top + 1)
    hist = hist.astype(jnp.float32)  # [B, top + 1], exact below 2**24 pixels
    total = float(levels.shape[1] * levels.shape[2])
    first = jnp.argmax(hist > 0, axis=-1)
    h0 = jnp.take_along_axis(hist, first[:, None], axis=-1)
    scale = 255.0 / jnp.maximum(total - h0, 1.0)
    lut = jnp.round(jnp.clip((jnp.cumsum(hist, -1) - h0) * scale, 0, 255))
    lut = jnp.where(values[None] <= first[:, None], 0.0, lut)
    constant = (h0 == total)[:, 0]
    lut = jnp.where(constant[:, None], first[:, None].astype(jnp.float32), lut)
    out = jnp.zeros_like(levels)
    for v in range(top + 1):
        out = jnp.where(levels == v, lut[:, v, None, None], out)
    return out


def liquid_mask(liquid):
    """Drop shading ``m / max(m)`` for liquid layers ``[B, H, W, 1]`` in [0, 1] (float32)."""
    # materialised: the Sobel filters read it at 6 taps each
    layer = _ops.materialize(jnp.floor(jnp.clip(liquid[..., 0] * 255.0, 0.0, 255.0)))
    dist = truncated_distance(canny(layer))
    dist = _ops.materialize(jnp.floor(_box3(dist)))  # astype(uint8) truncates
    # materialised from here on: each stage reads the previous one at 8-9 taps, and XLA would
    # otherwise recompute the 21-level lookup and the emboss filter at every tap
    dist = _ops.materialize(equalize(dist))
    p = jnp.pad(dist, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    h, w = dist.shape[1:]
    emboss = sum(float(_EMBOSS[i, j]) * p[:, i: i + h, j: j + w]
                 for i in range(3) for j in range(3) if _EMBOSS[i, j])
    dist = _box3_uint8(_ops.materialize(jnp.clip(jnp.round(emboss), 0.0, 255.0)))
    m = _ops.materialize(layer * dist)
    top = jnp.max(m, axis=(1, 2), keepdims=True)
    return jnp.where(top > 0, m / jnp.where(top > 0, top, 1.0), m)[..., None]
