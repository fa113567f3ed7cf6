"""Encoder attacks: PGD on an embedding distance (away from the clean or toward a target)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import embedding as E
from robustjax.models import create


@functools.lru_cache(maxsize=None)
def _jitted(embed_fn):
    return jax.jit(lambda p, x, z, k, c: E.embedding_pgd(embed_fn, p, x, z, k, c))


def _linear(params, x):
    return x.reshape(x.shape[0], -1) @ params


def test_linf_away_on_a_linear_encoder_reaches_the_closed_form():
    # e(x) = w.x (d = 1): max_{|d|_inf <= eps} |w.d| = eps ||w||_1, at d = eps sign(w)
    w = jax.random.normal(jax.random.PRNGKey(0), (4 * 4 * 2, 1))
    x = jnp.full((3, 4, 4, 2), 0.5)
    eps = 0.05
    cfg = E.EmbeddingPGDConfig(eps=eps, step_size=0.02, steps=10, distance="l2")
    res = _jitted(_linear)(w, x, _linear(w, x), jax.random.PRNGKey(1), cfg)
    np.testing.assert_allclose(res.distance, eps * jnp.sum(jnp.abs(w)), rtol=1e-4)
    np.testing.assert_allclose(jnp.abs(res.x_adv - x), eps, atol=1e-6)


def test_l2_away_on_a_linear_encoder_finds_the_top_singular_direction():
    w = jax.random.normal(jax.random.PRNGKey(2), (4 * 4 * 1, 3))
    x = jnp.full((2, 4, 4, 1), 0.5)
    eps = 0.1
    # a step much larger than eps makes each step a power iteration on W W^T (box inactive)
    cfg = E.EmbeddingPGDConfig(eps=eps, step_size=0.3, steps=50, norm="l2", distance="l2")
    res = _jitted(_linear)(w, x, _linear(w, x), jax.random.PRNGKey(3), cfg)
    top = float(np.linalg.svd(np.asarray(w), compute_uv=False)[0])
    np.testing.assert_allclose(res.distance, eps * top, rtol=2e-3)
    assert float(res.norm.max()) <= eps * (1 + 1e-5)


@pytest.fixture(scope="module")
def encoder():
    return create("cnn", key=jax.random.PRNGKey(0), input_shape=(12, 12, 1), channels=(4, 8),
                  hidden=16)


@pytest.mark.parametrize("norm,distance", [("linf", "cosine"), ("l2", "l2")])
def test_away_and_toward_respect_the_budget_and_move_the_embedding(encoder, norm, distance):
    f, p = encoder.embed_fn, encoder.params
    x = jax.random.uniform(jax.random.PRNGKey(5), (4, 12, 12, 1))
    eps = 0.1 if norm == "linf" else 1.0
    away = E.EmbeddingPGDConfig(eps=eps, step_size=eps / 4, steps=8, norm=norm,
                                distance=distance)
    z = f(p, x)
    res = _jitted(f)(p, x, z, jax.random.PRNGKey(0), away)
    assert float(res.norm.max()) <= eps * (1 + 1e-5) + 1e-6
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    assert np.all(np.asarray(res.queries) == 8)
    # moved away, and more than random noise of the same budget does
    noise = jnp.clip(x + eps * jnp.sign(jax.random.normal(jax.random.PRNGKey(9), x.shape))
                     / (1.0 if norm == "linf" else 12.0), 0, 1)
    assert np.all(res.distance > E.embedding_shift(f, p, x, noise, distance))
    np.testing.assert_allclose(E.embedding_shift(f, p, x, res.x_adv, distance), res.distance,
                               rtol=1e-4, atol=1e-6)
    # toward: the target is the embedding of another image; the distance shrinks
    target = f(p, x[::-1])
    toward = E.EmbeddingPGDConfig(eps=eps, step_size=eps / 4, steps=8, norm=norm,
                                  distance=distance, targeted=True, random_start=False)
    res_t = _jitted(f)(p, x, target, jax.random.PRNGKey(0), toward)
    before = E.embedding_distance(z, target, distance)
    assert np.all(np.asarray(res_t.distance) <= np.asarray(before) + 1e-6)
    assert float(jnp.mean(res_t.distance)) < 0.8 * float(jnp.mean(before))


def test_transfer_from_a_surrogate_encoder(encoder):
    # a victim of the same architecture with other weights (no second initialisation)
    victim = dataclasses.replace(encoder, params=jax.tree_util.tree_map(
        lambda a: -0.8 * a[::-1], encoder.params))
    x = jax.random.uniform(jax.random.PRNGKey(5), (4, 12, 12, 1))
    cfg = E.EmbeddingPGDConfig(eps=0.2, step_size=0.05, steps=5)
    res = _jitted(encoder.embed_fn)(encoder.params, x, encoder.embed_fn(encoder.params, x),
                                    jax.random.PRNGKey(0), cfg)
    shift = E.embedding_shift(victim.embed_fn, victim.params, x, res.x_adv)
    assert shift.shape == (4,) and np.all(np.isfinite(shift)) and np.all(shift >= -1e-6)


def test_bad_input_says_what_is_wrong(encoder):
    with pytest.raises(ValueError, match="distance"):
        E.EmbeddingPGDConfig(distance="kl")
    with pytest.raises(ValueError, match="norm"):
        E.EmbeddingPGDConfig(norm="l0")
    x = jnp.zeros((2, 12, 12, 1))
    with pytest.raises(ValueError, match="reference embeddings"):
        E.embedding_pgd(encoder.embed_fn, encoder.params, x, jnp.zeros((3, 16)),
                        jax.random.PRNGKey(0))
