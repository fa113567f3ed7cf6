"""robustjax.kernels: oneDNN convolutions equal lax's, under every JAX transformation."""

import platform
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from robustjax import kernels as K
from robustjax.kernels import build

LINUX_X86 = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
pytestmark = pytest.mark.skipif(not LINUX_X86, reason="oneDNN wheels are Linux x86-64 only")

DN = ("NHWC", "HWIO", "NHWC")


def _pair(**kw):
    """(robustjax conv, lax conv) as fresh functions of (x, w) with the same arguments."""
    kw = {"dimension_numbers": DN, **kw}
    return (lambda x, w: K.conv_general_dilated(x, w, **kw),
            lambda x, w: lax.conv_general_dilated(x, w, **kw))


def _arrays(seed, x_shape, w_shape):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[:3])), jnp.float32)
    return x, w


def _uses_onednn(fn, *args):
    return "robustjax_conv" in jax.jit(fn).lower(*args).as_text()


def test_kernels_are_built_here():
    # CI installs oneDNN with robustjax; if this fails, every comparison below would be lax vs lax
    s = K.status()
    assert s.available, s.reason
    assert K.onednn_active()


GEOMETRIES = [  # (x shape, w shape, kwargs)
    ((2, 9, 9, 6), (3, 3, 6, 8), dict(window_strides=(1, 1), padding=((1, 1), (1, 1)))),
    ((2, 9, 9, 6), (3, 3, 3, 8), dict(window_strides=(2, 1), padding=((1, 2), (0, 1)),
                                      rhs_dilation=(1, 2), feature_group_count=2)),
    ((3, 8, 8, 4), (7, 7, 1, 4), dict(window_strides=(1, 1), padding=((3, 3), (3, 3)),
                                      feature_group_count=4)),  # depthwise, as ConvNeXt
    ((2, 8, 8, 5), (1, 1, 5, 7), dict(window_strides=(2, 2), padding="SAME")),
    ((2, 8, 8, 3), (4, 4, 3, 5), dict(window_strides=(4, 4), padding="VALID")),  # patchify
    ((1, 3, 5, 2), (5, 5, 2, 3), dict(window_strides=(1, 1), padding=((2, 2), (2, 2)))),
]


@pytest.mark.parametrize("x_shape,w_shape,kw", GEOMETRIES)
def test_forward_and_gradients_equal_lax(x_shape, w_shape, kw):
    ours, ref = _pair(**kw)
    x, w = _arrays(0, x_shape, w_shape)
    assert _uses_onednn(ours, x, w)
    assert not _uses_onednn(ref, x, w)
    chex.assert_trees_all_close(jax.jit(ours)(x, w), ref(x, w), atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(ours(x, w), ref(x, w), atol=1e-5, rtol=1e-5)  # eager
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731
    g_ours = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(x, w)
    chex.assert_trees_all_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)
    t = jnp.cos(x)
    chex.assert_trees_all_close(jax.jvp(lambda x: ours(x, w), (x,), (t,))[1],
                                jax.jvp(lambda x: ref(x, w), (x,), (t,))[1], atol=1e-5, rtol=1e-5)


def test_input_gradient_runs_on_onednn():
    ours, _ = _pair(window_strides=(1, 1), padding=((1, 1), (1, 1)))
    x, w = _arrays(1, (2, 6, 6, 4), (3, 3, 4, 4))
    hlo = jax.jit(jax.grad(lambda x: jnp.sum(ours(x, w) ** 2))).lower(x).as_text()
    assert "robustjax_conv_forward" in hlo and "robustjax_conv_backward_data" in hlo


def test_weight_gradient_runs_on_onednn_and_equals_lax():
    ours, ref = _pair(window_strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=2)
    x, w = _arrays(5, (3, 9, 9, 4), (3, 3, 2, 6))
    loss = lambda conv: lambda w, x: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731
    hlo = jax.jit(jax.grad(loss(ours))).lower(w, x).as_text()
    assert "robustjax_conv_backward_weights" in hlo
    chex.assert_trees_all_close(jax.jit(jax.grad(loss(ours)))(w, x), jax.grad(loss(ref))(w, x),
                                atol=1e-5, rtol=1e-5)
    # per-example weight gradients (vmap over images, weights shared), and per-model (both)
    per_ex = lambda conv: jax.vmap(jax.grad(loss(conv)), (None, 0))  # noqa: E731
    chex.assert_trees_all_close(jax.jit(per_ex(ours))(w, x[:, None]), per_ex(ref)(w, x[:, None]),
                                atol=1e-5, rtol=1e-5)
    ws = jnp.stack([w, -w, 2 * w])
    per_model = lambda conv: jax.vmap(jax.grad(loss(conv)))  # noqa: E731
    chex.assert_trees_all_close(jax.jit(per_model(ours))(ws, x[:, None]),
                                per_model(ref)(ws, x[:, None]), atol=1e-5, rtol=1e-5)

    # second order through the weight gradient: d/d(x, w) of |dL/dw|^2
    def wgrad_norm(conv):
        return lambda x, w: jnp.sum(jax.grad(loss(conv))(w, x) ** 2)

    chex.assert_trees_all_close(jax.jit(jax.grad(wgrad_norm(ours), argnums=(0, 1)))(x, w),
                                jax.grad(wgrad_norm(ref), argnums=(0, 1))(x, w),
                                atol=1e-4, rtol=1e-4)


def test_second_order_and_transpose_equal_lax():
    ours, ref = _pair(window_strides=(2, 2), padding=((1, 1), (1, 1)))
    x, w = _arrays(2, (2, 7, 7, 3), (3, 3, 3, 4))

    def grad_norm(conv):
        f = lambda x, w: jnp.sum(jnp.tanh(conv(x, w)))  # noqa: E731
        return lambda x, w: jnp.sum(jax.grad(f, argnums=0)(x, w) ** 2)

    chex.assert_trees_all_close(jax.jit(jax.grad(grad_norm(ours), argnums=(0, 1)))(x, w),
                                jax.grad(grad_norm(ref), argnums=(0, 1))(x, w),
                                atol=1e-4, rtol=1e-4)
    y = ref(x, w)
    tr = lambda conv: jax.linear_transpose(lambda x: conv(x, w), x)(y)[0]  # noqa: E731
    chex.assert_trees_all_close(tr(ours), tr(ref), atol=1e-5, rtol=1e-5)


def test_vmap_over_images_weights_and_both():
    ours, ref = _pair(window_strides=(1, 1), padding=((1, 1), (1, 1)), feature_group_count=2)
    x, w = _arrays(3, (3, 2, 6, 6, 4), (2, 3, 3, 2, 6))
    for axes, (xs, ws) in {(0, None): (x, w[0]), (None, 0): (x[0], w), (0, 0): (x[:2], w)}.items():
        chex.assert_trees_all_close(jax.jit(jax.vmap(ours, axes))(xs, ws),
                                    jax.vmap(ref, axes)(xs, ws), atol=1e-5, rtol=1e-5)
        f = lambda conv: jax.vmap(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2)), axes)  # noqa
        chex.assert_trees_all_close(jax.jit(f(ours))(xs, ws), f(ref)(xs, ws),
                                    atol=1e-4, rtol=1e-5)
    # images mapped over a non-leading axis; weights shared: folded into one kernel call
    xt = jnp.moveaxis(x, 0, 2)
    chex.assert_trees_all_close(jax.vmap(ours, (2, None))(xt, w[0]),
                                jax.vmap(ref, (2, None))(xt, w[0]), atol=1e-5, rtol=1e-5)
    hlo = jax.jit(jax.vmap(ours, (0, None))).lower(x, w[0]).as_text()
    assert hlo.count("robustjax_conv_forward") == 1


@pytest.mark.parametrize("case", ["bfloat16", "nchw", "lhs_dilation", "switched_off"])
def test_other_convolutions_stay_on_lax(case):
    x, w = _arrays(4, (2, 6, 6, 3), (3, 3, 3, 4))
    kw = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=DN)
    if case == "bfloat16":
        x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    elif case == "nchw":
        x, w = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1))
        kw["dimension_numbers"] = ("NCHW", "OIHW", "NCHW")
    elif case == "lhs_dilation":
        kw["lhs_dilation"] = (2, 2)
    fn = lambda x, w: K.conv_general_dilated(x, w, **kw)  # noqa: E731
    with K.use_onednn(case != "switched_off"):
        jaxpr = jax.make_jaxpr(fn)(x, w)
        out = fn(x, w)  # within the switch: outside it this would be oneDNN's again
    prims = [e.primitive for e in jaxpr.jaxpr.eqns]
    assert prims == [lax.conv_general_dilated_p]
    np.testing.assert_array_equal(out, lax.conv_general_dilated(x, w, **kw))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(3, 9), st.integers(3, 9), st.sampled_from([1, 2, 3]),
       st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 2),
       st.integers(0, 2), st.integers(0, 2), st.integers(1, 2), st.integers(0, 2**16))
def test_random_geometries_equal_lax(n, h, w_, groups, cin_g, cout_g, k, stride, pad_lo,
                                     pad_hi, dilation, seed):
    span = (k - 1) * dilation + 1
    if h + pad_lo + pad_hi < span or w_ + pad_lo + pad_hi < span:
        return  # empty output: not a convolution anyone runs
    kw = dict(window_strides=(stride, 1), padding=((pad_lo, pad_hi), (pad_hi, pad_lo)),
              rhs_dilation=(dilation, dilation), feature_group_count=groups)
    x, w = _arrays(seed, (n, h, w_, groups * cin_g), (k, k, cin_g, groups * cout_g))
    ours, ref = _pair(**kw)
    np.testing.assert_allclose(ours(x, w), ref(x, w), atol=1e-5, rtol=1e-5)
    ct = jnp.ones_like(ref(x, w))
    got, want = jax.vjp(ours, x, w)[1](ct), jax.vjp(ref, x, w)[1](ct)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], atol=1e-4, rtol=1e-5)


def test_models_and_certified_bounds_see_the_same_convolution(tiny_resnet):
    from robustjax.certify.interpreter import flatten

    model = tiny_resnet
    x = jax.random.uniform(jax.random.PRNGKey(0), (4,) + tuple(model.spec.input_shape))
    fast = jax.jit(lambda p, x: model.apply_fn(p, x))
    with K.use_onednn(False):
        slow = jax.jit(lambda p, x: model.apply_fn(p, x))
        slow_hlo = slow.lower(model.params, x).as_text()
    assert "robustjax_conv" in fast.lower(model.params, x).as_text()
    assert "robustjax_conv" not in slow_hlo
    chex.assert_trees_all_close(fast(model.params, x), slow(model.params, x), atol=1e-5)
    names = {e.name for e in flatten(model.apply_fn, model.params, x).eqns}
    assert "conv_general_dilated" in names and "robustjax_conv" not in names


def test_kernel_rejects_mismatched_geometry():
    x, w = _arrays(5, (2, 6, 6, 3), (3, 3, 3, 4))
    geo, out = K.conv._geometry(x.shape, w.shape, (1, 1), ((1, 1), (1, 1)), (1, 1))
    call = lambda geo: jax.ffi.ffi_call(  # noqa: E731
        "robustjax_conv_forward", jax.ShapeDtypeStruct(out, jnp.float32))(x, w, geo=geo)
    np.testing.assert_allclose(call(geo), lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN), atol=1e-5)
    bad = geo.copy()
    bad[3] = 5  # claims 5 input channels for a 3-channel buffer
    with pytest.raises(Exception, match="do not match the geometry"):
        jax.block_until_ready(call(bad))


def test_load_says_why_when_off_or_missing(monkeypatch, tmp_path):
    monkeypatch.setenv(build.ENV_VAR, "0")
    s = build.load()
    assert not s.available and build.ENV_VAR in s.reason
    monkeypatch.delenv(build.ENV_VAR)
    monkeypatch.setenv("ONEDNN_ROOT", str(tmp_path))
    s = build.load()
    assert not s.available and "ONEDNN_ROOT" in s.reason


def test_compile_error_is_reported_not_raised(monkeypatch, tmp_path):
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(build, "SOURCE", broken)
    monkeypatch.setenv("ROBUSTJAX_CACHE", str(tmp_path / "cache"))
    s = build.load()
    assert not s.available and "compiling broken.cc failed" in s.reason
    assert not list((tmp_path / "cache").rglob("*.so"))  # no half-written library left


def test_conv_used_by_flax_layer_keeps_param_tree():
    from robustjax.models.layers import Conv

    layer = Conv(4, (3, 3), padding=((1, 1), (1, 1)))
    x = jnp.ones((1, 5, 5, 2))
    params = layer.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, params) == {"params": {"kernel": (3, 3, 2, 4), "bias": (4,)}}
    with K.use_onednn(False):
        ref = jax.jit(lambda p, x: layer.apply(p, x))(params, x)
    chex.assert_trees_all_close(jax.jit(lambda p, x: layer.apply(p, x))(params, x), ref,
                                atol=1e-6)



@pytest.mark.parametrize("x_shape,w_shape,strides,padding", [
    ((2, 32, 32, 3), (4, 4, 3, 16), (2, 2), ((1, 1), (1, 1))),  # the small CNN's first layer
    ((2, 28, 28, 1), (4, 4, 1, 8), (2, 2), ((1, 1), (1, 1))),  # MNIST
    ((1, 23, 21, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),  # ImageNet stem, odd sizes
    ((2, 9, 10, 2), (3, 2, 2, 5), (3, 2), ((0, 2), (1, 0))),  # uneven strides and pads
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0))),  # kernel smaller than the stride
    ((2, 8, 8, 3), (4, 4, 3, 5), (4, 4), ((0, 0), (0, 0))),  # patchify
])
def test_subpixel_input_gradient_equals_lax(x_shape, w_shape, strides, padding):
    ours, ref = _pair(window_strides=strides, padding=padding)
    x, w = _arrays(6, x_shape, w_shape)
    dy = jnp.asarray(np.random.default_rng(7).standard_normal(ref(x, w).shape), jnp.float32)
    input_grad = lambda conv: jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy))  # noqa: E731
    hlo = input_grad(ours).lower(x, w, dy).as_text()
    assert "robustjax_conv_forward" in hlo and "robustjax_conv_backward_data" not in hlo
    chex.assert_trees_all_close(input_grad(ours)(x, w, dy), input_grad(ref)(x, w, dy),
                                atol=2e-5, rtol=1e-5)
    # and its own derivatives (it is built from the bilinear forward primitive)
    f = lambda conv: lambda x, w: jnp.sum(jax.grad(lambda x: jnp.sum(conv(x, w) ** 2))(x) ** 2)
    chex.assert_trees_all_close(jax.grad(f(ours), argnums=(0, 1))(x, w),
                                jax.grad(f(ref), argnums=(0, 1))(x, w), atol=1e-3, rtol=1e-4)


SHARDED_PGD = r"""
import functools, os
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from robustjax import kernels
from robustjax.attacks import gradient as G
from robustjax.models import create

assert kernels.status().available and len(jax.devices()) == 2
model = create("resnet18_cifar", input_shape=(16, 16, 3), widths=(4, 8, 8, 8),
               blocks=(1, 1, 1, 1))
x = jax.random.uniform(jax.random.PRNGKey(1), (8, 16, 16, 3))
y = jnp.arange(8, dtype=jnp.int32) % 10
cfg = G.PGDConfig(eps=0.03, step_size=0.01, steps=3)
pgd = jax.jit(functools.partial(G.pgd, model.apply_fn, config=cfg))
key = jax.random.PRNGKey(2)
whole = pgd(model.params, x, y, key).x_adv
shard = NamedSharding(jax.make_mesh((2,), ("batch",)), P("batch"))
xs, ys = jax.device_put(x, shard), jax.device_put(y, shard)
assert "robustjax_conv" in pgd.lower(model.params, xs, ys, key).as_text()
for _ in range(3):  # the partitions run the same primitives concurrently
    split = pgd(model.params, xs, ys, key).x_adv
    print(float(jnp.abs(split - whole).max()))
"""


def test_sharded_attack_equals_the_whole_batch(tmp_path):
    import os
    import subprocess

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED_PGD], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    diffs = [float(v) for v in out.stdout.split()]
    assert len(diffs) == 3 and max(diffs) <= 1e-6, diffs


def test_switch_is_part_of_the_jit_cache_key():
    ours, ref = _pair(window_strides=(1, 1), padding=((1, 1), (1, 1)))
    x, w = _arrays(8, (2, 6, 6, 3), (3, 3, 3, 4))
    f = jax.jit(ours)
    on = f(x, w)
    with K.use_onednn(False):
        assert not K.onednn_active()
        assert "robustjax_conv" not in f.lower(x, w).as_text()
        off = f(x, w)
    assert K.onednn_active() and "robustjax_conv" in f.lower(x, w).as_text()
    chex.assert_trees_all_close(on, off, ref(x, w), atol=1e-5, rtol=1e-5)


# oneDNN's strided 1x1 backward-weights kernel corrupted the heap (one thread: "double free or
# corruption", the process aborts) or spun forever (two threads) when the convolution leaves
# trailing input rows unread, as a ResNet shortcut on an even size does. One OpenMP thread makes
# it deterministic, so this runs in a subprocess.
TRAILING_ROWS = """
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from robustjax import kernels as K
dn = ("NHWC", "HWIO", "NHWC")
for shape, k, s, p in [((4, 8, 8, 3), 1, 2, 0), ((16, 32, 32, 4), 1, 2, 0),
                       ((2, 10, 9, 8), 3, 2, 1), ((2, 9, 12, 4), 1, 3, 0)]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, shape[3], 8)), jnp.float32)
    kw = dict(window_strides=(s, s), padding=((p, p), (p, p)), dimension_numbers=dn)
    for _ in range(3):
        ours = jax.jit(jax.grad(lambda w: jnp.sum(K.conv_general_dilated(x, w, **kw) ** 2)))(w)
    ref = jax.grad(lambda w: jnp.sum(lax.conv_general_dilated(x, w, **kw) ** 2))(w)
    print(float(jnp.max(jnp.abs(ours - ref)) / jnp.max(jnp.abs(ref))))
"""


def test_weight_gradient_with_unread_trailing_rows_is_exact_and_safe():
    import os
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", TRAILING_ROWS], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    errors = [float(v) for v in out.stdout.split()]
    assert len(errors) == 4 and max(errors) < 1e-5, errors
