"""Square and SPSA: score-only access, exact query budgets, threat-model invariants."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks_b_models

from robustjax.attacks.spsa import SPSAConfig, spsa
from robustjax.attacks.square import SquareConfig, meta_pseudo_gaussian, p_selection, square


@pytest.fixture(scope="module")
def digits_mlp():
    return attacks_b_models.digits_mlp()


def no_grad(apply_fn):
    """apply_fn whose backward pass raises, and which has no forward-mode rule either."""

    @jax.custom_vjp
    def f(p, x):
        return apply_fn(p, x)

    def fwd(p, x):
        return f(p, x), None

    def bwd(res, g):
        raise AssertionError("a score-based attack asked for a gradient of the model")

    f.defvjp(fwd, bwd)
    return f


predict = attacks_b_models.predict


def test_no_grad_wrapper_really_raises(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    f = no_grad(apply_fn)
    with pytest.raises(AssertionError, match="gradient"):
        jax.grad(lambda xx: f(params, xx).sum())(x)


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.5)])
def test_square_score_only_invariants_and_budget(digits_mlp, norm, eps):
    apply_fn, params, x, y = digits_mlp
    cfg = SquareConfig(eps=eps, norm=norm, n_queries=200)
    run = jax.jit(functools.partial(square, no_grad(apply_fn), config=cfg))
    res = run(params, x, y, jax.random.key(0))
    xa, q = np.asarray(res.x_adv), np.asarray(res.queries)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    d = (xa - np.asarray(x)).reshape(len(xa), -1).astype(np.float64)
    n = np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))
    assert np.all(n <= eps + 1e-5)
    np.testing.assert_allclose(np.asarray(res.norm), n, atol=1e-5)
    assert np.all((q >= 1) & (q <= cfg.n_queries))
    pred = predict(apply_fn, params, res.x_adv)
    succ = np.asarray(res.success)
    np.testing.assert_array_equal(succ, pred != np.asarray(y))  # truthful flags
    assert np.all(q[~succ] == cfg.n_queries)  # failures spend the whole budget
    clean = predict(apply_fn, params, x) == np.asarray(y)
    assert succ.mean() > 1 - clean.mean() + 0.3, succ.mean()  # the attack actually works


def counting(apply_fn, log):
    """apply_fn that records on the host how many images each forward pass scores."""

    def f(p, xb):
        jax.debug.callback(lambda n: log.append(int(n)), jnp.int32(xb.shape[0]))
        return apply_fn(p, xb)

    return f


@pytest.mark.parametrize("attack,cfg", [
    (square, SquareConfig(eps=0.1, n_queries=120)),
    (square, SquareConfig(eps=1.0, norm="l2", n_queries=120)),
    (spsa, SPSAConfig(eps=0.3, num_samples=8, iterations=8, learning_rate=0.05)),
])
def test_query_count_is_exact(digits_mlp, attack, cfg):
    """With one image, the images the model actually scored == the reported queries."""
    apply_fn, params, x, y = digits_mlp
    seen, log = [], []
    run = jax.jit(functools.partial(attack, counting(apply_fn, log), config=cfg))
    for i in range(4):  # successes after a few queries and failures at the full budget
        log.clear()
        res = run(params, x[i:i + 1], y[i:i + 1], jax.random.key(i))
        jax.effects_barrier()
        assert sum(log) == int(res.queries[0]), (i, sum(log), res.queries)
        seen.append((bool(res.success[0]), int(res.queries[0])))
    budget = cfg.n_queries if attack is square else 1 + cfg.steps * cfg.queries_per_step
    assert all(q <= budget for _, q in seen)
    assert any(ok and 1 < q < budget for ok, q in seen), seen  # early stops were counted too


def test_p_schedule_matches_reference():
    def ref(p_init, it, n_iters):  # the authors' p_selection, written out
        it = int(it / n_iters * 10000)
        bounds = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000, 10000]
        for k in range(9):
            if bounds[k] < it <= bounds[k + 1]:
                return p_init / 2 ** (k + 1)
        return p_init

    for n_iters in (100, 5000, 10000):
        for it in range(0, n_iters, max(1, n_iters // 97)):
            np.testing.assert_allclose(float(p_selection(0.8, it, n_iters)), ref(0.8, it, n_iters))


def test_meta_pseudo_gaussian_shape():
    for s in (3, 5, 7, 11):
        d = meta_pseudo_gaussian(s)
        assert d.shape == (s, s)
        np.testing.assert_allclose(np.sum(d ** 2), 1.0)
        assert np.all(d[: s // 2] >= 0) and np.all(d[s // 2:] <= 0)


def test_spsa_score_only_invariants_and_budget(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    cfg = SPSAConfig(eps=0.15, num_samples=16, iterations=50, max_queries=1 + 4 * 33 + 10,
                     learning_rate=0.02)
    assert cfg.steps == 4
    run = jax.jit(functools.partial(spsa, no_grad(apply_fn), config=cfg))
    res = run(params, x, y, jax.random.key(0))
    xa, q = np.asarray(res.x_adv), np.asarray(res.queries)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    assert np.abs(xa - np.asarray(x)).max() <= cfg.eps + 1e-6
    assert np.all(q <= cfg.max_queries)
    assert np.all((q - 1) % cfg.queries_per_step == 0)
    succ = np.asarray(res.success)
    np.testing.assert_array_equal(succ, predict(apply_fn, params, res.x_adv) != np.asarray(y))
    assert np.all(q[~succ] == 1 + cfg.steps * cfg.queries_per_step)


def test_spsa_attacks_and_targets(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    clean = predict(apply_fn, params, x) == np.asarray(y)
    res = spsa(apply_fn, params, x, y, jax.random.key(2),
               SPSAConfig(eps=0.2, num_samples=32, iterations=30, learning_rate=0.02))
    assert np.mean(np.asarray(res.success)) > 1 - clean.mean() + 0.3
    # on a trained model the estimate ascends the margin: the final margin beats the clean one
    target = (np.asarray(y) + 1) % 10
    rt = spsa(apply_fn, params, x, jnp.asarray(target, jnp.int32), jax.random.key(3),
              SPSAConfig(eps=0.3, num_samples=32, iterations=30, learning_rate=0.03,
                         targeted=True))
    pred = predict(apply_fn, params, rt.x_adv)
    np.testing.assert_array_equal(np.asarray(rt.success), pred == target)
    assert np.mean(pred == target) > 0.5


def test_square_eps_sweep_vmap_matches_loop(digits_mlp):
    """One compiled program for several eps: vmap gives the same results as a loop."""
    from robustjax.attacks.search import eps_sweep

    apply_fn, params, x, y = digits_mlp
    eps = [0.05, 0.1, 0.2]
    cfg = SquareConfig(n_queries=30)
    rv = eps_sweep(square, apply_fn, params, x[:8], y[:8], jax.random.key(0), cfg, eps,
                   strategy="vmap")
    ru = eps_sweep(square, apply_fn, params, x[:8], y[:8], jax.random.key(0), cfg, eps,
                   strategy="unroll")
    np.testing.assert_allclose(np.asarray(rv.x_adv), np.asarray(ru.x_adv), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(rv.queries), np.asarray(ru.queries))
    assert np.all(np.asarray(rv.norm).max(1) <= np.asarray(eps) + 1e-6)


def test_square_targeted_reaches_targets(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    target = jnp.asarray((np.asarray(y[:16]) + 1) % 10, jnp.int32)
    cfg = SquareConfig(eps=0.3, n_queries=200, targeted=True)  # paper: CE loss when targeted
    res = square(apply_fn, params, x[:16], target, jax.random.key(4), cfg)
    pred = predict(apply_fn, params, res.x_adv)
    np.testing.assert_array_equal(np.asarray(res.success), pred == np.asarray(target))
    assert np.mean(pred == np.asarray(target)) > 0.5
    assert np.abs(np.asarray(res.x_adv - x[:16])).max() <= 0.3 + 1e-6
