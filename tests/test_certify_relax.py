"""Linear relaxations of ``robustjax.certify.relax``: closed forms against float64 NumPy, each
relaxation's lines hold on sampled points of random intervals (hypothesis), and CROWN
through GELU / LayerNorm / products / softplus / SiLU / max pooling is sound and tighter than
IBP (softmax and attention: tests/test_certify_vit.py)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustjax.certify import api, relax
from robustjax.certify.ibp import Interval
from tests.compile_events import FAST_COMPILE

_erf = np.vectorize(math.erf)
TRUE = {  # float64 references
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda t: 1 / np.sqrt(t),
    "reciprocal": lambda t: 1 / t, "square": np.square, "tanh": np.tanh,
    "logistic": lambda t: 1 / (1 + np.exp(-t)), "erf": _erf, "erfc": lambda t: 1 - _erf(t),
    "cube": lambda t: t ** 3,
    "gelu": lambda t: 0.5 * t * (1 + np.tanh(0.7978845608 * (t + 0.044715 * t ** 3))),
    "gelu_exact": lambda t: 0.5 * t * (1 + _erf(t / np.sqrt(2))),
    "silu": lambda t: t / (1 + np.exp(-t)),
}
JAX = {"tanh": jnp.tanh, "logistic": jax.nn.sigmoid, "erf": jax.scipy.special.erf,
       "erfc": jax.scipy.special.erfc, "cube": lambda t: t ** 3, "gelu": jax.nn.gelu,
       "gelu_exact": lambda t: jax.nn.gelu(t, approximate=False), "silu": jax.nn.silu}
CLOSED = {"exp": relax.exp_lines, "log": relax.log_lines, "sqrt": relax.sqrt_lines,
          "rsqrt": relax.rsqrt_lines, "reciprocal": relax.reciprocal_lines,
          "square": relax.square_lines}
POSITIVE = {"log", "sqrt", "rsqrt"}


def _lines(name, lo, hi):
    if name in CLOSED:
        return CLOSED[name](lo, hi)
    return relax.envelope(JAX[name], lo, hi)


def _intervals(seed, name, n=64):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.05, 4, n) if name in POSITIVE else rng.uniform(-4, 4, n)
    width = rng.uniform(0, 3, n) * rng.choice([1e-3, 1.0], n)
    lo = centre if name in POSITIVE else centre - width / 2
    if name == "reciprocal":  # one sign per interval
        lo = np.where(centre > 0, 0.05 + np.abs(centre), -0.05 - np.abs(centre) - width)
    return lo.astype(np.float32), (lo + width).astype(np.float32)


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), name=st.sampled_from(sorted(TRUE)))
def test_lines_hold_on_samples(seed, name):
    lo, hi = _intervals(seed, name)
    lines = [np.asarray(a, np.float64) for a in _lines(name, jnp.asarray(lo), jnp.asarray(hi))]
    assert all(np.isfinite(a).all() for a in lines), name
    t = lo[None] + (hi - lo)[None] * np.linspace(0, 1, 401)[:, None]  # endpoints included
    f = TRUE[name](t.astype(np.float64))
    scale = 1e-5 * (1 + np.abs(f))
    assert np.all(lines[0] * t + lines[1] <= f + scale), name
    assert np.all(lines[2] * t + lines[3] >= f - scale), name
    # Not vacuous: the gap at the midpoint is below IBP's width (end values' range) + slack.
    mid = (lo + hi) / 2
    gap = (lines[2] - lines[0]) * mid + lines[3] - lines[1]
    assert np.all(gap <= np.ptp(f, axis=0) + 1e-3 * (1 + np.abs(f).max(0))), name


def test_closed_forms_float64():
    lo, hi = jnp.array([0.0, 1.0]), jnp.array([1.0, 4.0])
    a_lo, b_lo, a_up, b_up = [np.asarray(v, np.float64) for v in relax.exp_lines(lo, hi)]
    m = np.array([0.5, 1.99])  # min((l + u) / 2, l + 0.99) as auto_LiRPA
    np.testing.assert_allclose(a_lo, np.exp(m), rtol=1e-6)
    np.testing.assert_allclose(b_lo, np.exp(m) * (1 - m), rtol=1e-5)
    chord = (np.exp([1.0, 4.0]) - np.exp([0.0, 1.0])) / np.array([1.0, 3.0])
    np.testing.assert_allclose(a_up, chord, rtol=1e-6)
    lines = [np.asarray(v, np.float64)
             for v in relax.reciprocal_lines(jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))]
    # tangent at the midpoint below, chord -1 / (l u) above
    np.testing.assert_allclose(lines[0], -1 / np.array([2.0, 3.0]) ** 2, rtol=1e-6)
    np.testing.assert_allclose(lines[1], 2 / np.array([2.0, 3.0]), rtol=1e-6)
    np.testing.assert_allclose(lines[2], -1 / np.array([3.0, 8.0]), rtol=1e-6)
    np.testing.assert_allclose(lines[3], 1 / np.array([1.0, 2.0]) + 1 / np.array([3.0, 4.0]),
                               rtol=1e-6)
    sq = [np.asarray(v) for v in relax.square_lines(jnp.array([-1.0]), jnp.array([3.0]))]
    np.testing.assert_allclose(sq, [[2.0], [-1.0], [2.0], [3.0]])  # tangent at 1, chord
    # An interval that straddles 0 has no reciprocal lines: infinite offsets.
    bad = relax.reciprocal_lines(jnp.array([-1.0]), jnp.array([1.0]))
    assert np.isinf(bad.b_lo).all() and np.isinf(bad.b_up).all()


def _check_bilinear(f, x_shape, y_shape, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    xc, yc = jax.random.normal(keys[0], x_shape), jax.random.normal(keys[1], y_shape)
    xr, yr = jax.random.uniform(keys[2], x_shape), jax.random.uniform(keys[3], y_shape)
    x, y = Interval(xc - xr, xc + xr), Interval(yc - yr, yc + yr)
    s = 3
    A = jax.random.normal(keys[4], (2 * s, *f(xc, yc).shape))
    sum_rest = lambda a: jnp.sum(a, axis=tuple(range(1, a.ndim)))
    A_x, A_y, bias = jax.jit(lambda a, u, v: relax.bilinear(f, a, s, u, v, sum_rest))(A, x, y)
    u = jax.random.uniform(keys[5], (2, 256, *x_shape), minval=-1, maxval=1)
    v = jax.random.uniform(jax.random.fold_in(keys[5], 1), (256, *y_shape), minval=-1, maxval=1)
    xs, ys = xc + xr * jnp.sign(u[0]) * jnp.abs(u[1]), yc + yr * v
    val = jax.vmap(lambda a, b: sum_rest(A * f(a, b)[None]))(xs, ys)  # [256, 2s]
    lin = jax.vmap(lambda a, b: sum_rest(A_x * a[None]) + sum_rest(A_y * b[None]))(xs, ys) + bias
    assert jnp.all(val[:, :s] >= lin[:, :s] - 1e-4)
    assert jnp.all(val[:, s:] <= lin[:, s:] + 1e-4)


@pytest.mark.parametrize("seed", [0])
def test_bilinear_products_hold(seed):
    _check_bilinear(lambda a, b: a * b, (4, 3), (4, 3), seed)
    _check_bilinear(lambda a, b: a @ b, (4, 3), (3, 5), seed)  # attention-like products


def _bounds_and_samples(fn, x, eps, method="crown", also=()):
    """Bounds (one cheaply compiled program; also at the radii ``also``) and the outputs of
    samples of the ball."""
    run = jax.jit(lambda a, e: api.bounds(fn, None, a, e, method, chunk_size=a.shape[0]))
    run = run.lower(x, eps).compile(compiler_options=FAST_COMPILE)
    lo, hi = run(x, eps)
    xs = jnp.clip(x[None] + jax.random.uniform(jax.random.PRNGKey(3), (512, *x.shape),
                                               minval=-eps, maxval=eps), 0, 1)
    xs = xs.at[:64].set(jnp.clip(x[None] + eps * jnp.sign(xs[:64] - x[None]), 0, 1))
    ys = jax.vmap(lambda a: fn(None, a))(xs)
    return lo, hi, ys, [run(x, jnp.float32(e)) for e in also]


LN = nn.LayerNorm(use_fast_variance=False)
LN_VARS = LN.init(jax.random.PRNGKey(0), jnp.ones((1, 6)))
W1 = jax.random.normal(jax.random.PRNGKey(1), (12, 6)) * 0.5
W2 = jax.random.normal(jax.random.PRNGKey(2), (6, 3)) * 0.5
LAYERS = {  # each a branch of one network: [b, 6] -> [b, 6]
    "gelu_exact": lambda h: jax.nn.gelu(h, approximate=False),
    "layernorm": lambda h: LN.apply(LN_VARS, h),
    "product": lambda h: jnp.concatenate([h[:, :3] * h[:, 3:], h[:, :3] * h[:, :3]], 1),
    "softplus_log_exp": lambda h: jnp.log(1 + jnp.exp(h)),
    "silu_tanh": lambda h: jax.nn.silu(h) + jnp.tanh(h),
}


def test_crown_through_layers_is_sound_and_tighter_than_ibp():
    def fn(p, a):
        h = a.reshape(a.shape[0], -1) @ W1
        return jnp.concatenate([layer(h) @ W2 for layer in LAYERS.values()], 1)

    x = jax.random.uniform(jax.random.PRNGKey(4), (2, 2, 2, 3))
    lo, hi, ys, _ = _bounds_and_samples(fn, x, jnp.float32(0.03))
    assert jnp.all(ys >= lo - 1e-5) and jnp.all(ys <= hi + 1e-5)
    ibp_lo, ibp_hi = api.bounds(fn, None, x, 0.03, "ibp")
    width, ibp_width = (jnp.mean((b - a).reshape(2, len(LAYERS), 3), axis=(0, 2))
                        for a, b in ((lo, hi), (ibp_lo, ibp_hi)))
    for name, w, iw in zip(LAYERS, width, ibp_width):  # every branch gains from its lines
        assert float(w) < 0.9 * float(iw), (name, float(w), float(iw))


def test_max_pool_and_reduce_max():
    k = jax.random.normal(jax.random.PRNGKey(5), (3, 3, 1, 4)) * 0.5

    def fn(p, a):
        h = jax.lax.conv_general_dilated(a, k, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = nn.max_pool(h, (2, 2), (2, 2))
        return jnp.max(h.reshape(h.shape[0], -1, 4), axis=1) @ jnp.eye(4)[:, :3]

    x = jax.random.uniform(jax.random.PRNGKey(6), (2, 4, 4, 1))
    # At eps = 0 the relaxation is exact (the max's arg-max entry, the constant max).
    lo, hi, ys, [(lo0, hi0)] = _bounds_and_samples(fn, x, jnp.float32(0.05), also=[0.0])
    assert jnp.all(ys >= lo - 1e-5) and jnp.all(ys <= hi + 1e-5)
    np.testing.assert_allclose(lo0, fn(None, x), atol=1e-5)
    np.testing.assert_allclose(hi0, fn(None, x), atol=1e-5)


def test_regions_found():
    from robustjax.certify.interpreter import flatten

    def fn(a):
        h = a @ W1[:6]
        return jax.nn.softmax(jax.nn.gelu(h) + jnp.tanh(h))

    graph = flatten(fn, jnp.zeros((2, 6)))
    bounded = {graph.inputs[0]}
    for e in graph.eqns:
        if any(not isinstance(a, relax.Lit) and a in bounded for a in e.inputs):
            bounded.update(e.outputs)
    regions = relax.elementwise_regions(graph, bounded)
    # gelu(h) + tanh(h) is one elementwise function of h; softmax's shift is found.
    assert len(regions.fused) == 1 and len(regions.shift) == 1
    (root, _), = regions.fused.values()
    assert graph.eqns[graph.producer[root]].name == "dot_general"
