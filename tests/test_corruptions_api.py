"""`corrupt` on batches: shapes and ranges for all 19, determinism per key, grayscale inputs,
jit/vmap, input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.corruptions import CORRUPTIONS, corrupt

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.uniform(0.1, 0.9, size=(2, 32, 32, 3)), jnp.float32)
# The batch of the reference tests (8 copies of a 64 x 64 photo), so that the compiled
# corruptions are shared with them.
CLEAN = np.load(__import__("pathlib").Path(__file__).parent / "fixtures" /
                "corruptions_reference.npz")["clean"]
XB = jnp.asarray(np.repeat(CLEAN[None], 8, 0) / 255.0, jnp.float32)
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "elastic_transform", "speckle_noise", "spatter")


def test_all_corruptions_shape_range_and_key_determinism():
    k1, k2 = jax.random.key(1), jax.random.key(2)
    x = np.asarray(XB)
    for name in CORRUPTIONS:
        y = corrupt(XB, name, 3, k1)
        assert y.shape == XB.shape and y.dtype == jnp.float32, name
        y = np.asarray(y)
        assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1, name
        assert np.abs(y - x).mean() > 1e-3, f"{name} left the images unchanged"
        if name in RANDOM:
            np.testing.assert_array_equal(y, corrupt(XB, name, 3, k1), name)
            assert not np.array_equal(y, corrupt(XB, name, 3, k2)), name
            # images of a batch (here all equal) draw independently
            assert not np.allclose(y[0], y[1]), name


def test_grayscale_inputs_are_replicated_and_returned_as_luma():
    g = X[..., :1]
    y = corrupt(g, "brightness", 3)  # HSV value + 0.3 on a gray pixel is gray + 0.3
    assert y.shape == g.shape
    np.testing.assert_allclose(y, np.clip(g + 0.3, 0, 1), atol=1e-6)
    y = corrupt(g, "gaussian_blur", 1, scale_pixels=True)
    ref = corrupt(jnp.repeat(g, 3, -1), "gaussian_blur", 1, scale_pixels=True)[..., :1]
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_jit_and_vmap_agree_with_eager():
    f = jax.jit(corrupt, static_argnames=("name", "severity"))
    key = jax.random.key(3)
    np.testing.assert_allclose(f(X, "gaussian_noise", 2, key), corrupt(X, "gaussian_noise", 2, key),
                               atol=1e-6)
    keys = jax.random.split(key, 3)
    ys = jax.vmap(lambda k: corrupt(X, "gaussian_noise", 2, k))(keys)
    np.testing.assert_allclose(ys[1], corrupt(X, "gaussian_noise", 2, keys[1]), atol=1e-6)
    ys = jax.vmap(lambda x: corrupt(x[None], "jpeg_compression", 1)[0])(X)  # host callback
    np.testing.assert_allclose(ys, corrupt(X, "jpeg_compression", 1), atol=1e-6)


def test_input_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="valid names"):
        corrupt(X, "rain", 1, jax.random.key(0))
    with pytest.raises(ValueError, match="severity"):
        corrupt(X, "fog", 0, jax.random.key(0))
    with pytest.raises(ValueError, match="PRNG key"):
        corrupt(X, "fog", 1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        corrupt(jnp.zeros((1, 32, 32, 2)), "contrast", 1)
    with pytest.raises(ValueError, match="batch"):
        corrupt(X[0], "contrast", 1)


def test_poisson_sampler_matches_poisson_law():
    from scipy import stats

    from robustjax.corruptions import noise

    lam = jnp.array([0.0, 0.5, 3.0, 12.0, 60.0], jnp.float32)
    n = 20000
    s = np.asarray(noise.poisson(jax.random.key(0), jnp.broadcast_to(lam, (n, 5)), 60.0))
    assert np.all(s == np.round(s)) and np.all(s[:, 0] == 0)
    for j, l in enumerate(np.asarray(lam)[1:], start=1):
        col = s[:, j]
        assert abs(col.mean() - l) < 5 * np.sqrt(l / n), (l, col.mean())
        assert abs(col.var() / l - 1) < 0.05, (l, col.var())
        # frequencies of the most likely values against the pmf (5 sigma binomial bands)
        for k in range(int(l) - 2, int(l) + 3):
            if k >= 0:
                p = stats.poisson.pmf(k, l)
                assert abs(np.mean(col == k) - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-4, (l, k)


@pytest.mark.parametrize("name", ["defocus_blur", "gaussian_blur", "glass_blur", "spatter", "fog"])
def test_chunked_corruptions_equal_the_whole_batch_under_jit_and_vmap(name, monkeypatch):
    from robustjax.corruptions import _fusion, registry

    x = jnp.asarray(RNG.uniform(0.1, 0.9, size=(5, 40, 36, 3)), jnp.float32)
    key = jax.random.key(11)
    whole = np.asarray(corrupt(x, name, 3, key))
    # force chunks of 2 images (and a remainder of 1) on these small images
    monkeypatch.setattr(_fusion, "CHUNK_BYTES", 2 * 40 * 36 * 3 * 4)
    monkeypatch.setattr(registry, "_compiled", registry._compiled.__wrapped__)
    assert _fusion.batch_chunk(5, 40 * 36 * 3 * 4) == 2
    np.testing.assert_allclose(np.asarray(corrupt(x, name, 3, key)), whole, atol=1e-6)
    keys = jax.random.split(key, 2)
    ys = jax.jit(jax.vmap(lambda k: corrupt(x, name, 3, k)))(keys)
    np.testing.assert_allclose(np.asarray(ys[1]), np.asarray(corrupt(x, name, 3, keys[1])), atol=1e-6)
