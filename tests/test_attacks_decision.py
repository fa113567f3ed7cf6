"""HopSkipJump and Boundary: label-only access, exact query budgets, the affine closed form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks_b_models
from attacks_b_models import counting, predict

from robustjax.attacks import decision
from robustjax.attacks.boundary import BoundaryConfig, boundary
from robustjax.attacks.hopskipjump import HopSkipJumpConfig, hopskipjump


@pytest.fixture(scope="module")
def digits_mlp():
    return attacks_b_models.digits_mlp(16)


def affine(b=6, side=8, seed=1):
    """Two-class affine model on side x side x 1 images in [0.35, 0.65] (d = side^2)."""
    rng = np.random.default_rng(seed)
    n = side * side
    w = rng.normal(size=n).astype(np.float32)
    x = rng.uniform(0.35, 0.65, size=(b, side, side, 1)).astype(np.float32)
    f = x.reshape(b, -1) @ w
    c = -np.float32(np.median(f))
    W = np.zeros((n, 2), np.float32)
    W[:, 1] = w
    params = (jnp.asarray(W), jnp.asarray(np.array([0.0, c], np.float32)))
    f = (f + c).astype(np.float64)
    return attacks_b_models.linear_apply, params, jnp.asarray(x), jnp.asarray(
        (f > 0).astype(np.int32)), f, w.astype(np.float64)


def labels_only(apply_fn):
    """The model as a label-only API: one-hot of the argmax, no scores."""
    def f(p, xb):
        logits = apply_fn(p, xb)
        return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1])

    return f


@pytest.mark.parametrize("norm,tol", [("l2", 0.015), ("linf", 0.04)])
def test_hopskipjump_converges_to_the_affine_distance(norm, tol):
    """On an affine classifier the boundary distance is |w.x + b| / ||w||_dual exactly."""
    apply_fn, params, x, y, f, w = affine()
    exact = np.abs(f) / (np.linalg.norm(w) if norm == "l2" else np.abs(w).sum())
    assert exact.max() < 0.35  # the box does not bind: the closed form is the true minimum
    cfg = HopSkipJumpConfig(norm=norm, num_iterations=25)
    # through a label-only API (one-hot outputs): the attack needs nothing else
    res = jax.jit(functools.partial(hopskipjump, labels_only(apply_fn), config=cfg))(
        params, x, y, jax.random.key(0))
    ratio = np.asarray(res.norm) / exact
    assert np.all(np.asarray(res.success))
    assert np.all(ratio >= 1 - 1e-4), ratio  # adversarial points cannot beat the closed form
    assert np.median(ratio) < 1 + tol and ratio.max() < 1 + 2 * tol, ratio
    tn = np.asarray(res.trace_norm)
    # and it gets there: 2x closer to the closed form over the last 20 iterations
    assert np.median(tn[:, 5] / exact - 1) > 2 * np.median(ratio - 1), tn[:, 5] / exact
    assert np.all(tn[:, 0] > 1.5 * exact)  # the start was far from the boundary
    np.testing.assert_allclose(tn[:, -1], np.asarray(res.norm), rtol=1e-6)


def test_label_only_and_exact_queries_under_a_budget(digits_mlp):
    """Same result from a one-hot label API; the labels asked for == the reported queries."""
    apply_fn, params, x, y = digits_mlp
    for attack, cfg in [
        (hopskipjump, HopSkipJumpConfig(num_iterations=6, max_queries=500)),
        (boundary, BoundaryConfig(steps=200, max_queries=155)),
    ]:
        log = []
        run_counted = jax.jit(functools.partial(attack, counting(labels_only(apply_fn), log),
                                                config=cfg))
        run_logits = jax.jit(functools.partial(attack, apply_fn, config=cfg))
        for i in range(2):
            xi, yi, k = x[i:i + 1], y[i:i + 1], jax.random.key(i)
            log.clear()
            r = run_counted(params, xi, yi, k)
            jax.effects_barrier()
            assert sum(log) == int(r.queries[0]) <= cfg.max_queries, (sum(log), r.queries)
            r2 = run_logits(params, xi, yi, k)
            np.testing.assert_array_equal(np.asarray(r.x_adv), np.asarray(r2.x_adv))
            np.testing.assert_array_equal(np.asarray(r.queries), np.asarray(r2.queries))
            tq = np.asarray(r.trace_queries[0])
            assert np.all(np.diff(tq) >= 0) and tq[-1] <= int(r.queries[0])


@pytest.mark.parametrize("attack,cfg", [
    (hopskipjump, HopSkipJumpConfig(norm="linf", num_iterations=8, max_queries=700)),
    (boundary, BoundaryConfig(steps=600, max_queries=600)),
])
def test_decision_invariants_on_a_trained_model(digits_mlp, attack, cfg):
    apply_fn, params, x, y = digits_mlp
    y = np.asarray(y).copy()
    pred_clean = predict(apply_fn, params, x)
    y[0] = (pred_clean[0] + 1) % 10  # one example is misclassified from the start
    y = jnp.asarray(y)
    res = jax.jit(functools.partial(attack, apply_fn, config=cfg))(params, x, y,
                                                                   jax.random.key(3))
    xa, q = np.asarray(res.x_adv), np.asarray(res.queries)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    assert np.all(q <= cfg.max_queries)
    succ = np.asarray(res.success)
    pred = predict(apply_fn, params, res.x_adv)
    np.testing.assert_array_equal(succ, pred != np.asarray(y))  # adversarial where claimed
    assert succ.all()
    diff = (xa - np.asarray(x)).reshape(len(xa), -1).astype(np.float64)
    d = np.abs(diff).max(1) if cfg.norm == "linf" else np.sqrt((diff ** 2).sum(1))
    np.testing.assert_allclose(np.asarray(res.norm), d, rtol=1e-5, atol=1e-6)
    assert q[0] == 1 and d[0] == 0.0  # misclassified: one query, x itself
    tn = np.asarray(res.trace_norm)[1:]
    assert np.median(tn[:, -1]) < 0.9 * np.median(tn[:, 0]), tn[:, [0, -1]]
    # a radius turns the min-norm result into a success rate at eps
    srt = np.sort(d[1:])
    cut = float(srt[7] + srt[8]) / 2  # between two examples' norms: no ties at the radius
    at_eps = decision.result(x, res.x_adv, res.is_adv, res.queries, cfg.norm, cut,
                             res.trace_queries, res.trace_norm)
    np.testing.assert_array_equal(np.asarray(at_eps.success), d <= cut)


def test_boundary_approaches_the_affine_distance():
    apply_fn, params, x, y, f, w = affine(b=4, side=4)
    exact = np.abs(f) / np.linalg.norm(w)
    res = jax.jit(functools.partial(boundary, apply_fn, config=BoundaryConfig(steps=1500)))(
        params, x, y, jax.random.key(0))
    ratio = np.asarray(res.norm) / exact
    tn = np.asarray(res.trace_norm) / exact[:, None]
    assert np.all(ratio >= 1 - 1e-4) and np.all(np.asarray(res.success))
    assert np.all(np.diff(tn, axis=1) <= 1e-6)  # the accepted point only ever gets closer
    assert np.median(ratio) < 1.3 and np.median(tn[:, 0]) > 3.0, (ratio, tn[:, 0])


def test_starting_points_and_bad_input(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    with pytest.raises(ValueError, match="norm"):
        HopSkipJumpConfig(norm="l1")
    with pytest.raises(ValueError, match="starting_points"):
        hopskipjump(apply_fn, params, x, y, jax.random.key(0),
                    HopSkipJumpConfig(targeted=True))
    with pytest.raises(ValueError, match="shape"):
        boundary(apply_fn, params, x, y, jax.random.key(0), BoundaryConfig(steps=10),
                 starting_points=x[:2])
    # targeted from images of the target class: every result is of the target class
    pred = predict(apply_fn, params, x)
    target = np.roll(pred, 1)
    cfg = HopSkipJumpConfig(targeted=True, num_iterations=3, max_queries=300)
    run = jax.jit(functools.partial(hopskipjump, apply_fn, config=cfg))
    res = run(params, x, jnp.asarray(target, jnp.int32), jax.random.key(0),
              starting_points=jnp.roll(x, 1, axis=0))
    np.testing.assert_array_equal(predict(apply_fn, params, res.x_adv)[np.asarray(res.success)],
                                  target[np.asarray(res.success)])
    assert np.asarray(res.success).mean() > 0.8
