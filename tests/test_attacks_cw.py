"""C&W L2 and C&W Linf: closed-form minima on an affine model, search rule, invariants."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks_b_models
from robustjax.attacks._core import margin
from robustjax.attacks.cw import CWL2Config, CWLinfConfig, cw_l2, cw_linf, update_const

KEY = jax.random.key(0)


def test_cw_l2_reaches_the_exact_minimum_on_affine_model():
    apply_fn, params, x, y, f, w = attacks_b_models.affine_binary()
    res = cw_l2(apply_fn, params, x, y, KEY, CWL2Config(max_iterations=300))
    exact = np.abs(f) / np.linalg.norm(w)
    n = np.asarray(res.norm)
    assert np.all(np.asarray(res.success))
    assert np.all(n >= exact * (1 - 1e-4))   # nothing beats the true minimum
    assert np.all(n <= exact * 1.05 + 1e-3), (n, exact)  # and C&W gets close to it


def test_update_const_is_the_reference_rule():
    c = jnp.array([1e-3, 1e-3, 0.5, 0.5])
    lo = jnp.array([0.0, 0.0, 0.1, 0.1])
    hi = jnp.array([1e10, 1e10, 1.0, 1.0])
    found = jnp.array([False, True, False, True])
    c2, lo2, hi2 = update_const(found, c, lo, hi)
    # not found, no upper bound yet: x10; found: bisect towards the lower bound
    np.testing.assert_allclose(np.asarray(c2), [1e-2, 5e-4, 0.75, 0.3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lo2), [1e-3, 0.0, 0.5, 0.1], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(hi2), [1e10, 1e-3, 1.0, 0.5], rtol=1e-6)


@pytest.fixture(scope="module")
def digits_mlp():
    return attacks_b_models.digits_mlp(16)


@pytest.fixture(scope="module")
def cw_run():
    return jax.jit(functools.partial(cw_l2, attacks_b_models.mlp_apply),
                   static_argnames="config")


def test_cw_l2_invariants_and_confidence(digits_mlp, cw_run):
    apply_fn, params, x, y = digits_mlp
    cfg = CWL2Config(max_iterations=100, binary_search_steps=5, confidence=2.0)
    res = cw_run(params, x, y, KEY, config=cfg)
    xa = np.asarray(res.x_adv)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    succ = np.asarray(res.success)
    pred = attacks_b_models.predict(apply_fn, params, res.x_adv)
    np.testing.assert_array_equal(succ, pred != np.asarray(y))
    assert succ.mean() > 0.9
    # with kappa = 2 every returned adversarial example clears the margin by 2
    m = np.asarray(margin(apply_fn(params, res.x_adv), y))
    assert np.all(m[succ] >= 2.0 - 1e-4)
    d = (xa - np.asarray(x)).reshape(len(xa), -1)
    np.testing.assert_allclose(np.asarray(res.norm), np.sqrt((d ** 2).sum(1)), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(res.norm)[~succ], 0.0)  # failure returns x
    assert np.all(np.asarray(res.queries) <= 5 * 100)


def test_cw_l2_targeted(digits_mlp, cw_run):
    apply_fn, params, x, y = digits_mlp
    target = jnp.asarray((np.asarray(y) + 3) % 10, jnp.int32)
    res = cw_run(params, x, target, KEY,
                 config=CWL2Config(max_iterations=100, binary_search_steps=5, targeted=True,
                                   learning_rate=0.1, initial_const=0.1))
    pred = attacks_b_models.predict(apply_fn, params, res.x_adv)
    np.testing.assert_array_equal(np.asarray(res.success), pred == np.asarray(target))
    assert np.mean(pred == np.asarray(target)) > 0.9


def test_cw_linf_invariants(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    cfg = CWLinfConfig(eps=0.1, step_size=0.02, steps=20)
    res = jax.jit(functools.partial(cw_linf, apply_fn, config=cfg))(params, x, y, KEY)
    xa = np.asarray(res.x_adv)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    assert np.abs(xa - np.asarray(x)).max() <= cfg.eps + 1e-6
    pred = attacks_b_models.predict(apply_fn, params, res.x_adv)
    succ = np.asarray(res.success)
    np.testing.assert_array_equal(succ, pred != np.asarray(y))
    clean_acc = np.mean(attacks_b_models.predict(apply_fn, params, x) == np.asarray(y))
    assert 1 - succ.mean() < clean_acc - 0.2  # robust accuracy well below clean accuracy
    # kappa caps the loss: the reported margins never exceed it
    assert np.all(np.asarray(res.loss) <= cfg.kappa + 1e-5)


def test_adam_forms_match_optax_and_tensorflow():
    """'kingma' == optax.adam; 'tf' == TF1's epsilon-hat form (the C&W reference code)."""
    import optax

    from robustjax.attacks.cw import adam_update

    rng = np.random.default_rng(0)
    grads = [jnp.asarray(rng.normal(size=(2, 3)) * 10.0 ** rng.integers(-9, 1, (2, 3)),
                         jnp.float32) for _ in range(5)]
    opt = optax.adam(0.1)
    p = jnp.zeros((2, 3))
    st = opt.init(p)
    m = v = jnp.zeros((2, 3))
    t = jnp.zeros((2,), jnp.int32)
    m_tf = v_tf = m
    for g in grads:
        ref, st = opt.update(g, st, p)
        upd, m, v, t2 = adam_update(g, m, v, t, 0.1, "kingma")
        np.testing.assert_allclose(np.asarray(upd), np.asarray(ref), rtol=1e-5, atol=1e-9)
        upd_tf, m_tf, v_tf, _ = adam_update(g, m_tf, v_tf, t, 0.1, "tf")
        k = int(t2[0])
        lr_t = 0.1 * np.sqrt(1 - 0.999 ** k) / (1 - 0.9 ** k)
        np.testing.assert_allclose(np.asarray(upd_tf),
                                   -lr_t * np.asarray(m_tf) / (np.sqrt(np.asarray(v_tf)) + 1e-8),
                                   rtol=1e-4, atol=1e-9)  # lr_t in float32 vs float64
        t = t2
