"""robustjax.attacks.apgd against a line-by-line NumPy transliteration of Croce & Hein's code."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import _core

# the package re-exports the function ``apgd``, which shadows the module attribute
A = importlib.import_module("robustjax.attacks.apgd")
FAB = importlib.import_module("robustjax.attacks.fab")

K, D, H = 10, 64, 24


def mlp_apply(params, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    params = {"w1": rng.normal(size=(D, H)) / 4, "b1": rng.normal(size=H) / 4,
              "w2": rng.normal(size=(H, K)), "b2": rng.normal(size=K)}
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    x = jnp.asarray(rng.uniform(0, 1, (24, 8, 8, 1)), jnp.float32)
    y = jnp.argmax(mlp_apply(params, x), -1).astype(jnp.int32)
    return params, x, y


def test_checkpoints_are_the_papers():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    expected = [round(v * 100) for v in p[1:]]
    assert [i + 1 for i, _ in A.checkpoints(100)] == expected == [22, 41, 57, 70, 80, 87, 93, 99]


def _reference_apgd(params, x, y, t, eps, n_iter, rho=0.75):
    """NumPy float64 transliteration of ``autopgd_base.APGDAttack.attack_single_run`` (Linf,
    CE), the reference implementation of Croce & Hein 2020."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    b = x.shape[0]
    xf = np.asarray(x, np.float64).reshape(b, -1)
    y = np.asarray(y)

    def loss_grad(xa):
        pre = xa @ p["w1"] + p["b1"]
        h = np.maximum(pre, 0)
        z = h @ p["w2"] + p["b2"]
        e = np.exp(z - z.max(1, keepdims=True))
        prob = e / e.sum(1, keepdims=True)
        loss = -np.log(prob[np.arange(b), y])
        gz = prob.copy()
        gz[np.arange(b), y] -= 1
        g = ((gz @ p["w2"].T) * (pre > 0)) @ p["w1"].T
        return loss, g, z.argmax(1)

    t = np.asarray(t, np.float64).reshape(b, -1)
    x_adv = np.clip(xf + eps * t / np.abs(t).max(1, keepdims=True), 0, 1)
    n_iter_2, n_iter_min, size_decr = (max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1),
                                       max(int(0.03 * n_iter), 1))
    loss, grad, pred = loss_grad(x_adv)
    acc = pred == y
    loss_best, x_best, grad_best, x_best_adv = loss.copy(), x_adv.copy(), grad.copy(), x_adv.copy()
    step = 2 * eps * np.ones((b, 1))
    x_adv_old = x_adv.copy()
    k, counter3, reductions = n_iter_2, 0, 0
    loss_best_last_check, reduced_last_check = loss_best.copy(), np.ones(b)
    loss_steps = np.zeros((n_iter, b))
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv.copy()
        a = 0.75 if i > 0 else 1.0
        x1 = x_adv + step * np.sign(grad)
        x1 = np.clip(np.minimum(np.maximum(x1, xf - eps), xf + eps), 0, 1)
        x1 = np.clip(np.minimum(np.maximum(x_adv + (x1 - x_adv) * a + grad2 * (1 - a),
                                           xf - eps), xf + eps), 0, 1)
        x_adv = x1
        loss, grad, pred = loss_grad(x_adv)
        acc = np.minimum(acc, pred == y)
        x_best_adv[pred != y] = x_adv[pred != y]
        loss_steps[i] = loss
        ind = loss > loss_best
        x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], loss[ind]
        counter3 += 1
        if counter3 == k:
            tt = np.zeros(b)
            for c5 in range(k):
                tt += loss_steps[i - c5] > loss_steps[i - c5 - 1]  # index -1 wraps, as in torch
            fl = (tt <= k * rho).astype(float)
            fl = np.maximum(fl, (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best))
            reduced_last_check, loss_best_last_check = fl.copy(), loss_best.copy()
            red = fl > 0
            reductions += red.sum()
            step[red] /= 2.0
            x_adv[red], grad[red] = x_best[red], grad_best[red]
            k, counter3 = max(k - size_decr, n_iter_min), 0
    return x_best, ~acc, loss_best, x_best_adv, reductions


def test_apgd_ce_matches_reference_transliteration(setup):
    params, x, y = setup
    eps, key = 0.03, jax.random.PRNGKey(3)
    r = jax.jit(A.apgd, static_argnums=0)(mlp_apply, params, x, y, key, A.APGDConfig(eps=eps))
    # the start direction apgd draws for restart 0
    t = jax.random.uniform(jax.random.fold_in(key, 0), x.shape, x.dtype, -1.0, 1.0)
    x_best, fooled, loss_best, x_best_adv, reductions = _reference_apgd(params, x, y, t, eps, 100)
    assert reductions > 0  # the step-size schedule was exercised
    assert 0 < fooled.sum() < len(fooled)
    x_ref = np.where(fooled[:, None], x_best_adv, x_best).reshape(x.shape)
    # float32 vs float64 may flip a near-tie loss comparison: demand agreement on >= 90%
    same = np.all(np.abs(np.asarray(r.x_adv) - x_ref) < 1e-4, axis=(1, 2, 3))
    print("APGD vs reference: identical on", same.mean())
    assert same.mean() >= 0.9, same
    np.testing.assert_array_equal(np.asarray(r.success)[same], fooled[same])
    np.testing.assert_allclose(np.asarray(r.loss)[same & ~fooled], loss_best[same & ~fooled],
                               rtol=1e-4)
    assert np.all(r.queries == 101)


_jit = functools.partial(jax.jit, static_argnums=0)
_apgd, _apgd_t = _jit(A.apgd), _jit(A.apgd_t)


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.3)])
def test_invariants_and_strength(setup, norm, eps):
    params, x, y = setup
    key = jax.random.PRNGKey(0)
    from robustjax.attacks import gradient as G

    fg = G.fgsm(mlp_apply, params, x, y, None, G.FGSMConfig(eps=eps, norm=norm))
    for fn, cfg in [(_apgd, A.APGDConfig(eps=eps, norm=norm, steps=30)),
                    (_apgd, A.APGDConfig(eps=eps, norm=norm, steps=30, loss="dlr")),
                    (_apgd_t, A.APGDTConfig(eps=eps, norm=norm, steps=30, num_targets=3))]:
        r = fn(mlp_apply, params, x, y, key, cfg)
        assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1
        assert float(_core.lp_norm(r.x_adv - x, norm).max()) <= eps * (1 + 1e-5)
        np.testing.assert_array_equal(r.success, jnp.argmax(mlp_apply(params, r.x_adv), -1) != y)
        assert float(r.success.mean()) >= float(fg.success.mean()), cfg


def test_apgd_t_targets_and_restarts(setup):
    params, x, y = setup
    # 5 classes: 4 targets; one restart each, 101 gradient evaluations per run (+1 forward)
    p5 = dict(params, w2=params["w2"][:, :5], b2=params["b2"][:5])
    y5 = jnp.argmax(mlp_apply(p5, x), -1).astype(jnp.int32)
    attack = jax.jit(A.apgd_t, static_argnums=0)
    cfg = A.APGDTConfig(eps=0.0, steps=8)
    r = attack(mlp_apply, p5, x, y5, jax.random.PRNGKey(0), cfg)
    assert np.all(r.queries == 4 * 9 + 1) and not bool(r.success.any())
    # everything broken in the first run: the remaining targets are skipped (same program,
    # eps is a leaf of the config)
    r = attack(mlp_apply, p5, x, y5, jax.random.PRNGKey(0), A.APGDTConfig(eps=1.0, steps=8))
    assert bool(r.success.all()) and np.all(r.queries == 9 + 1)
    with pytest.raises(ValueError, match="'ce' or 'dlr'"):
        A.APGDConfig(loss="margin")


def test_apgd_t_target_rank_runs_the_one_target_each_example_names(setup):
    # AutoAttack's cascade runs APGD-T's targets one at a time: target_rank r is the run
    # towards the (r + 2)-th most likely class, the r-th of the num_targets runs
    params, x, y = setup
    cfg = A.APGDTConfig(eps=0.05, steps=8, num_targets=1)
    key = jax.random.PRNGKey(3)
    whole = A.apgd_t(mlp_apply, params, x, y, key, cfg)
    ranked = A.apgd_t(mlp_apply, params, x, y, key, cfg, target_rank=jnp.zeros(24, jnp.int32))
    np.testing.assert_array_equal(ranked.x_adv, whole.x_adv)
    # rank 1 on every example is the loss of the third most likely class (not the runner-up)
    order = np.argsort(np.asarray(mlp_apply(params, x)), axis=-1)
    third = A.apgd_t(mlp_apply, params, x, y, key, cfg, target_rank=jnp.ones(24, jnp.int32))
    t3 = jnp.asarray(order[:, -3])
    towards_third = _core.dlr_targeted(mlp_apply(params, third.x_adv), y, t3)
    towards_second = _core.dlr_targeted(mlp_apply(params, whole.x_adv), y, t3)
    assert float(towards_third.mean()) > float(towards_second.mean())
    with pytest.raises(ValueError, match=r"target_rank must be int \[batch=24\]"):
        A.apgd_t(mlp_apply, params, x, y, key, cfg, target_rank=jnp.zeros(3, jnp.int32))


def test_fab_hyperplane_projection_matches_linear_program():
    from scipy.optimize import linprog

    rng = np.random.default_rng(0)
    n = 6
    t = rng.uniform(0, 1, (6, n))
    w = rng.normal(size=(6, n))
    b = (w * t).sum(1) + rng.normal(size=6) * 0.8
    d = np.asarray(FAB.project_linf_hyperplane(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
    for i in range(6):  # min s  s.t. |d_j| <= s, w . (t + d) = b, 0 <= t + d <= 1
        cost = np.r_[np.zeros(n), 1.0]
        a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
        lp = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w[i], 0.0][None],
                     b_eq=[b[i] - w[i] @ t[i]],
                     bounds=[(-t[i, j], 1 - t[i, j]) for j in range(n)] + [(0, None)])
        if lp.status == 0:
            assert np.abs(d[i]).max() == pytest.approx(lp.fun, rel=1e-5)
            assert w[i] @ (t[i] + d[i]) == pytest.approx(b[i], abs=1e-5)
        else:  # unreachable inside the box: the full move towards it
            assert np.all((t[i] + d[i] >= -1e-7) & (t[i] + d[i] <= 1 + 1e-7))


def test_fab_finds_the_minimal_linf_distance_of_a_linear_classifier():
    rng = np.random.default_rng(1)
    w = rng.normal(size=16).astype(np.float32)
    x = rng.uniform(0.45, 0.55, (12, 4, 4, 1)).astype(np.float32)
    c = -float(np.median(x.reshape(12, -1) @ w))
    params = {"w": jnp.asarray(w), "c": jnp.float32(c)}

    def apply(p, z):  # 4 classes, boundary between 0 and 1 is the hyperplane
        s = z.reshape(z.shape[0], -1) @ p["w"] + p["c"]
        return jnp.stack([jnp.zeros_like(s), s, -s - 1.0, -s - 2.0], -1)

    x = jnp.asarray(x)
    y = jnp.argmax(apply(params, x), -1).astype(jnp.int32)
    s = np.asarray(x).reshape(12, -1) @ w + c
    dist = np.abs(s) / np.abs(w).sum()  # exact minimal Linf distance (box not binding)
    eps = float(np.median(dist))
    for targeted in (True, False):
        cfg = FAB.FABConfig(eps=eps, targeted=targeted, num_targets=1, steps=20)
        r = jax.jit(FAB.fab, static_argnums=0)(apply, params, x, y, jax.random.PRNGKey(0), cfg)
        # FAB is minimum-norm: within its overshoot eta of the true distance, never below it
        ratio = np.asarray(r.norm) / dist
        assert np.all(ratio >= 1 - 1e-4) and np.all(ratio <= 1.05), ratio
        np.testing.assert_array_equal(r.success, np.asarray(r.norm) <= eps * (1 + 1e-6))
        assert 0 < r.success.sum() < 12
        np.testing.assert_array_equal(jnp.argmax(apply(params, r.x_adv), -1) != y, True)
