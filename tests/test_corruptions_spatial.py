"""Spatial distortions and ImageNet-P sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from robustjax.corruptions import metrics, sequences, spatial

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.uniform(size=(2, 17, 17, 3)), jnp.float32)


def test_rotate_90_is_rot90_and_identities():
    np.testing.assert_allclose(spatial.apply(X, "rotate", 90.0), np.rot90(X, 1, axes=(1, 2)),
                               atol=1e-5)
    # (ImageNet-P's tilt at 0 degrees is not the identity: its z offset of 1 + f shrinks the
    # image by f / (1 + f); it is checked against its formula below.)
    for name, v in (("rotate", 0.0), ("scale", 1.0), ("shear", 0.0), ("translate", 0.0)):
        np.testing.assert_allclose(spatial.apply(X, name, v), X, atol=1e-5, err_msg=name)


def test_integer_translation_shifts_with_zero_fill():
    y = np.asarray(spatial.apply(X, "translate", 3 / 17))  # 3 px right and down
    np.testing.assert_allclose(y[:, 3:, 3:], X[:, :-3, :-3], atol=1e-5)
    assert np.all(y[:, :3] == 0) and np.all(y[:, :, :3] == 0)


def _numpy_tilt(a_deg, h, w):  # make_imagenet_p.py's matrix, float64
    p = t = np.deg2rad(a_deg)
    f = np.sqrt(w**2 + h**2)
    p1 = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1], [0, 0, 1]])
    rx = np.array([[1, 0, 0, 0], [0, np.cos(t), -np.sin(t), 0], [0, np.sin(t), np.cos(t), 0],
                   [0, 0, 0, 1]])
    ry = np.array([[np.cos(p), 0, -np.sin(p), 0], [0, 1, 0, 0], [np.sin(p), 0, np.cos(p), 0],
                   [0, 0, 0, 1]])
    tt = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, f], [0, 0, 0, 1]])
    p2 = np.array([[f, 0, w / 2, 0], [0, f, h / 2, 0], [0, 0, 1, 0]])
    return p2 @ tt @ rx @ ry @ p1


def _scipy_warp(img, forward):
    """Inverse mapping with scipy's map_coordinates (order 1, zeros outside)."""
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    p = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(forward).T
    sx, sy = p[..., 0] / p[..., 2], p[..., 1] / p[..., 2]
    return np.stack([ndimage.map_coordinates(img[..., c], [sy, sx], order=1, mode="grid-constant")
                     for c in range(img.shape[-1])], -1)


@pytest.mark.parametrize("name,value", [("rotate", 23.0), ("shear", 0.3), ("scale", 0.7),
                                        ("tilt", 12.0)])
def test_warp_matches_scipy_map_coordinates(name, value):
    h, w = X.shape[1:3]
    if name == "tilt":
        forward = _numpy_tilt(value, h, w)
        np.testing.assert_allclose(spatial.tilt_matrix(value, h, w), forward, rtol=1e-5, atol=1e-3)
    else:
        forward = np.asarray(spatial.MATRICES[name](value, h, w), np.float64)
    ref = _scipy_warp(np.asarray(X[0], np.float64), forward)
    np.testing.assert_allclose(spatial.apply(X, name, value)[0], ref, atol=1e-4)


def test_distort_grid_and_errors():
    for name in spatial.SPATIAL_SEVERITIES:
        changes = [float(jnp.abs(spatial.distort(X, name, s) - X).mean()) for s in (1, 5)]
        assert changes[0] < changes[1], name
    with pytest.raises(ValueError, match="valid"):
        spatial.distort(X, "warp", 1)


@pytest.fixture(scope="module")
def frames():
    x = X[:1, :16, :16]
    out = {}
    for n in sequences.PERTURBATIONS:
        f = jax.jit(lambda x, k, n=n: sequences.perturbation_sequence(x, n, k, scale_pixels=True))
        out[n] = np.asarray(f(x, jax.random.key(1)))
    return out


def test_sequence_shapes_and_identity_frames(frames):
    x = np.asarray(X[:1, :16, :16])
    for name, f in frames.items():
        n = 41 if name == "translate" else 31
        assert f.shape == (1, n, 16, 16, 3), name
        assert f.min() >= 0 and f.max() <= 1, name
    for name, i in (("gaussian_noise", 0), ("shot_noise", 0), ("zoom_blur", 0), ("rotate", 15),
                    ("scale", 24), ("translate", 20), ("brightness", 15)):
        np.testing.assert_allclose(frames[name][:, i], x, atol=2e-5, err_msg=name)
    # gaussian noise frames: std 0.03 where no clipping occurs
    d = frames["gaussian_noise"][:, 1:] - x[:, None]
    inside = (x[:, None] > 0.15) & (x[:, None] < 0.85)
    assert abs(d[np.broadcast_to(inside, d.shape)].std() / 0.03 - 1) < 0.05
    # temporal sequences change gradually: consecutive frames closer than first-to-last
    for name in ("rotate", "scale", "brightness", "motion_blur"):
        f = frames[name][0]
        assert np.abs(f[1] - f[0]).mean() < np.abs(f[-1] - f[0]).mean(), name


def test_flip_probability_of_constant_and_pixel_classifier(frames):
    f = frames["rotate"]
    constant = np.zeros(f.shape[:2], int)
    assert metrics.flip_probability(constant, noise=False) == 0.0
    bright = (f.mean(axis=(2, 3, 4)) > f[:, 15].mean()).astype(int)
    fp = metrics.flip_probability(bright, noise=False)
    assert 0.0 <= fp <= 1.0
