"""The shared entry-point mechanism (robustjax.entry): every public attack, certifier and
corruption compiles once per shape, a user's plain-flax model is accelerated, the loop follows
the model's convolutions, and bad input gets a clear error (robustjax.validation)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import attacks, certify, corruptions, entry, kernels, validation
from tests.compile_events import count_compiles

SMALL = {"steps": 2, "n_queries": 6, "iterations": 2, "num_samples": 4, "max_iterations": 3,
         "binary_search_steps": 1, "restarts": 1, "num_targets": 2, "candidates": 3,
         "k": 4, "popsize": 8, "max_iter": 2, "kernel_size": 3, "samples_per_draw": 4,
         "num_iterations": 2, "init_num_evals": 10, "max_num_evals": 20, "init_trials": 10,
         "n_rotations": 3, "n_translations": 3, "max_length": 1}


class PlainCNN(nn.Module):
    """A model as a user writes it: plain flax.linen.Conv/Dense, no robustjax layers."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


_MODULE = PlainCNN()


def plain_apply(params, x):
    return _MODULE.apply(params, x)


@pytest.fixture(scope="module")
def model():
    params = _MODULE.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    return plain_apply, params


def batch(seed, b=4):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (jax.random.uniform(k1, (b, 8, 8, 3)),
            jax.random.randint(k2, (b,), 0, 10).astype(jnp.int32))


def small_config(config_class):
    cfg = config_class()
    fields = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in SMALL.items() if k in fields})


@pytest.mark.parametrize("name", sorted(attacks.ATTACKS))
def test_every_attack_compiles_once_across_new_data(model, name):
    apply_fn, params = model
    attack, config_class = attacks.ATTACKS[name]
    cfg = small_config(config_class)
    x1, y1 = batch(1)
    x2, y2 = batch(2)
    with count_compiles() as first:
        jax.block_until_ready(attack(apply_fn, params, x1, y1, jax.random.key(3), cfg))
    with count_compiles() as second:
        out = attack(apply_fn, params, x2, y2, jax.random.key(4), cfg)
        jax.block_until_ready(out)
    # eager op-by-op dispatch would compile dozens of small programs on the first call
    assert len(first) <= 3, f"{name}: {len(first)} compilations on the first call"
    assert len(second) == 0, f"{name}: recompiled for new data of the same shape"
    # the eager call is the jitted call
    static = (0, 5) if entry._static_config(cfg) else (0,)  # configs that are not pytrees
    jitted = jax.jit(attack, static_argnums=static)(apply_fn, params, x2, y2,
                                                    jax.random.key(4), cfg)
    np.testing.assert_allclose(np.asarray(out.x_adv), np.asarray(jitted.x_adv), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.success), np.asarray(jitted.success))


def test_certify_and_corruptions_compile_once(model):
    apply_fn, params = model
    x1, y1 = batch(1)
    x2, y2 = batch(2)
    certify.certify(apply_fn, params, x1, y1, 0.01, method="ibp")
    corruptions.corrupt(x1, "gaussian_noise", 2, jax.random.key(0))
    with count_compiles() as again:
        flags = certify.certify(apply_fn, params, x2, y2, 0.01, method="ibp")
        lo, hi = certify.bounds(apply_fn, params, x2, 0.01, method="ibp")
        jax.block_until_ready((flags, lo, hi))
        jax.block_until_ready(corruptions.corrupt(x2, "gaussian_noise", 2, jax.random.key(1)))
    # only certify was called before: allow the one program of `bounds` and its input checks'
    # reduction for a batch without labels, nothing else
    assert len(again) <= 2
    with count_compiles() as third:
        jax.block_until_ready(certify.bounds(apply_fn, params, x1, 0.02, method="ibp"))
    assert len(third) == 0
    assert bool(jnp.all(lo <= hi))


@pytest.mark.skipif(not kernels.onednn_active(), reason="oneDNN kernels need an x86-64 CPU")
def test_plain_flax_model_runs_on_the_kernels_with_the_same_results(model):
    apply_fn, params = model
    x, y = batch(5, b=6)
    fast = entry.model_function(apply_fn)
    hint = entry.loop_hint(fast, params, x)
    assert hint.xla_convolutions == 0 and hint.onednn_convolutions >= 2
    assert not hint.unroll_is_faster  # kernels keep their speed in a fori loop
    cfg = attacks.PGDConfig(eps=0.05, step_size=0.01, steps=3)
    accelerated = attacks.pgd(apply_fn, params, x, y, jax.random.key(0), cfg)
    with entry.auto_accelerate(False):
        assert entry.model_function(apply_fn) is apply_fn
        plain_hint = entry.loop_hint(apply_fn, params, x)
        assert plain_hint.xla_convolutions >= 2 and plain_hint.unroll_is_faster
        reference = attacks.pgd(apply_fn, params, x, y, jax.random.key(0), cfg)
    np.testing.assert_allclose(np.asarray(accelerated.x_adv), np.asarray(reference.x_adv),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(accelerated.loss), np.asarray(reference.loss),
                               rtol=1e-4, atol=1e-5)


def test_eager_loop_follows_the_model_not_the_global_switch(model):
    apply_fn, params = model
    x, y = batch(6)
    seen = []
    body = attacks.pgd.body

    def spy(apply_fn, params, x, y, key, config):
        seen.append(not isinstance(x, jax.core.Tracer))  # True: eager (Python loop)
        return body(apply_fn, params, x, y, key, config)

    cfg = attacks.PGDConfig(steps=2)
    wrapped = entry.attack_entry(spy, eager_loop=attacks.gradient._eager_loop)
    with entry.auto_accelerate(False):
        wrapped(apply_fn, params, x, y, jax.random.key(0), cfg)
    if kernels.onednn_active():
        wrapped(apply_fn, params, x, y, jax.random.key(0), cfg)
        assert seen == [True, False]  # XLA convolutions: Python loop; accelerated: compiled
    else:
        assert seen == [True]


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", sorted(attacks.ATTACKS))
def test_every_attack_rejects_bad_input_clearly(model, name):
    apply_fn, params = model
    attack, config_class = attacks.ATTACKS[name]
    cfg = small_config(config_class)
    x, y = batch(7)
    key = jax.random.key(0)
    with pytest.raises(validation.InputError, match="NaN"):
        attack(apply_fn, params, x.at[2, 0, 0, 0].set(jnp.nan), y, key, cfg)
    with pytest.raises(validation.InputError, match=r"\[0, 10\)"):
        attack(apply_fn, params, x, y + 10, key, cfg)
    with pytest.raises(validation.InputError, match="empty batch"):
        attack(apply_fn, params, x[:0], y[:0], key, cfg)
    with pytest.raises(validation.InputError, match="NCHW"):
        attack(apply_fn, params, x.transpose(0, 3, 1, 2), y, key, cfg)
    with pytest.raises(validation.InputError, match="labels but there are"):
        attack(apply_fn, params, x, y[:3], key, cfg)


def test_nan_error_names_the_images(model):
    apply_fn, params = model
    x, y = batch(8, b=6)
    x = x.at[1].set(jnp.nan).at[4, 2, 2, 1].set(jnp.inf)
    with pytest.raises(validation.InputError, match=r"2 image\(s\), at indices \[1, 4\]"):
        attacks.fgsm(apply_fn, params, x, y, None)


def test_model_that_cannot_take_the_size_says_so(model):
    apply_fn, params = model
    x, y = batch(9)
    with pytest.raises(validation.InputError, match="could not be applied"):
        attacks.fgsm(apply_fn, params, jnp.ones((4, 10, 10, 3)) * 0.5, y, None)
    with pytest.raises(validation.InputError, match="could not be applied"):
        attacks.fgsm(apply_fn, params, jnp.ones((4, 8, 8, 2)) * 0.5, y, None)


def test_checks_cost_nothing_under_jit(model):
    apply_fn, params = model
    x, y = batch(10)
    f = jax.jit(lambda p, x, y: attacks.fgsm(apply_fn, p, x, y, None).x_adv)
    lowered = f.lower(params, x, y).as_text()
    assert "callback" not in lowered  # no host round trip for the checks
    np.testing.assert_allclose(f(params, x, y), attacks.fgsm(apply_fn, params, x, y, None).x_adv,
                               atol=1e-6)


@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
def test_every_corruption_rejects_bad_input_clearly(name):
    x, _ = batch(11)
    key = jax.random.key(0)
    with pytest.raises(validation.InputError, match="NaN"):
        corruptions.corrupt(x.at[0, 1, 1, 0].set(jnp.nan), name, 1, key)
    with pytest.raises(validation.InputError, match=r"pixel range \[0, 1\]"):
        corruptions.corrupt(x * 255.0, name, 1, key)
    with pytest.raises(validation.InputError, match="empty batch"):
        corruptions.corrupt(x[:0], name, 1, key)


@pytest.mark.parametrize("method", sorted(certify.METHODS))
def test_every_certify_method_rejects_bad_input_clearly(model, method):
    apply_fn, params = model
    x, y = batch(12)
    with pytest.raises(validation.InputError, match="NaN"):
        certify.certify(apply_fn, params, x.at[3].set(jnp.inf), y, 0.01, method=method)
    with pytest.raises(validation.InputError, match=r"\[0, 10\)"):
        certify.certify(apply_fn, params, x, y.at[0].set(-1), 0.01, method=method)
    with pytest.raises(validation.InputError, match="NCHW"):
        certify.bounds(apply_fn, params, x.transpose(0, 3, 1, 2), 0.01, method=method)
    with pytest.raises(validation.InputError, match="eps"):
        certify.certify(apply_fn, params, x, y, -0.1, method=method)
