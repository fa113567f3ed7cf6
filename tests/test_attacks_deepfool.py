"""DeepFool: exact boundary distances on affine models, invariants on a small MLP."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks_b_models
from robustjax.attacks.deepfool import DeepFoolConfig, deepfool


@pytest.mark.parametrize("norm,q", [("l2", 2), ("linf", 1)])
def test_affine_binary_exact_distance(norm, q):
    apply_fn, params, x, y, f, w = attacks_b_models.affine_binary()
    cfg = DeepFoolConfig(norm=norm)
    res = deepfool(apply_fn, params, x, y, jax.random.key(0), cfg)
    # one linearisation lands (1 + overshoot) times beyond the exact boundary distance
    exact = np.abs(f) / np.linalg.norm(w, q)
    expected = (1 + cfg.overshoot) * (np.abs(f) + 1e-4) / np.linalg.norm(w, q)
    np.testing.assert_allclose(np.asarray(res.norm), expected, rtol=2e-4)
    assert np.all(np.asarray(res.norm) > exact)
    assert np.all(np.asarray(res.success)) and np.all(np.asarray(res.queries) == 1)
    d = np.asarray(res.x_adv - x).reshape(len(f), -1)
    # the step is along -sign(f) * w (L2) or -sign(f) * sign(w) (Linf), unit in its norm
    direction = w / np.linalg.norm(w) if norm == "l2" else np.sign(w)
    expected_d = -np.sign(f)[:, None] * direction[None] * np.asarray(res.norm)[:, None]
    np.testing.assert_allclose(d, expected_d, rtol=2e-3, atol=1e-6)


def test_affine_multiclass_nearest_hyperplane():
    """Linear 5-class model: the first step reaches the nearest pairwise boundary (closed form)."""
    rng = np.random.default_rng(1)
    W = rng.normal(size=(16, 5)).astype(np.float32) * 0.3
    bias = rng.normal(size=5).astype(np.float32) * 0.1
    x = rng.uniform(0.4, 0.6, size=(6, 4, 4, 1)).astype(np.float32)
    params = (jnp.asarray(W), jnp.asarray(bias))
    z = x.reshape(6, -1).astype(np.float64) @ W + bias
    y = z.argmax(1)
    dist = []
    for i in range(6):
        d = [abs(z[i, k] - z[i, y[i]]) / np.linalg.norm(W[:, k] - W[:, y[i]])
             for k in range(5) if k != y[i]]
        dist.append(min(d))
    res = deepfool(attacks_b_models.linear_apply, params, jnp.asarray(x),
                   jnp.asarray(y, jnp.int32), jax.random.key(0), DeepFoolConfig(overshoot=0.0))
    # the closest boundary is crossed at once (+1e-4 margin), any third class is also a success
    np.testing.assert_allclose(np.asarray(res.norm), np.asarray(dist), rtol=1e-3, atol=3e-4)
    assert np.all(np.asarray(res.success))


@pytest.fixture(scope="module")
def digits_mlp():
    return attacks_b_models.digits_mlp()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_mlp_invariants(digits_mlp, norm):
    apply_fn, params, x, y = digits_mlp
    run = jax.jit(functools.partial(deepfool, apply_fn, config=DeepFoolConfig(norm=norm)))
    res = run(params, x, y, jax.random.key(0))
    xa = np.asarray(res.x_adv)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    pred = attacks_b_models.predict(apply_fn, params, res.x_adv)
    succ = np.asarray(res.success)
    np.testing.assert_array_equal(succ, pred != np.asarray(y))
    assert succ.mean() > 0.9
    clean_wrong = attacks_b_models.predict(apply_fn, params, x) != np.asarray(y)
    assert np.all(np.asarray(res.norm)[clean_wrong] == 0.0)  # already misclassified: untouched
    d = (xa - np.asarray(x)).reshape(len(xa), -1)
    n = np.sqrt((d ** 2).sum(1)) if norm == "l2" else np.abs(d).max(1)
    np.testing.assert_allclose(np.asarray(res.norm), n, rtol=1e-5, atol=1e-6)


def test_config_errors():
    with pytest.raises(ValueError, match="norm"):
        DeepFoolConfig(norm="l1")
    with pytest.raises(ValueError, match="candidates"):
        DeepFoolConfig(candidates=1)
