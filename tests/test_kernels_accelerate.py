"""kernels.accelerate: a plain-flax / plain-lax model's convolutions move onto oneDNN, same maths."""

import platform
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from robustjax import attacks, kernels, models, train
from robustjax.kernels import accelerate, count_convolutions
from robustjax.types import ModelSpec

LINUX_X86 = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
pytestmark = pytest.mark.skipif(not LINUX_X86, reason="oneDNN wheels are Linux x86-64 only")


class PlainNet(nn.Module):
    """Written as a user would: flax's own Conv (lax convolutions), BatchNorm, remat, scan."""

    @nn.compact
    def __call__(self, x, train: bool = False, features: bool = False):
        h = nn.Conv(8, (3, 3), strides=2)(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
        h = nn.remat(nn.Conv)(16, (3, 3), feature_group_count=2)(h)
        h = nn.relu(nn.Conv(8, (3, 3), kernel_dilation=2, padding="VALID")(h))

        class Step(nn.Module):
            @nn.compact
            def __call__(self, c, _):
                return nn.relu(nn.Conv(8, (3, 3))(c)) + c, None

        h, _ = nn.scan(Step, variable_broadcast="params", split_rngs={"params": False},
                       length=2)()(h, None)
        h = h.mean((1, 2))
        return h if features else nn.Dense(10)(h)


def _setup(seed=0, n=4):
    x = jnp.asarray(np.random.default_rng(seed).uniform(size=(n, 16, 16, 3)), jnp.float32)
    module = PlainNet()
    variables = module.init(jax.random.PRNGKey(seed), x)
    return module, variables, x


def test_plain_flax_convolutions_all_move_and_give_the_same_logits_and_gradients():
    module, v, x = _setup()
    f = lambda p, x: module.apply(p, x)  # noqa: E731
    g = accelerate(f)
    before = count_convolutions(jax.make_jaxpr(f)(v, x))
    after = count_convolutions(jax.make_jaxpr(g)(v, x))
    assert before == {"xla": 4, "onednn": 0}  # stem, grouped (remat), dilated, scan body
    assert after == {"xla": 0, "onednn": 4}
    chex.assert_trees_all_close(g(v, x), f(v, x), atol=1e-5, rtol=1e-5)
    loss = lambda fn: lambda p, x: jnp.sum(jnp.sin(fn(p, x)))  # noqa: E731
    grad_g = jax.jit(jax.grad(loss(g), argnums=(0, 1)))
    chex.assert_trees_all_close(grad_g(v, x), jax.grad(loss(f), argnums=(0, 1))(v, x),
                                atol=1e-5, rtol=1e-5)
    hlo = grad_g.lower(v, x).as_text()
    assert "robustjax_conv_backward_data" in hlo and "robustjax_conv_backward_weights" in hlo


def test_other_convolutions_and_switched_off_stay_on_lax():
    x = jnp.ones((2, 3, 8, 8), jnp.float32)
    w = jnp.ones((4, 3, 3, 3), jnp.float32)
    nchw = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME")  # noqa: E731
    assert count_convolutions(jax.make_jaxpr(accelerate(nchw))(x, w)) == {"xla": 1, "onednn": 0}
    xb, wb = jnp.ones((2, 8, 8, 3), jnp.bfloat16), jnp.ones((3, 3, 3, 4), jnp.bfloat16)
    bf16 = lambda x, w: lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert count_convolutions(jax.make_jaxpr(accelerate(bf16))(xb, wb))["xla"] == 1
    module, v, x = _setup()
    g = accelerate(lambda p, x: module.apply(p, x))
    with kernels.use_onednn(False):
        assert count_convolutions(jax.make_jaxpr(g)(v, x)) == {"xla": 4, "onednn": 0}


def test_zoo_model_is_left_as_it_was():
    model = models.create("cnn", num_classes=10)
    x = jnp.zeros((2,) + model.spec.input_shape, jnp.float32)
    assert not getattr(model.apply_fn, "_robustjax_accelerated", False)  # nothing to rewrite
    j_raw = jax.make_jaxpr(model.apply_fn)(model.params, x)
    fast = accelerate(model.apply_fn)
    j_acc = jax.make_jaxpr(fast)(model.params, x)
    assert len(j_acc.jaxpr.eqns) == len(j_raw.jaxpr.eqns)
    assert count_convolutions(j_acc) == count_convolutions(j_raw) == {"xla": 0, "onednn": 2}
    assert accelerate(fast) is fast


def test_wrapped_user_model_trains_and_is_attacked_on_onednn():
    module, v, x = _setup(1, n=8)
    spec = ModelSpec("plain", (16, 16, 3), 10, (0.5,) * 3, (0.25,) * 3)
    fast = models.wrap(module, v, spec)
    slow = models.wrap(module, v, spec, accelerate=False)
    assert getattr(fast.apply_fn, "_robustjax_accelerated", False)
    assert count_convolutions(jax.make_jaxpr(fast.apply_fn)(v, x))["xla"] == 0
    assert count_convolutions(jax.make_jaxpr(slow.apply_fn)(v, x))["onednn"] == 0
    y = jnp.arange(8) % 10
    # a train step in BatchNorm train mode: same loss, params and running statistics
    opt = optax.sgd(0.1, momentum=0.9)
    loss = train.pgd_at_loss(train.PGDATConfig(eps=0.03, step_size=0.01, steps=2))
    out = []
    for m in (fast, slow):
        step = jax.jit(lambda s, x, y, k, m=m: train.train_step(
            s, x, y, k, apply_fn=m.apply_fn, optimizer=opt, loss_fn=loss,
            train_apply_fn=m.train_apply_fn))
        out.append(step(train.init_state(v, opt), x, y, jax.random.PRNGKey(3)))
    chex.assert_trees_all_close(out[0], out[1], atol=1e-5, rtol=1e-5)
    assert not np.allclose(out[0][0].params["batch_stats"]["BatchNorm_0"]["mean"],
                           v["batch_stats"]["BatchNorm_0"]["mean"])
    cfg = attacks.PGDConfig(eps=0.03, step_size=0.01, steps=3)
    r_fast = attacks.pgd(fast.apply_fn, v, x, y, jax.random.PRNGKey(4), cfg)
    r_slow = attacks.pgd(slow.apply_fn, v, x, y, jax.random.PRNGKey(4), cfg)
    chex.assert_trees_all_close(r_fast.x_adv, r_slow.x_adv, atol=1e-4)
