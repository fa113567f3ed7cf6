"""APGD-L1 (Croce & Hein 2021) and FAB with L2/L1: projections against brute-force and
linear-programming references, closed-form minimal distances of a linear classifier, EOT."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustjax.attacks import _core
from robustjax.attacks.projections import project_l1_box

A = importlib.import_module("robustjax.attacks.apgd")
L1 = importlib.import_module("robustjax.attacks.apgd_l1")
FAB = importlib.import_module("robustjax.attacks.fab")


def l1_box_reference(v, x, eps):
    """float64 sort-based projection of ``v`` onto {||d||_1 <= eps, 0 <= x + d <= 1}:
    ``d = sign(v) clip(|v| - theta, 0, u)``; the budget is piecewise linear in theta with
    breakpoints at |v_i| and |v_i| - u_i, so theta is exact between two sorted breakpoints."""
    v, x = np.asarray(v, np.float64), np.asarray(x, np.float64)
    u = np.where(v > 0, 1 - x, x)
    a = np.abs(v)

    def total(t):
        return np.clip(a - t, 0, u).sum()

    if total(0.0) <= eps:
        return np.sign(v) * np.clip(a, 0, u)
    bps = np.unique(np.concatenate([[0.0], a, np.maximum(a - u, 0)]))
    vals = np.array([total(t) for t in bps])  # decreasing in t
    k = np.nonzero(vals <= eps)[0][0]
    t0, t1, f0, f1 = bps[k - 1], bps[k], vals[k - 1], vals[k]
    theta = t0 + (f0 - eps) / (f0 - f1) * (t1 - t0)
    return np.sign(v) * np.clip(a - theta, 0, u)


def test_l1_box_projection_matches_a_sort_based_reference():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 30)).astype(np.float32)
    v = rng.normal(0, 0.5, (8, 30)).astype(np.float32)
    eps = np.array([0.1, 0.5, 1, 2, 4, 8, 30, 0.01], np.float32)
    got = np.asarray(project_l1_box(jnp.asarray(v), jnp.asarray(x), jnp.asarray(eps)))
    for i in range(8):
        np.testing.assert_allclose(got[i], l1_box_reference(v[i], x[i], eps[i]), atol=2e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.floats(0.01, 5.0))
def test_l1_box_projection_is_feasible_and_closest(seed, eps):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (1, 12)).astype(np.float32)
    v = rng.normal(0, 1, (1, 12)).astype(np.float32)
    d = np.asarray(project_l1_box(jnp.asarray(v), jnp.asarray(x), eps))[0]
    assert np.abs(d).sum() <= eps * (1 + 1e-5) + 1e-6
    assert np.all(x[0] + d >= -1e-6) and np.all(x[0] + d <= 1 + 1e-6)
    ref = l1_box_reference(v[0], x[0], eps)
    # no feasible point is closer to v than the projection (the reference is optimal)
    assert np.linalg.norm(d - v[0]) <= np.linalg.norm(ref - v[0]) + 1e-5


def test_sparse_l1_direction_moves_the_top_fraction():
    g = jnp.asarray(np.arange(1.0, 101.0)[None] * np.where(np.arange(100) % 2, 1, -1)[None])
    d = np.asarray(L1.sparse_l1_direction(g, jnp.asarray([0.2])))
    assert np.count_nonzero(d) == 20 and np.abs(d).sum() == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.nonzero(d[0])[0] >= 80)  # the 20 largest |g|
    np.testing.assert_array_equal(np.sign(d[0, 80:]), np.sign(np.asarray(g)[0, 80:]))
    assert L1.largereps_schedule(100) == [(3.0, 30), (2.0, 30), (1.0, 40)]


def linear_model(seed, n=12):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=16).astype(np.float32)
    x = rng.uniform(0.4, 0.6, (n, 4, 4, 1)).astype(np.float32)
    c = -float(np.median(x.reshape(n, -1) @ w))
    params = {"w": jnp.asarray(w), "c": jnp.float32(c)}

    def apply(p, z):  # 4 classes; the boundary between 0 and 1 is the hyperplane
        s = z.reshape(z.shape[0], -1) @ p["w"] + p["c"]
        return jnp.stack([jnp.zeros_like(s), s, -s - 1.0, -s - 2.0], -1)

    x = jnp.asarray(x)
    y = jnp.argmax(apply(params, x), -1).astype(jnp.int32)
    s = np.asarray(x).reshape(n, -1) @ w + c
    return apply, params, x, y, s, w


def test_apgd_l1_stays_in_the_threat_model_and_breaks_a_linear_model():
    apply, params, x, y, s, w = linear_model(2)
    dist = np.abs(s) / np.abs(w).max()  # minimal L1 distance when the box is not binding
    eps = float(np.median(dist))
    for largereps in (False, True):
        cfg = A.APGDConfig(eps=eps, norm="l1", steps=20, use_largereps=largereps, loop="fori")
        r = jax.jit(A.apgd, static_argnums=0)(apply, params, x, y, jax.random.PRNGKey(0), cfg)
        assert np.all(np.asarray(r.norm) <= eps * (1 + 1e-5))
        assert np.all((r.x_adv >= 0) & (r.x_adv <= 1))
        # a linear model: only examples closer than eps can be broken; the clearly close are
        ok = np.asarray(r.success)
        assert not np.any(ok & (dist > eps * (1 + 1e-4)))
        assert np.all(ok[dist < 0.6 * eps]) and ok.sum() >= 3


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_fab_finds_the_minimal_l2_and_l1_distances_of_a_linear_classifier(norm):
    apply, params, x, y, s, w = linear_model(1)
    dual = np.linalg.norm(w) if norm == "l2" else np.abs(w).max()
    dist = np.abs(s) / dual  # exact minimal distance (the box is not binding)
    eps = float(np.median(dist))
    for targeted in (True, False):
        cfg = FAB.FABConfig(eps=eps, targeted=targeted, num_targets=1, steps=20, norm=norm)
        r = jax.jit(FAB.fab, static_argnums=0)(apply, params, x, y, jax.random.PRNGKey(0), cfg)
        ratio = np.asarray(r.norm) / dist
        assert np.all(ratio >= 1 - 1e-4) and np.all(ratio <= 1.05), ratio
        np.testing.assert_array_equal(r.success, np.asarray(r.norm) <= eps * (1 + 1e-6))
        np.testing.assert_array_equal(jnp.argmax(apply(params, r.x_adv), -1) != y, True)


def test_fab_l1_and_l2_hyperplane_projections_are_optimal():
    from scipy.optimize import linprog

    rng = np.random.default_rng(0)
    n = 6
    t = rng.uniform(0, 1, (8, n))
    w = rng.normal(size=(8, n))
    b = (w * t).sum(1) + rng.normal(size=8) * 0.6
    d1 = np.asarray(FAB.project_l1_hyperplane(*map(jnp.asarray, (t, w, b))))
    d2 = np.asarray(FAB.project_l2_hyperplane(*map(jnp.asarray, (t, w, b))))
    for i in range(8):
        # L1: min sum(p + m)  s.t. w . (p - m) = b - w . t, box on p - m, p, m >= 0
        lp = linprog(np.ones(2 * n), A_eq=np.r_[w[i], -w[i]][None], b_eq=[b[i] - w[i] @ t[i]],
                     A_ub=np.block([[np.eye(n), -np.eye(n)], [-np.eye(n), np.eye(n)]]),
                     b_ub=np.r_[1 - t[i], t[i]], bounds=[(0, None)] * (2 * n))
        if lp.status != 0:  # unreachable inside the box
            continue
        assert np.abs(d1[i]).sum() == pytest.approx(lp.fun, rel=1e-4)
        assert w[i] @ (t[i] + d1[i]) == pytest.approx(b[i], abs=1e-4)
        # L2: KKT d = clip(-lam w, -t, 1 - t) with w . d = b - w . t, lam by bisection
        need = b[i] - w[i] @ t[i]
        lo, hi = -1e3, 1e3
        for _ in range(200):
            lam = 0.5 * (lo + hi)
            if np.clip(lam * w[i], -t[i], 1 - t[i]) @ w[i] < need:
                lo = lam
            else:
                hi = lam
        ref2 = np.clip(lam * w[i], -t[i], 1 - t[i])
        np.testing.assert_allclose(d2[i], ref2, atol=1e-4)


def test_eot_averages_the_gradient_over_draws():
    from typing import NamedTuple

    class P(NamedTuple):
        w: jax.Array
        key: jax.Array

    def noisy(p, z):  # a randomized linear model: the weights are perturbed per draw
        w = p.w + jax.random.normal(p.key, p.w.shape)
        s = z.reshape(z.shape[0], -1) @ w
        return jnp.stack([s, -s, 0 * s], -1)

    p = P(jnp.ones((4,)), jax.random.key(3))
    x = jnp.full((2, 2, 2, 1), 0.5)
    y = jnp.zeros((2,), jnp.int32)
    loss = lambda z: _core.cross_entropy(z, y)  # noqa: E731
    _, g, _ = jax.jit(A.loss_and_grad(noisy, p, y, loss, eot_iter=20))(x)
    one = jax.jit(jax.grad(lambda z, j: jnp.sum(loss(noisy(_core.redraw(p, j), z)))))
    each = [one(x, j) for j in range(20)]
    np.testing.assert_allclose(g, np.mean(each, 0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(each[0], each[1])  # the draws differ
