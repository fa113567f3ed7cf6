"""The precision policy (robustjax.precision): casts, fp32 accumulation, attacks, training."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import attacks, models, precision, train
from robustjax.types import ModelSpec


@pytest.fixture(scope="module")
def tiny():
    """A small CNN on 12x12x1 (two convolutions, two dense layers)."""
    return models.create("cnn", input_shape=(12, 12, 1), channels=(4, 8), hidden=16)


def _images(n=6, shape=(12, 12, 1), seed=0):
    return jax.random.uniform(jax.random.PRNGKey(seed), (n,) + shape)


def test_policy_casts_params_logits_intermediates(tiny):
    model = tiny.with_policy("bfloat16")
    assert model.policy == precision.BF16 and tiny.policy == precision.FP32
    x = _images()
    # params stored in float32 (the master weights), logits float32
    assert {leaf.dtype for leaf in jax.tree.leaves(model.params)} == {jnp.dtype("float32")}
    logits = jax.jit(model.apply_fn)(model.params, x)
    assert logits.dtype == jnp.float32 and logits.shape == (6, 10)
    # every product inside runs on bf16 operands and accumulates in float32
    products = precision.dtypes_of_products(model.apply_fn, model.params, x)
    assert len(products) == 4  # conv0, conv1, dense0, head
    assert set(products) == {("conv_general_dilated", "bfloat16", "float32"),
                             ("dot_general", "bfloat16", "float32")}
    # and so does the backward pass, whose gradients come back in float32
    grad_products = precision.dtypes_of_products(
        jax.grad(lambda p, z: model.apply_fn(p, z).sum()), model.params, x)
    # (forward products accumulate in float32; the transposed ones take bf16 cotangents)
    assert {p[1] for p in grad_products} == {"bfloat16"}
    assert ("conv_general_dilated", "bfloat16", "float32") in grad_products
    assert ("dot_general", "bfloat16", "bfloat16") in grad_products
    # forward mode works too (the products are custom_jvp functions)
    tangent = jax.eval_shape(lambda z: jax.jvp(lambda u: model.apply_fn(model.params, u), (z,),
                                               (jnp.ones_like(z),))[1], x)
    assert tangent.dtype == jnp.float32
    grads = jax.eval_shape(jax.grad(lambda p: model.apply_fn(p, x).sum()), model.params)
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype("float32")}
    x_grad = jax.eval_shape(jax.grad(lambda z: model.apply_fn(model.params, z).sum()), x)
    assert x_grad.dtype == jnp.float32
    # the float32 policy is the model itself; re-applying a policy does not wrap twice
    assert tiny.with_policy("float32").apply_fn is tiny.apply_fn
    assert model.with_policy("float32").apply_fn is tiny.apply_fn
    assert model.with_policy(precision.BF16).apply_fn is model.apply_fn


def test_bf16_policy_matches_flax_mixed_precision():
    """Independent reference: flax's own ``dtype=bfloat16`` layers (param_dtype float32)."""

    class Net(nn.Module):
        dtype: object = None

        @nn.compact
        def __call__(self, x, features=False):
            h = nn.relu(nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype)(x))
            h = h.reshape((h.shape[0], -1))
            return nn.Dense(5, dtype=self.dtype)(h).astype(jnp.float32)

    x = _images(4, (8, 8, 2), seed=3)
    variables = Net().init(jax.random.PRNGKey(1), x)
    spec = ModelSpec("net", (8, 8, 2), 5)  # mean 0, std 1: normalisation is exact in bf16
    ours = models.wrap(Net(), variables, spec).with_policy("bfloat16")
    flax_bf16 = jax.jit(Net(dtype=jnp.bfloat16).apply)(variables, x)
    got = jax.jit(ours.apply_fn)(ours.params, x)
    np.testing.assert_allclose(got, flax_bf16, rtol=1e-2, atol=1e-2)


def test_accumulation_is_float32_and_rounds_once():
    a = jax.random.normal(jax.random.PRNGKey(0), (3, 512)).astype(jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (512, 4)).astype(jnp.bfloat16)
    f = precision.accumulate_in(lambda a, b: a @ b, jnp.bfloat16, jnp.float32)
    got = f(a, b)
    assert got.dtype == jnp.bfloat16
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    once = jnp.asarray(exact, jnp.float32).astype(jnp.bfloat16)  # one rounding of the true sum
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(once, np.float32))
    assert precision.dtypes_of_products(f, a, b) == [("dot_general", "bfloat16", "float32")]
    plain = precision.dtypes_of_products(lambda a, b: a @ b, a, b)
    assert plain == [("dot_general", "bfloat16", "bfloat16")]


def test_bf16_logits_close_to_fp32(tiny):
    x = _images(16)
    ref = jax.jit(tiny.apply_fn)(tiny.params, x)
    model = tiny.with_policy("bfloat16")
    got = jax.jit(model.apply_fn)(model.params, x)
    scale = float(jnp.max(jnp.abs(ref)))
    assert float(jnp.max(jnp.abs(got - ref))) < 0.02 * scale
    assert float(jnp.max(jnp.abs(got - ref))) > 0.0  # bf16 really ran
    assert jnp.mean(jnp.argmax(got, -1) == jnp.argmax(ref, -1)) >= 0.9


def test_attacks_on_bf16_model_stay_in_box_and_ball(tiny):
    name = "pgd"
    model = tiny.with_policy("bfloat16")
    x, y = _images(6), jnp.arange(6, dtype=jnp.int32) % 10
    attack, config = attacks.ATTACKS[name]
    cfg = config(eps=0.1, step_size=0.05, steps=3)
    result = attack(model.apply_fn, model.params, x, y, jax.random.PRNGKey(0), cfg)
    x_adv = result.x_adv
    assert x_adv.dtype == jnp.float32
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6
    ref = attack(tiny.apply_fn, tiny.params, x, y, jax.random.PRNGKey(0), cfg)
    # the loss the attack reaches is close to the float32 attack's
    ce = optax.softmax_cross_entropy_with_integer_labels
    loss_bf16 = ce(tiny.apply_fn(tiny.params, x_adv), y).mean()
    loss_fp32 = ce(tiny.apply_fn(tiny.params, ref.x_adv), y).mean()
    assert abs(float(loss_bf16 - loss_fp32)) < 0.05 * abs(float(loss_fp32)) + 1e-3


def test_training_under_bf16_keeps_fp32_params_and_matches(tiny):
    x = _images(16)
    y = (jnp.arange(16) % 10).astype(jnp.int32)
    opt = optax.sgd(0.5)
    loss_fn = train.cross_entropy_loss  # (the attacks' input gradients: the test above)
    model = tiny.with_policy("bfloat16")

    def run(m):
        step = jax.jit(lambda s, k: train.train_step(s, x, y, k, apply_fn=m.apply_fn,
                                                     optimizer=opt, loss_fn=loss_fn))
        state, loss = step(train.init_state(m.params, opt), jax.random.PRNGKey(0))
        return state.params, float(loss)

    ref, loss_ref = run(tiny)
    got, loss = run(model)
    assert {leaf.dtype for leaf in jax.tree.leaves(got)} == {jnp.dtype("float32")}
    assert abs(loss - loss_ref) < 0.02 * abs(loss_ref)
    update = jax.tree.leaves(jax.tree.map(lambda a, b: a - b, ref, tiny.params))
    error = jax.tree.leaves(jax.tree.map(lambda a, b: a - b, got, ref))
    size = max(float(jnp.max(jnp.abs(u))) for u in update)
    assert size > 1e-3  # the step moved the weights...
    # ...and the bf16 step moved them the same way, to bf16 rounding of the gradients
    assert max(float(jnp.max(jnp.abs(e))) for e in error) < 0.05 * size


def test_batch_statistics_update_in_param_dtype():
    class BNNet(nn.Module):
        @nn.compact
        def __call__(self, x, features=False, train=False):
            h = nn.Conv(4, (3, 3))(x)
            h = nn.BatchNorm(use_running_average=not train)(h)
            return nn.Dense(3)(nn.relu(h).reshape((x.shape[0], -1)))

    x = _images(8, (6, 6, 1))
    variables = BNNet().init(jax.random.PRNGKey(0), x)
    model = models.wrap(BNNet(), variables, ModelSpec("bn", (6, 6, 1), 3))
    bf16 = model.with_policy("bfloat16")
    logits, mutated = jax.jit(bf16.train_apply_fn)(bf16.params, x)
    ref_logits, ref_mutated = jax.jit(model.train_apply_fn)(model.params, x)
    assert logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(mutated)} == {jnp.dtype("float32")}
    for a, b in zip(jax.tree.leaves(mutated), jax.tree.leaves(ref_mutated)):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(logits, ref_logits, rtol=5e-2, atol=5e-2)


def test_bad_policies_say_what_was_expected():
    with pytest.raises(ValueError, match="unknown precision policy 'bf16'.*bfloat16"):
        precision.get_policy("bf16")
    with pytest.raises(TypeError, match="compute_dtype must be a floating dtype.*int32"):
        precision.Policy(compute_dtype=jnp.int32)
    with pytest.raises(TypeError, match="expects a robustjax Model"):
        precision.with_policy(lambda p, x: x, "bfloat16")
    assert repr(precision.BF16) == ("Policy(param=float32, compute=bfloat16, output=float32, "
                                    "accumulation=float32)")
    assert dataclasses.replace(precision.BF16, accumulation_dtype=None).accumulation_dtype is None
