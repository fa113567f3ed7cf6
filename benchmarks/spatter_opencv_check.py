"""Agreement of spatter's water-drop shading (robustjax.corruptions._spatter_mask, JAX) with
the OpenCV lines of imagecorruptions' spatter, on random liquid layers at the three water
severities. Needs cv2 (installed with imagecorruptions-imaug, `pip install -e '.[bench]'`); the
test suite checks the whole corruption against the reference's golden outputs instead.

    PYTHONPATH=. python benchmarks/spatter_opencv_check.py
"""

import jax.numpy as jnp
import numpy as np

from robustjax.corruptions import _ops


def _opencv_drop_shading(liquid):
    """imagecorruptions' spatter lines (water mode), OpenCV calls as in the reference."""
    import cv2

    out = []
    for layer in liquid[..., 0]:
        lu8 = (layer * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(lu8, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = lu8 * dist
        out.append(m / m.max())
    return np.stack(out)[..., None]


def check(sigma, threshold):
    from robustjax.corruptions import _spatter_mask

    rng = np.random.default_rng(sigma)
    field = rng.normal(0.65, 0.3, (3, 96, 112)).astype(np.float32)
    liquid = np.asarray(_ops.gaussian_blur_image(jnp.asarray(field)[..., None], float(sigma)))
    liquid = np.where(liquid < threshold, 0.0, liquid).astype(np.float32)
    ours = np.asarray(_spatter_mask.liquid_mask(jnp.asarray(liquid)))
    diff = float(np.abs(ours - _opencv_drop_shading(liquid)).max())
    print(f"sigma {sigma}, threshold {threshold}: max |JAX - OpenCV| = {diff:.1e}")
    assert diff < 1e-6


if __name__ == "__main__":
    for sigma, threshold in [(4, 0.69), (3, 0.68), (2, 0.68)]:
        check(sigma, threshold)
