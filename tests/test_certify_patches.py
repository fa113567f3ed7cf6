"""CROWN's convolution coefficients as patches (``robustjax.certify.patches``): every patch
operation equals its dense counterpart, and CROWN / Fast-Lin bounds with patches equal the
dense rows' on user models (plain flax: strides, padding, dilation, groups, BatchNorm, a
residual block, Linf and L2), also when the rows are split into blocks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from robustjax.certify import api, crown, patches
from robustjax.certify.patches import Patches
from tests.compile_events import FAST_COMPILE


def _random_patches(key, rows, b, ph, pw, node):
    k1, k2, k3 = jax.random.split(key, 3)
    _, h, w, c = node
    values = jax.random.normal(k1, (rows, b, ph, pw, c))
    # corners anywhere from fully outside on the top/left to fully outside on the bottom/right
    oy = jax.random.randint(k2, (rows, b), -ph - 1, h + 2)
    ox = jax.random.randint(k3, (rows, b), -pw - 1, w + 2)
    p = Patches(values, jnp.stack([oy, ox], -1).astype(jnp.int32), node)
    return p.with_values(p.values * patches.valid(p))  # a patch is zero off the node


@jax.jit
def _window_check(key):
    node = (2, 5, 6, 3)
    p = _random_patches(key, 5, 2, 3, 2, node)
    full = jax.random.normal(jax.random.fold_in(key, 1), node)
    dense = patches.dense(p)
    return (jnp.sum(p.values * patches.window(p, full), axis=(2, 3, 4)),
            jnp.sum(dense * full, axis=(2, 3, 4)), jnp.sum(dense, axis=(2, 3, 4)),
            jnp.sum(p.values, axis=(2, 3, 4)))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_window_is_the_dense_rows_inner_product(seed):
    windowed, dense, dense_sum, patch_sum = _window_check(jax.random.PRNGKey(seed))
    np.testing.assert_allclose(windowed, dense, rtol=1e-5, atol=1e-5)
    # nothing of the window is lost or duplicated when it is made dense
    np.testing.assert_allclose(dense_sum, patch_sum, rtol=1e-5, atol=1e-5)


def test_one_hot_rows_are_the_dense_one_hot_rows_and_n_is_a_zero_row():
    node = (3, 4, 5, 2)
    n = 4 * 5 * 2
    idx = jnp.array([[0, 7, n], [39, n, 12]])
    p = patches.one_hot(idx, node)
    ref = jax.nn.one_hot(idx, n).reshape((2, *node))
    np.testing.assert_array_equal(patches.dense(p), ref)


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups", [
    (3, 1, 1, 1, 1), (4, 2, 1, 1, 1), (3, 2, 0, 1, 1), (1, 1, 0, 1, 1), (3, 1, 2, 2, 1),
    (3, 2, 1, 1, 2), ((3, 2), (2, 1), ((2, 0), (1, 1)), (1, 2), 1)])
def test_conv_transpose_of_patches_equals_the_dense_transposed_convolution(
        kernel, stride, padding, dilation, groups):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    strides = (stride, stride) if isinstance(stride, int) else stride
    pads = ((padding, padding),) * 2 if isinstance(padding, int) else padding
    dil = (dilation, dilation) if isinstance(dilation, int) else dilation
    x_shape, cin, cout = (2, 9, 8, 4), 4, 6
    w = jax.random.normal(jax.random.PRNGKey(0), (kh, kw, cin // groups, cout))

    def conv(x):
        return jax.lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dil,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=groups)

    eqn = jax.make_jaxpr(conv)(jnp.zeros(x_shape)).jaxpr.eqns[0]
    eqn = type("Eqn", (), {"params": eqn.params, "prim": eqn.primitive})()
    out_shape = jax.eval_shape(conv, jnp.zeros(x_shape)).shape
    geometry = patches.conv_geometry(eqn, jnp.zeros(x_shape), w)

    @jax.jit
    def check(key):
        out = []
        for size in [(1, 1), (2, 3)]:
            p = _random_patches(key, 4, 2, *size, out_shape)
            got = patches.conv_transpose(p, eqn, w, x_shape, geometry)
            _, vjp = jax.vjp(conv, jnp.zeros(x_shape))
            out.append((patches.dense(got), jax.vmap(lambda a: vjp(a)[0])(patches.dense(p))))
        return out

    for got, ref in check(jax.random.PRNGKey(0)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


class Convs(nn.Module):
    """Plain flax: strides, SAME/explicit padding, a dilated and a grouped convolution,
    BatchNorm (eval), average pooling, a dense head."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 2), (0, 1)))(x))
        x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(x)))
        x = nn.relu(nn.Conv(6, (3, 3), kernel_dilation=(2, 2), feature_group_count=2)(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        return nn.Dense(4)(x.reshape((x.shape[0], -1)))


class Residual(nn.Module):
    """A residual block: the two branches' rows meet at the block's input."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        y = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.relu(x + nn.Conv(4, (3, 3))(y))
        return nn.Dense(3)(x.reshape((x.shape[0], -1)))


def _init(module, x):
    variables = module.init(jax.random.PRNGKey(0), x)
    if "batch_stats" in variables:  # non-trivial running statistics
        stats = jax.tree.map(lambda a: a + 0.3 * jax.random.uniform(jax.random.PRNGKey(5),
                                                                     a.shape),
                             variables["batch_stats"])
        variables = {**variables, "batch_stats": stats}
    return variables


def _sound(module, params, x, eps, norm, lo, hi):
    noise = jax.random.uniform(jax.random.PRNGKey(2), (64, *x.shape), minval=-1, maxval=1)
    if norm == "l2":
        size = jnp.linalg.norm(noise.reshape(64, x.shape[0], -1), axis=-1)
        noise = noise * eps / size[..., None, None, None]
    else:
        noise = noise * eps
    out = jax.vmap(lambda a: module.apply(params, a))(jnp.clip(x + noise, 0, 1))
    assert jnp.all(out >= lo - 1e-5) and jnp.all(out <= hi + 1e-5)


@pytest.mark.parametrize("module,norm,eps,method", [
    (Convs(), "linf", 0.03, "crown"), (Residual(), "linf", 0.02, "fastlin"),
    (Convs(), "l2", 0.3, "crown")])
def test_patches_give_the_dense_rows_bounds_on_flax_models(module, norm, eps, method):
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 11, 10, 2))
    params = _init(module, x)
    results = {}
    for on in (True, False):
        with crown.use_patches(on):  # eager: sparse intermediate bounds
            results[on] = api.bounds(module.apply, params, x, eps, method, norm)
    for got, ref in zip(results[True], results[False]):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    lo, hi = results[True]
    ibp_lo, ibp_hi = api.bounds(module.apply, params, x, eps, "ibp", norm)
    assert float(jnp.mean(hi - lo)) < float(jnp.mean(ibp_hi - ibp_lo))
    _sound(module, params, x, eps, norm, lo, hi)


def test_patches_give_the_dense_rows_bounds_with_dense_intermediate_passes():
    """Under a caller's jit every neuron gets a row (``patches.one_hot`` of all indices)."""
    module = Convs()
    x = jax.random.uniform(jax.random.PRNGKey(4), (2, 11, 10, 2))
    params = _init(module, x)
    results = {}
    for on in (True, False):
        with crown.use_patches(on):
            run = jax.jit(lambda p, a: api.bounds(module.apply, p, a, 0.03, "crown"))
            results[on] = run.lower(params, x).compile(compiler_options=FAST_COMPILE)(params, x)
    for got, ref in zip(results[True], results[False]):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    _sound(module, params, x, 0.03, "linf", *results[True])


def test_blocks_of_rows_give_the_same_bounds(monkeypatch):
    module = Convs()
    x = jax.random.uniform(jax.random.PRNGKey(3), (2, 11, 10, 2))
    params = _init(module, x)
    whole = api.bounds(module.apply, params, x, 0.03, "crown")
    seen = []
    real = crown._row_bytes

    def spy(graph, env, key, shape, rows, inputs, mode):
        out = real(graph, env, key, shape, rows, inputs, mode)
        seen.append((rows, out))
        return out

    monkeypatch.setattr(crown, "ROW_BLOCK_BYTES", 50_000)  # a few rows per block
    monkeypatch.setattr(crown, "_row_bytes", spy)
    # another static argument (chunk_size) so that the program is traced under the new budget
    split = api.bounds(module.apply, params, x, 0.03, "crown", chunk_size=1)
    blocks = [-(-rows // max(1, 50_000 // (crown._LIVE_ARRAYS * b))) for rows, b in seen]
    assert blocks and max(blocks) > 4, seen  # the rows did go in several blocks
    for got, ref in zip(split, whole):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
