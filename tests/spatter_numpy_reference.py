"""A NumPy/SciPy version of spatter's water-drop shading, the test reference for
``robustjax.corruptions._spatter_mask`` (which is array code in JAX).

Follows imagecorruptions' OpenCV pipeline without OpenCV: Canny edges (3x3 Sobel, L1 gradient,
thresholds 50/150, non-maximum suppression, hysteresis) of the uint8 liquid layer, Euclidean
distance to the nearest edge (SciPy's exact transform; OpenCV's DIST_L2 mask 5 is a close
approximation), truncated at 20, 3x3 box blur, histogram equalisation, an emboss filter and a
last 3x3 box blur. Not bit-exact with OpenCV; agreement is checked statistically.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_TAN22 = np.tan(np.deg2rad(22.5))


def canny(img: np.ndarray, low: float = 50, high: float = 150) -> np.ndarray:
    """Boolean edge map of a 2-D uint8 image, as ``cv2.Canny(img, low, high)``."""
    f = img.astype(np.float64)
    gx = ndimage.sobel(f, axis=1, mode="nearest")
    gy = ndimage.sobel(f, axis=0, mode="nearest")
    mag = np.abs(gx) + np.abs(gy)
    p = np.pad(mag, 1)
    h, w = mag.shape
    nb = lambda dy, dx: p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    ax, ay = np.abs(gx), np.abs(gy)
    horiz = ay <= _TAN22 * ax
    vert = ay > ax / _TAN22
    same = np.sign(gx) * np.sign(gy) >= 0
    keep = np.where(
        horiz,
        (mag > nb(0, -1)) & (mag >= nb(0, 1)),
        np.where(
            vert,
            (mag > nb(-1, 0)) & (mag >= nb(1, 0)),
            np.where(
                same,
                (mag > nb(-1, -1)) & (mag > nb(1, 1)),
                (mag > nb(-1, 1)) & (mag > nb(1, -1)),
            ),
        ),
    )
    cand = keep & (mag > low)
    strong = cand & (mag > high)
    labels, n = ndimage.label(cand, structure=np.ones((3, 3)))
    good = np.zeros(n + 1, bool)
    good[np.unique(labels[strong])] = True
    good[0] = False
    return good[labels]


def equalize_hist(img: np.ndarray) -> np.ndarray:
    """``cv2.equalizeHist`` of a uint8 image."""
    hist = np.bincount(img.ravel(), minlength=256)
    i0 = int(np.nonzero(hist)[0][0])
    total = img.size
    if hist[i0] == total:
        return np.full_like(img, i0)
    scale = 255.0 / (total - hist[i0])
    lut = np.clip(np.round(np.cumsum(hist) - hist[i0]) * scale, 0, 255)
    lut = np.clip(np.round(lut), 0, 255).astype(np.uint8)
    lut[: i0 + 1] = 0
    return lut[img]


def _box3(a: np.ndarray) -> np.ndarray:
    return ndimage.uniform_filter(a.astype(np.float64), 3, mode="mirror")


def liquid_mask(liquid: np.ndarray) -> np.ndarray:
    """Drop shading ``m / max(m)`` for liquid layers ``[..., H, W, 1]`` in [0, 1] (float32)."""
    liquid = np.asarray(liquid)
    out = np.zeros(liquid.shape, np.float32)
    flat_in = liquid.reshape((-1,) + liquid.shape[-3:-1])
    flat_out = out.reshape(flat_in.shape)
    ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float64)
    for i, layer in enumerate(flat_in):
        lu8 = np.clip(layer * 255, 0, 255).astype(np.uint8)
        edges = canny(lu8)
        if edges.any():
            dist = ndimage.distance_transform_edt(~edges)
        else:
            dist = np.full(lu8.shape, 20.0)
        dist = np.minimum(dist, 20.0)
        dist = _box3(dist).astype(np.uint8)
        dist = equalize_hist(dist)
        dist = ndimage.correlate(dist.astype(np.float64), ker, mode="mirror")
        dist = np.clip(np.round(dist), 0, 255)
        dist = _box3(dist).astype(np.float32)
        m = lu8.astype(np.float32) * dist
        mx = m.max()
        flat_out[i] = m / mx if mx > 0 else m
    return out
