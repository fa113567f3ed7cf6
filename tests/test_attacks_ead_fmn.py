"""EAD and FMN: closed-form minima on an affine model, shrinkage/L0 projection, invariants."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks_b_models
from robustjax.attacks.deepfool import DeepFoolConfig, deepfool
from robustjax.attacks.ead import EADConfig, ead, shrink
from robustjax.attacks.fmn import FMNConfig, fmn, fmn_from, fmn_norm, project_l0

KEY = jax.random.key(0)
DUAL = {"l1": np.inf, "l2": 2, "linf": 1}


def test_shrink_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.uniform(-0.3, 1.3, 200)
    x = rng.uniform(0, 1, 200)
    beta = 0.05
    ref = np.where(z - x > beta, np.minimum(z - beta, 1),
                   np.where(z - x < -beta, np.maximum(z + beta, 0), x))
    np.testing.assert_allclose(np.asarray(shrink(jnp.asarray(z), jnp.asarray(x), beta)), ref)


def test_ead_l1_rule_reaches_the_exact_l1_minimum():
    """Minimal L1 distance to a hyperplane is |f| / ||w||_inf (one coordinate moves)."""
    apply_fn, params, x, y, f, w = attacks_b_models.affine_binary()
    res = ead(apply_fn, params, x, y, KEY,
              EADConfig(decision_rule="L1", max_iterations=300))
    exact = np.abs(f) / np.abs(w).max()
    n = np.asarray(res.norm)
    assert np.all(np.asarray(res.success))
    assert np.all(n >= exact * (1 - 1e-4))
    assert np.all(n <= exact * 1.05 + 1e-3), (n, exact)
    d = np.abs(np.asarray(res.x_adv - x)).reshape(len(f), -1)
    assert np.all(np.argmax(d, 1) == np.argmax(np.abs(w)))  # the sparse solution of the paper


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_fmn_from_start_reaches_the_exact_minimum(norm):
    apply_fn, params, x, y, f, w = attacks_b_models.affine_binary()
    exact = np.abs(f) / np.linalg.norm(w, DUAL[norm])
    # a far adversarial start: twice across the boundary along w
    step = -np.sign(f)[:, None] * w[None] / np.dot(w, w) * np.abs(f)[:, None] * 2.0
    x_start = jnp.clip(x + jnp.asarray(step, jnp.float32).reshape(x.shape), 0, 1)
    res = fmn_from(apply_fn, params, x, y, x_start, KEY, FMNConfig(norm=norm, steps=100))
    n = np.asarray(res.norm)
    assert np.all(np.asarray(res.success))
    start_n = np.asarray(fmn_norm(x_start - x, norm))
    assert np.all(n >= exact * (1 - 1e-3))
    assert np.all(n <= exact * 1.05 + 1e-3), (n, exact)
    assert np.all(n < start_n)


def test_project_l0_keeps_the_largest_entries():
    d = jnp.asarray(np.array([[0.1, -0.5, 0.3, 0.0], [0.2, 0.2, -0.9, 0.05]],
                             np.float32).reshape(2, 2, 2, 1))
    out = np.asarray(project_l0(d, jnp.array([2.0, 1.0]))).reshape(2, -1)
    np.testing.assert_allclose(out, [[0, -0.5, 0.3, 0], [0, 0, -0.9, 0]])


@pytest.fixture(scope="module")
def digits_mlp():
    return attacks_b_models.digits_mlp(16)


def _check(apply_fn, params, x, y, res, targeted=False):
    xa = np.asarray(res.x_adv)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    pred = attacks_b_models.predict(apply_fn, params, res.x_adv)
    succ = np.asarray(res.success)
    want = pred == np.asarray(y) if targeted else pred != np.asarray(y)
    np.testing.assert_array_equal(succ, want)
    return succ


def test_ead_invariants_on_mlp(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    cfg = EADConfig(max_iterations=100, binary_search_steps=5, initial_const=0.1)
    res = jax.jit(functools.partial(ead, apply_fn, config=cfg))(params, x, y, KEY)
    succ = _check(apply_fn, params, x, y, res)
    assert succ.mean() > 0.9
    d = np.abs(np.asarray(res.x_adv - x)).reshape(len(succ), -1)
    np.testing.assert_allclose(np.asarray(res.norm), d.sum(1), rtol=1e-5, atol=1e-6)
    # elastic-net solutions are sparse: most pixels untouched
    assert np.mean(d[succ] > 1e-6) < 0.5


@pytest.mark.parametrize("norm", ["l0", "l1", "l2", "linf"])
def test_fmn_reduces_the_norm_of_a_successful_start(digits_mlp, norm):
    apply_fn, params, x, y = digits_mlp
    start = deepfool(apply_fn, params, x, y, KEY, DeepFoolConfig())
    x_start = jnp.clip(x + 3.0 * (start.x_adv - x), 0.0, 1.0)   # adversarial, but far
    ok = attacks_b_models.predict(apply_fn, params, x_start) != np.asarray(y)
    res = fmn_from(apply_fn, params, x, y, x_start, KEY, FMNConfig(norm=norm, steps=60))
    succ = _check(apply_fn, params, x, y, res)
    assert np.all(succ[ok])
    n, n0 = np.asarray(res.norm), np.asarray(fmn_norm(x_start - x, norm))
    clean_ok = attacks_b_models.predict(apply_fn, params, x) == np.asarray(y)
    sel = ok & clean_ok
    assert np.all(n[sel] < n0[sel]) and np.median(n[sel] / n0[sel]) < 0.6


def test_fmn_from_zero_and_targeted(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    res = fmn(apply_fn, params, x, y, KEY, FMNConfig(norm="linf", steps=60))
    assert _check(apply_fn, params, x, y, res).mean() > 0.9
    target = jnp.asarray((np.asarray(y) + 1) % 10, jnp.int32)
    rt = fmn(apply_fn, params, x, target, KEY, FMNConfig(norm="linf", steps=60, targeted=True))
    assert _check(apply_fn, params, x, target, rt, targeted=True).mean() > 0.8
