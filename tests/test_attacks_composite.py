"""Composite attacks (Mao et al. 2021; primitives and budgets of Hsiung et al. 2023): closed forms
of the primitives, budgets and box, and the search against brute force over its sequences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustjax.attacks.composite import (
    CompositeConfig,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    attack_primitive,
    composite_search,
    rotate,
    run_sequence,
    sequences,
)
from tests.attacks_b_models import digits_mlp, linear_apply


def _rgb_model(seed=0, b=12):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w = jax.random.normal(k1, (4 * 4 * 3, 5)) * 2.0
    params = (w, jax.random.normal(k2, (5,)))
    x = jax.random.uniform(k3, (b, 4, 4, 3), minval=0.1, maxval=0.9)
    y = jnp.argmax(linear_apply(params, x), -1).astype(jnp.int32)
    return linear_apply, params, x, y


@jax.jit
def _closed_form_outputs(x):
    one, zero = jnp.ones(x.shape[0]), jnp.zeros(x.shape[0])
    gray = jnp.broadcast_to(x[..., :1], x.shape)
    small = 0.5 + 0.1 * (x - 0.5)  # far from the box edges, so no clipping
    return dict(
        identities=(adjust_hue(x, zero), adjust_hue(x, zero + 2 * math.pi),
                    adjust_saturation(x, one), adjust_contrast(x, one),
                    adjust_brightness(x, zero)),
        rotate0=rotate(x, zero), bright=adjust_brightness(x, zero + 0.1),
        contrast=adjust_contrast(x, zero + 0.5), gray=adjust_saturation(x, zero),
        hue_gray=(gray, adjust_hue(gray, zero + 1.0)), small=small,
        hue_small=adjust_hue(small, zero + 2.0), hue_1ch=adjust_hue(x[..., :1], zero + 1))


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_identity_settings_and_closed_forms(seed):
    x = jax.random.uniform(jax.random.key(seed), (3, 5, 5, 3), minval=0.2, maxval=0.8)
    o = _closed_form_outputs(x)
    for out in o["identities"]:
        np.testing.assert_allclose(out, x, atol=1e-5)
    np.testing.assert_array_equal(o["rotate0"], x)
    np.testing.assert_allclose(o["bright"], np.clip(x + 0.1, 0, 1), atol=1e-6)
    # contrast keeps each image's mean (no clipping at these values); saturation 0 is gray
    np.testing.assert_allclose(o["contrast"].mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(o["gray"][..., 0], o["gray"][..., 2], atol=1e-6)
    # a hue rotation leaves gray pixels alone and keeps the luma
    np.testing.assert_allclose(o["hue_gray"][1], o["hue_gray"][0], atol=1e-5)
    luma = jnp.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(o["hue_small"] @ luma, o["small"] @ luma, atol=1e-5)
    # single-channel images have no hue or saturation
    np.testing.assert_array_equal(o["hue_1ch"], x[..., :1])


def test_primitives_respect_their_budgets():
    apply_fn, params, x, y = _rgb_model()
    cfg = CompositeConfig(steps=5, primitives=("hue", "saturation", "brightness", "contrast",
                                               "rotation", "linf", "l2"))
    seq = cfg.primitives
    xa, thetas = jax.jit(run_sequence, static_argnums=(0, 5, 6))(apply_fn, params, x, y,
                                                                jax.random.key(0), seq, cfg)
    th = dict(zip(seq, thetas))
    assert np.all(np.abs(th["hue"]) <= math.pi + 1e-6)
    assert np.all((th["saturation"] >= 0.7 - 1e-6) & (th["saturation"] <= 1.3 + 1e-6))
    assert np.all(np.abs(th["brightness"]) <= 0.2 + 1e-6)
    assert np.all((th["contrast"] >= 0.7 - 1e-6) & (th["contrast"] <= 1.3 + 1e-6))
    assert np.all(np.abs(th["rotation"]) <= 10 + 1e-5)
    assert float(jnp.abs(th["linf"]).max()) <= 8 / 255 + 1e-6
    assert float(jnp.linalg.norm(th["l2"].reshape(12, -1), axis=-1).max()) <= 0.5 + 1e-5
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1


def test_a_primitive_step_raises_the_loss():
    apply_fn, params, x, y = digits_mlp(32)
    cfg = CompositeConfig(steps=10, linf_eps=0.1)
    xa, delta = attack_primitive(apply_fn, params, x, y, jax.random.key(0), "linf", cfg)
    logp = lambda z: jax.nn.log_softmax(apply_fn(params, z))[jnp.arange(32), y]  # noqa: E731
    assert float(jnp.mean(logp(xa))) < float(jnp.mean(logp(x))) - 0.5
    np.testing.assert_allclose(xa, np.clip(np.asarray(x) + np.asarray(delta), 0, 1), atol=1e-6)


def test_sequences_and_cost_budget():
    cfg = CompositeConfig(primitives=("hue", "rotation", "linf"), max_length=2, steps=5)
    seqs = sequences(cfg)
    assert len(seqs) == 3 + 6 and ("rotation", "linf") in seqs and ("linf", "rotation") in seqs
    assert all(len(set(s)) == len(s) for s in seqs)
    assert len(sequences(CompositeConfig(primitives=("hue", "rotation", "linf"), max_length=3,
                                         steps=5, max_cost=10))) == 9   # length 3 costs 15
    with pytest.raises(ValueError, match="primitives"):
        CompositeConfig(primitives=("blur",))
    with pytest.raises(ValueError, match="max_cost"):
        CompositeConfig(steps=10, max_cost=5)
    with pytest.raises(ValueError, match="saturation"):
        CompositeConfig(saturation=(1.1, 1.3))


def test_search_is_the_strongest_of_its_sequences():
    apply_fn, params, x, y = digits_mlp(24)
    cfg = CompositeConfig(primitives=("rotation", "linf"), max_length=2, steps=5,
                          linf_eps=0.05)
    key = jax.random.key(0)
    res, best = jax.jit(composite_search, static_argnums=(0, 5))(apply_fn, params, x, y, key,
                                                                cfg)
    losses, oks = [], []

    @jax.jit
    def brute_force(params, x, y):  # every sequence on its own, the search's keys; one program
        return [run_sequence(apply_fn, params, x, y, jax.random.fold_in(key, j), seq, cfg)[0]
                for j, seq in enumerate(sequences(cfg))]

    for xa in brute_force(params, x, y):
        logits = apply_fn(params, xa)
        losses.append(-np.asarray(jax.nn.log_softmax(logits))[np.arange(24), np.asarray(y)])
        oks.append(np.asarray(jnp.argmax(logits, -1) != y))
    losses, oks = np.stack(losses), np.stack(oks)
    np.testing.assert_array_equal(res.success, oks.any(0))
    np.testing.assert_allclose(res.loss, losses[np.asarray(best), np.arange(24)], rtol=1e-4,
                               atol=1e-5)
    same = oks == oks.any(0)[None]
    assert np.all(np.asarray(res.loss)[None] >= np.where(same, losses, -np.inf) - 1e-4)
    # composing helps: the search beats the best single primitive's success rate
    singles = oks[:2].mean(1).max()
    assert res.success.mean() >= singles
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    np.testing.assert_array_equal(res.queries, (2 + 2 * 2) * 5)
