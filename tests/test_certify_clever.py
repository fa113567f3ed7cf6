"""CLEVER on models whose local Lipschitz constant is known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.certify import clever

D = 4  # images of shape (2, 2, 1)
W = jnp.array([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.7, 0.1, 0.4], [0.5, 0.5, 0.5]])
B = jnp.array([0.4, 0.0, -0.1])


def linear(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def quadratic(params, x):
    """Two logits [g(x), 0], g(x) = a.(x - x0) + b/2 ||x - x0||^2 + 1: ||grad g|| <= ||a|| + bR."""
    z = x.reshape(x.shape[0], -1) - params["x0"]
    g = z @ params["a"] + 0.5 * params["b"] * jnp.sum(z * z, axis=1) + 1.0
    return jnp.stack([g, jnp.zeros_like(g)], axis=-1)


@pytest.mark.parametrize("norm,q", [("l2", 2), ("linf", 1)])
def test_linear_model_gives_margin_over_dual_norm(norm, q):
    params = {"w": W, "b": B}
    x = jnp.array([[0.2, 0.1, 0.3, 0.4], [0.9, 0.1, 0.0, 0.2]]).reshape(2, 2, 2, 1)
    cfg = clever.CleverConfig(norm=norm, radius=5.0, nb_batch=8, batch_size=16)
    logits = np.asarray(linear(params, x))
    for i in range(2):
        scores, c = clever.clever_scores(linear, params, x[i], jax.random.PRNGKey(i), cfg)
        assert c == np.argmax(logits[i])
        for j in range(3):
            if j == c:
                continue
            exact = (logits[i, c] - logits[i, j]) / np.linalg.norm(W[:, c] - W[:, j], ord=q)
            np.testing.assert_allclose(scores[j], min(exact, 5.0), rtol=1e-5)
    untargeted = clever.clever_untargeted(linear, params, x, jax.random.PRNGKey(0), cfg)
    targeted = clever.clever_targeted(linear, params, x, jnp.array([1, 1]),
                                      jax.random.PRNGKey(0), cfg)
    assert np.all(untargeted <= targeted + 1e-7)


def test_weibull_fit_recovers_the_maximum_gradient_norm():
    a = jnp.array([0.6, 0.8, 0.0, 0.0])  # ||a|| = 1
    x0 = jnp.full((D,), 0.5)
    params = {"a": a, "b": jnp.float32(2.0), "x0": x0}
    radius = 0.5
    true_lips = 1.0 + 2.0 * radius
    maxima, margins, c = clever.gradient_norm_maxima(
        quadratic, params, x0.reshape(2, 2, 1), jax.random.PRNGKey(0), "l2", 100, 64, radius)
    maxima = np.asarray(maxima[:, 1])
    assert int(c) == 0 and np.all(maxima <= true_lips + 1e-5)
    est = clever.reverse_weibull_location(maxima)
    # the EVT estimate extrapolates beyond the observed maxima, towards the true sup
    assert maxima.max() - 1e-6 <= est <= true_lips * 1.05
    assert abs(est - true_lips) < abs(maxima.mean() - true_lips)


def test_ball_samples_stay_inside():
    for norm, q in [("l2", 2), ("linf", np.inf), ("l1", 1)]:
        s = clever.sample_ball(jax.random.PRNGKey(1), 500, (3, 3, 1), norm, 0.3)
        norms = np.linalg.norm(np.asarray(s).reshape(500, -1), ord=q, axis=1)
        assert norms.max() <= 0.3 + 1e-6 and norms.max() > 0.2
    with pytest.raises(ValueError, match="norm"):
        clever.CleverConfig(norm="l3")
