"""Each IBP rule on a hand-computed case, and the interpreter's handling of sub-jaxprs."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.certify.ibp import Interval, propagate
from robustjax.certify.interpreter import UnsupportedPrimitiveError, flatten

I = lambda lo, hi: Interval(jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32))


def check(out, lo, hi, atol=1e-6):
    np.testing.assert_allclose(out.lower, lo, atol=atol)
    np.testing.assert_allclose(out.upper, hi, atol=atol)


X = I([-1.0, 0.5], [2.0, 1.0])  # x0 in [-1, 2], x1 in [0.5, 1]


def test_arithmetic_with_constants():
    check(propagate(lambda x: x + 1.0, X), [0, 1.5], [3, 2])
    check(propagate(lambda x: x - jnp.array([1.0, -1.0]), X), [-2, 1.5], [1, 2])
    check(propagate(lambda x: 3.0 - x, X), [1, 2], [4, 2.5])
    check(propagate(lambda x: x * jnp.array([-2.0, 4.0]), X), [-4, 2], [2, 4])
    check(propagate(lambda x: x / -2.0, X), [-1, -0.5], [0.5, -0.25])
    check(propagate(lambda x: -x, X), [-2, -1], [1, -0.5])
    check(propagate(lambda x: x @ jnp.array([[1.0], [-2.0]]), X), [-3], [1])


def test_relu_max_residual():
    check(propagate(jax.nn.relu, X), [0, 0.5], [2, 1])  # custom_jvp_call -> jit -> max
    check(propagate(lambda x: jnp.maximum(0.0, x), X), [0, 0.5], [2, 1])
    check(propagate(lambda x: jnp.clip(x, 0.0, 0.8), X), [0, 0.5], [0.8, 0.8])  # jit(clip)
    check(propagate(lambda x: x + jax.nn.relu(x), X), [-1, 1], [4, 2])  # residual


def test_products_of_two_bounded_tensors():
    a, b = I([-1.0], [2.0]), I([3.0], [4.0])
    check(propagate(lambda u, v: u * v, a, b), [-4], [8])
    # midpoint-radius: x in [0,2] (c=1,r=1), y in [1,3] (c=2,r=1): 2 +- (1*1 + 1*2 + 1*1).
    check(propagate(lambda u, v: u @ v, I([[0.0]], [[2.0]]), I([[1.0]], [[3.0]])), [[-2]], [[6]])
    check(propagate(lambda u, v: u / v, I([1.0], [2.0]), I([2.0], [4.0])), [0.25], [1.0])
    out = propagate(lambda u, v: u / v, I([1.0], [2.0]), I([-1.0], [4.0]))
    assert np.isinf(out.lower[0]) and np.isinf(out.upper[0])


def test_unary_nonlinearities():
    t = I([-1.0, 0.0], [1.0, 2.0])
    check(propagate(jnp.exp, t), np.exp([-1, 0]), np.exp([1, 2]), 1e-5)
    check(propagate(jnp.tanh, t), np.tanh([-1, 0]), np.tanh([1, 2]))
    check(propagate(jnp.square, t), [0, 0], [1, 4])
    check(propagate(lambda x: x ** 3, t), [-1, 0], [1, 8])
    check(propagate(jax.lax.rsqrt, I([1.0], [4.0])), [0.5], [1.0])
    check(propagate(jax.nn.sigmoid, t), 1 / (1 + np.exp([1, 0])), 1 / (1 + np.exp([-1, -2])))
    # exact GELU x * Phi(x) on [1, 2]: interval product [1,2] x [Phi(1), Phi(2)].
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    check(propagate(lambda x: jax.nn.gelu(x, approximate=False), I([1.0], [2.0])),
          [phi(1)], [2 * phi(2)], 1e-5)


def test_shape_ops():
    m = I([[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]])
    check(propagate(lambda x: x.reshape(4), m), [0, 1, 2, 3], [1, 2, 3, 4])
    check(propagate(lambda x: x.T, m), [[0, 2], [1, 3]], [[1, 3], [2, 4]])
    check(propagate(lambda x: jnp.broadcast_to(x[0], (2, 2)), m), [[0, 1], [0, 1]],
          [[1, 2], [1, 2]])
    check(propagate(lambda x: x.sum(axis=0), m), [2, 4], [4, 6])
    check(propagate(lambda x: x.mean(), m), [1.5], [2.5])
    check(propagate(lambda x: x.max(axis=1), m), [1, 3], [2, 4])
    check(propagate(lambda x: jnp.concatenate([x[0], jnp.array([7.0])]), m), [0, 1, 7], [1, 2, 7])
    check(propagate(lambda x: x[1, 1:], m), [3], [4])
    check(propagate(lambda x: jnp.pad(x[0], 1), m), [0, 0, 1, 0], [0, 1, 2, 0])


def test_pooling():
    img = I(jnp.arange(16.0).reshape(1, 4, 4, 1), jnp.arange(16.0).reshape(1, 4, 4, 1) + 1)
    avg = propagate(lambda x: nn.avg_pool(x, (2, 2), (2, 2)), img)
    check(avg, np.array([[2.5, 4.5], [10.5, 12.5]]).reshape(1, 2, 2, 1),
          np.array([[3.5, 5.5], [11.5, 13.5]]).reshape(1, 2, 2, 1))
    mx = propagate(lambda x: nn.max_pool(x, (2, 2), (2, 2)), img)
    check(mx, np.array([[5, 7], [13, 15]]).reshape(1, 2, 2, 1),
          np.array([[6, 8], [14, 16]]).reshape(1, 2, 2, 1))


def test_conv_hand_case():
    """3x3 input in [0,1] with the centre fixed at 0.5, kernel [[1,-1],[2,0]], VALID."""
    lo = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(0.5)
    hi = jnp.ones((1, 3, 3, 1)).at[0, 1, 1, 0].set(0.5)
    w = jnp.array([[1.0, -1.0], [2.0, 0.0]]).reshape(2, 2, 1, 1)
    conv = lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = propagate(conv, I(lo, hi))
    check(out, np.array([[-1, 0], [-0.5, -0.5]]).reshape(1, 2, 2, 1),
          np.array([[3, 2], [2.5, 2.5]]).reshape(1, 2, 2, 1))


@pytest.mark.parametrize("stride,pad,dil,groups", [(2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2)])
def test_conv_variants_are_exact(stride, pad, dil, groups):
    """A single affine layer's interval is exact: compare with the Jacobian's J+ u + J- l."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(stride * 10 + pad + groups), 3)
    x = jax.random.uniform(k1, (1, 6, 6, 2))
    w = jax.random.normal(k2, (3, 3, 2 // groups, 4))
    conv = lambda z: jax.lax.conv_general_dilated(
        z, w, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dil, dil),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups) + 0.3
    r = 0.1 * jax.random.uniform(k3, x.shape)
    out = propagate(conv, I(x - r, x + r))
    jac = np.asarray(jax.jacobian(conv)(x)).reshape(-1, x.size).astype(np.float64)
    centre = np.asarray(conv(x), np.float64).ravel()
    rad = np.abs(jac) @ np.asarray(r, np.float64).ravel()
    np.testing.assert_allclose(np.ravel(out.lower), centre - rad, atol=1e-5)
    np.testing.assert_allclose(np.ravel(out.upper), centre + rad, atol=1e-5)


def test_batchnorm_inference_and_layernorm_softmax():
    bn = nn.BatchNorm(use_running_average=True, epsilon=0.0)
    v = {"params": {"scale": jnp.array([2.0, -1.0]), "bias": jnp.array([1.0, 0.0])},
         "batch_stats": {"mean": jnp.array([1.0, 0.0]), "var": jnp.array([4.0, 1.0])}}
    # channel 0: (x-1)/2*2+1 = x; channel 1: -x.
    check(propagate(lambda x: bn.apply(v, x), X), [-1, -1], [2, -0.5])
    ln = nn.LayerNorm(use_fast_variance=False)
    lv = ln.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))
    pt = jnp.array([[0.1, 0.5, -0.3, 0.9]])
    # A point interval gives the exact value; a wide one contains sampled outputs.
    check(propagate(lambda x: ln.apply(lv, x), I(pt, pt)), ln.apply(lv, pt), ln.apply(lv, pt),
          1e-4)
    check(propagate(jax.nn.softmax, I(pt, pt)), jax.nn.softmax(pt), jax.nn.softmax(pt), 1e-6)
    box = I(pt - 0.2, pt + 0.2)
    samples = pt + jax.random.uniform(jax.random.PRNGKey(1), (200, 4), minval=-0.2, maxval=0.2)
    for fn in (lambda x: ln.apply(lv, x), jax.nn.softmax):
        out = propagate(fn, box)
        ys = jax.vmap(fn)(samples[:, None])[:, 0]
        assert jnp.all(ys >= out.lower - 1e-5) and jnp.all(ys <= out.upper + 1e-5)


def test_custom_vjp_and_nested_jit_are_inlined():
    @jax.custom_vjp
    def f(x):
        return 2.0 * x

    f.defvjp(lambda x: (f(x), None), lambda _, g: (2.0 * g,))
    inner = jax.jit(lambda x: jax.nn.relu(f(x)))
    check(propagate(jax.jit(lambda x: inner(x) - 1.0), X), [-1, 0], [3, 1])
    graph = flatten(jax.jit(lambda x: inner(x) - 1.0), jnp.zeros(2))
    assert {e.name for e in graph.eqns} == {"mul", "max", "sub"}


def test_unsupported_primitive_is_named():
    with pytest.raises(UnsupportedPrimitiveError, match="'sin'"):
        propagate(jnp.sin, X)
