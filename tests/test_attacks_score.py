"""NES and ZOO: score-only access, exact query budgets, gradient estimates vs jax.grad."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks_b_models
from attacks_b_models import counting, no_grad, predict

from robustjax.attacks.nes import NESConfig, nes, nes_gradient
from robustjax.attacks.zoo import ZOOConfig, zoo, zoo_gradient


@pytest.fixture(scope="module")
def digits_mlp():
    return attacks_b_models.digits_mlp(24)


def smooth_loss(b=4, seed=0):
    """A smooth (tanh) network's cross-entropy on 6x6x1 images, per example, and a batch."""
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(36, 16)) / 6, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(16, 5)) / 4, jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, b), jnp.int32)

    def loss(xb, labels):
        z = jnp.tanh(xb.reshape(xb.shape[0], -1) @ w1) @ w2
        return -jnp.take_along_axis(jax.nn.log_softmax(z), labels[:, None], 1)[:, 0]

    x = jnp.asarray(rng.uniform(0.2, 0.8, (b, 6, 6, 1)), jnp.float32)
    return loss, x, y


def cosine(a, b):
    a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_nes_and_zoo_estimates_follow_the_true_gradient():
    loss, x, y = smooth_loss()
    g_true = jax.grad(lambda xx: loss(xx, y).sum())(x)
    cos = {}
    for n in (50, 4000):
        est = jax.jit(lambda xx, k, n=n: nes_gradient(lambda xb: loss(xb, jnp.repeat(y, n)),
                                                       xx, k, 1e-3, n))
        cos[n] = cosine(est(x, jax.random.key(0)), g_true)
    # E[g] = grad; its error shrinks like sqrt(d / n): cos ~ 1 / sqrt(1 + d / n), d = 36
    assert np.all(cos[4000] > 0.97), cos
    assert np.all(cos[50] > 0.4) and cos[50].mean() < cos[4000].mean(), cos
    d = 36
    idx = jnp.tile(jnp.arange(d), (x.shape[0], 1))
    g_zoo = zoo_gradient(lambda xb: loss(xb, jnp.repeat(y, 2 * d + 1)), x, idx, 1e-3)
    g_flat = np.asarray(g_true).reshape(len(x), -1)
    assert np.all(cosine(g_zoo, g_flat) > 0.999)
    np.testing.assert_allclose(np.asarray(g_zoo), g_flat, atol=2e-3 * np.abs(g_flat).max())
    # a random subset of coordinates estimates exactly those coordinates
    sub = jnp.asarray(np.random.default_rng(1).permutation(d)[:7])[None].repeat(len(x), 0)
    g_sub = zoo_gradient(lambda xb: loss(xb, jnp.repeat(y, 15)), x, sub, 1e-3)
    np.testing.assert_allclose(np.asarray(g_sub), np.take_along_axis(g_flat, np.asarray(sub), 1),
                               atol=2e-3 * np.abs(g_flat).max())


@pytest.mark.parametrize("cfg", [
    NESConfig(eps=0.15, steps=30, max_queries=1 + 20 * 51 + 7),
    NESConfig(eps=1.5, norm="l2", steps=30, learning_rate=0.2),
])
def test_nes_score_only_invariants_and_budget(digits_mlp, cfg):
    apply_fn, params, x, y = digits_mlp
    res = jax.jit(functools.partial(nes, no_grad(apply_fn), config=cfg))(params, x, y,
                                                                        jax.random.key(0))
    xa, q = np.asarray(res.x_adv), np.asarray(res.queries)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    diff = (xa - np.asarray(x)).reshape(len(xa), -1).astype(np.float64)
    n = np.abs(diff).max(1) if cfg.norm == "linf" else np.sqrt((diff ** 2).sum(1))
    assert np.all(n <= cfg.eps + 1e-5)
    np.testing.assert_allclose(np.asarray(res.norm), n, atol=1e-5)
    budget = 1 + cfg.num_steps * cfg.queries_per_step
    assert cfg.max_queries is None or budget <= cfg.max_queries
    assert np.all((q - 1) % cfg.queries_per_step == 0) and np.all(q <= budget)
    succ = np.asarray(res.success)
    np.testing.assert_array_equal(succ, predict(apply_fn, params, res.x_adv) != np.asarray(y))
    assert np.all(q[~succ] == budget)  # failures spend the whole budget
    clean = predict(apply_fn, params, x) == np.asarray(y)
    assert succ.mean() > 1 - clean.mean() + 0.4, succ.mean()


def test_zoo_score_only_finds_close_adversarials(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    cfg = ZOOConfig(iterations=60, coordinates_per_step=32, binary_search_steps=2,
                    max_queries=2 * 60 * 65 + 50)
    res = jax.jit(functools.partial(zoo, no_grad(apply_fn), config=cfg))(params, x, y,
                                                                        jax.random.key(0))
    xa, q = np.asarray(res.x_adv), np.asarray(res.queries)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    assert np.all(q == 2 * 60 * 65) and np.all(q <= cfg.max_queries)
    succ = np.asarray(res.success)
    pred = predict(apply_fn, params, res.x_adv)
    np.testing.assert_array_equal(pred[succ] != np.asarray(y)[succ], True)
    np.testing.assert_array_equal(xa[~succ], np.asarray(x)[~succ])
    assert succ.mean() > 0.8
    n = np.sqrt(((xa - np.asarray(x)) ** 2).reshape(len(xa), -1).sum(1))
    np.testing.assert_allclose(np.asarray(res.norm), n, atol=1e-5)
    assert np.all(np.asarray(res.loss)[succ] > 0)  # the log-probability margin at x_adv
    # the L2 term keeps it small: far below a random point's distance
    assert np.median(n[succ]) < 1.5, np.median(n[succ])


@pytest.mark.parametrize("attack,cfg", [
    (nes, NESConfig(eps=0.3, steps=6, samples_per_draw=10, learning_rate=0.05)),
    (zoo, ZOOConfig(iterations=5, coordinates_per_step=8, max_queries=100)),
])
def test_query_count_is_exact(digits_mlp, attack, cfg):
    """With one image, the images the model actually scored == the reported queries."""
    apply_fn, params, x, y = digits_mlp
    log, seen = [], []
    run = jax.jit(functools.partial(attack, counting(apply_fn, log), config=cfg))
    for i in range(3):
        log.clear()
        res = run(params, x[i:i + 1], y[i:i + 1], jax.random.key(i))
        jax.effects_barrier()
        assert sum(log) == int(res.queries[0]), (i, sum(log), res.queries)
        seen.append(int(res.queries[0]))
    if attack is zoo:
        assert seen == [5 * 17] * 3 and 5 * 17 <= cfg.max_queries
    else:
        assert len(set(seen)) > 1  # early stops were counted too


def test_bad_configs():
    with pytest.raises(ValueError, match="even"):
        NESConfig(samples_per_draw=7)
    with pytest.raises(ValueError, match="norm"):
        NESConfig(norm="l1")
    with pytest.raises(ValueError, match="coordinates_per_step"):
        ZOOConfig(coordinates_per_step=0)
    with pytest.raises(ValueError, match="eps"):
        NESConfig(eps=-1.0)
