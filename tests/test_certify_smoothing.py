"""Randomized smoothing against a linear classifier, where p_A and the radius are known."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from robustjax.certify import smoothing

W = jnp.array([0.6, -0.8, 0.0, 0.0])  # ||w|| = 1: the margin is the L2 distance to the boundary


def linear(params, x):
    score = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
    return jnp.stack([score, jnp.zeros_like(score)], axis=-1)  # class 0 iff w.x + b > 0


PARAMS = {"w": W, "b": jnp.float32(0.1)}
CFG = smoothing.SmoothingConfig(sigma=0.25, batch_size=10_000)


def _image(distance):
    """An image whose signed distance to the decision boundary is ``distance``."""
    x = jnp.array([0.5, 0.5, 0.3, 0.7])
    shift = distance - (x @ W + PARAMS["b"])
    return (x + shift * W).reshape(1, 4, 1)


def test_binomial_tail_at_clopper_pearson_bound():
    """At the lower bound p, P(Bin(n, p) >= k) = alpha (exact sum, no scipy)."""
    for n, k, alpha in [(50, 45, 0.001), (200, 120, 0.05), (1000, 999, 0.001)]:
        p = smoothing.clopper_pearson_lower(k, n, alpha)
        tail = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))
        np.testing.assert_allclose(tail, alpha, rtol=1e-6)
    assert smoothing.clopper_pearson_lower(0, 10, 0.001) == 0.0


def test_counts_match_gaussian_probability():
    x = _image(0.2)[0]
    counts = np.asarray(smoothing.sample_counts(linear, PARAMS, x, jax.random.PRNGKey(0),
                                                100_000, 10_000, 0.25))
    assert counts.sum() == 100_000
    p = stats.norm.cdf(0.2 / 0.25)  # Phi(margin / sigma), ||w|| = 1
    assert abs(counts[0] / 1e5 - p) < 5 * math.sqrt(p * (1 - p) / 1e5)
    # a partial last batch is masked: exactly num samples are counted
    part = smoothing.sample_counts(linear, PARAMS, x, jax.random.PRNGKey(1), 1234, 500, 0.25)
    assert int(part.sum()) == 1234


def test_certify_radius_close_to_true_distance():
    distances = [0.2, 0.4, -0.3, 0.0]
    x = jnp.concatenate([_image(d) for d in distances])[..., None].reshape(4, 1, 4, 1)
    pred, radius = smoothing.certify(linear, PARAMS, x, jax.random.PRNGKey(2), CFG)
    for d, p, r in zip(distances, pred, radius):
        if d == 0.0:
            assert p == smoothing.ABSTAIN and r == 0.0  # p_A = 1/2: abstain
            continue
        assert p == (0 if d > 0 else 1)
        # the certified radius is below the true one and within the CP slack of it
        slack = 0.25 * (abs(d) / 0.25 - stats.norm.ppf(stats.norm.cdf(abs(d) / 0.25) - 0.01))
        assert abs(d) - slack < r < abs(d), (d, r)
    acc = smoothing.certified_accuracy(pred, radius, np.array([0, 0, 1, 0]), [0.0, 0.25, 1.0])
    np.testing.assert_allclose(acc, [0.75, 0.5, 0.0])


def test_predict_abstains_on_the_boundary():
    x = jnp.concatenate([_image(0.3), _image(0.0)])
    pred = smoothing.predict(linear, PARAMS, x, jax.random.PRNGKey(3),
                             smoothing.SmoothingConfig(sigma=0.25, n=10_000, batch_size=5_000))
    np.testing.assert_array_equal(pred, [0, smoothing.ABSTAIN])
