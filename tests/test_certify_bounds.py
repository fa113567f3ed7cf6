"""IBP / CROWN / Fast-Lin / CROWN-IBP / alpha-CROWN: agreement with an independent float64
NumPy implementation of the papers' formulas, soundness on sampled inputs, ordering."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustjax.certify import api
from robustjax.models import small
from robustjax.models.registry import wrap
from robustjax.types import ModelSpec
from tests.compile_events import FAST_COMPILE

SHAPE = (8, 8, 1)
MEAN, STD = 0.13, 0.31


def _model(kind, seed):
    if kind == "mlp":
        module = small.MLP(num_classes=5, hidden=(12, 10))
    else:
        module = small.CNN(num_classes=5, channels=(3, 4), kernel=3, stride=2, hidden=10)
    params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, *SHAPE)))
    return wrap(module, params, ModelSpec(kind, SHAPE, 5, (MEAN,), (STD,)))


MODELS = {k: _model(k, 0) for k in ("mlp", "cnn")}


ALPHA = api.AlphaCrownConfig(steps=8, lr=0.2)


@functools.lru_cache(maxsize=None)
def _all_bounds(kind, norm="linf"):
    """One compiled function per model kind and norm: {method: (lower, upper)} for all methods."""
    apply_fn = MODELS[kind].apply_fn

    def fn(p, x, eps, spec):
        return {m: api.bounds(apply_fn, p, x, eps, m, norm, spec, alpha_config=ALPHA)
                for m in api.METHODS}

    return jax.jit(fn)


def _bounds_fn(kind, method, norm="linf"):
    return lambda *args: _all_bounds(kind, norm)(*args)[method]


# ---------------------------------------------------------------- float64 NumPy reference
def _conv_matrix(kernel, in_shape, stride, pad):
    """The convolution (HWIO kernel, symmetric padding) as a dense matrix on NHWC-flat vectors."""
    kh, kw, cin, cout = kernel.shape
    h, w, _ = in_shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    m = np.zeros((oh, ow, cout, h, w, cin))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    r, c = i * stride - pad + a, j * stride - pad + b
                    if 0 <= r < h and 0 <= c < w:
                        m[i, j, :, r, c, :] += kernel[a, b].T
    return m.reshape(oh * ow * cout, h * w * cin), (oh, ow, cout)


def _layers(kind, params):
    """[(W, b)] float64 affine layers (ReLU between), the normalisation folded into the first."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    layers, shape = [], SHAPE
    if kind == "cnn":
        for name in ("conv0", "conv1"):
            m, shape = _conv_matrix(p[name]["kernel"], shape, 2, 1)
            layers.append((m, np.tile(p[name]["bias"], shape[0] * shape[1])))
        names = ("dense0", "head")
    else:
        names = ("dense0", "dense1", "head")
    for name in names:
        layers.append((p[name]["kernel"].T, p[name]["bias"]))
    w0, b0 = layers[0]
    layers[0] = (w0 / STD, b0 - w0.sum(axis=1) * MEAN / STD)
    return layers


def _ref_ibp(layers, lo, hi, spec):
    for w, b in layers[:-1]:
        c, r = (hi + lo) / 2, (hi - lo) / 2
        lo, hi = np.maximum(w @ c + b - np.abs(w) @ r, 0), np.maximum(w @ c + b + np.abs(w) @ r, 0)
    w, b = spec @ layers[-1][0], spec @ layers[-1][1]  # last layer elided into the spec
    c, r = (hi + lo) / 2, (hi - lo) / 2
    return w @ c + b - np.abs(w) @ r, w @ c + b + np.abs(w) @ r


def _ref_backward(layers, pre, spec, xl, xu, fastlin):
    """CROWN (Zhang et al. 2018, Thm 3.2) / Fast-Lin bounds of spec @ z_L, z_i = W_i a + b_i."""
    lam_l = spec @ layers[-1][0]
    lam_u = lam_l.copy()
    bl, bu = spec @ layers[-1][1], spec @ layers[-1][1]
    for i in range(len(layers) - 2, -1, -1):
        l, u = pre[i]
        unstable = (l < 0) & (u > 0)
        a_u = np.where(u <= 0, 0.0, np.where(l >= 0, 1.0, u / np.where(unstable, u - l, 1)))
        b_u = np.where(unstable, -a_u * l, 0.0)
        slope = a_u if fastlin else (u > -l).astype(float)
        a_l = np.where(u <= 0, 0.0, np.where(l >= 0, 1.0, slope))
        pl, nl, pu, nu = (np.maximum(lam_l, 0), np.minimum(lam_l, 0),
                          np.maximum(lam_u, 0), np.minimum(lam_u, 0))
        bl, bu = bl + nl @ b_u, bu + pu @ b_u
        lam_l, lam_u = pl * a_l + nl * a_u, pu * a_u + nu * a_l
        w, b = layers[i]
        bl, bu = bl + lam_l @ b, bu + lam_u @ b
        lam_l, lam_u = lam_l @ w, lam_u @ w
    lower = np.maximum(lam_l, 0) @ xl + np.minimum(lam_l, 0) @ xu + bl
    upper = np.maximum(lam_u, 0) @ xu + np.minimum(lam_u, 0) @ xl + bu
    return lower, upper


def _ref_crown(layers, xl, xu, spec, fastlin=False):
    pre = []
    for k in range(1, len(layers)):  # bounds of z_1 ... z_{L-1} from their own backward pass
        eye = np.eye(layers[k - 1][0].shape[0])
        pre.append(_ref_backward(layers[:k], pre, eye, xl, xu, fastlin))
    return _ref_backward(layers, pre, spec, xl, xu, fastlin)


def _data(seed, n=3):
    x = jax.random.uniform(jax.random.PRNGKey(seed), (n, *SHAPE))
    y = jax.random.randint(jax.random.PRNGKey(seed + 1), (n,), 0, 5)
    return x, y


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("method", ["ibp", "crown", "fastlin"])
def test_matches_float64_reference(kind, method):
    model = MODELS[kind]
    x, y = _data(3)
    eps = 0.03
    spec = api.margin_spec(y, 5)
    lo, hi = _bounds_fn(kind, method)(model.params, x, eps, spec)
    layers = _layers(kind, model.params)
    for i in range(x.shape[0]):
        x0 = np.asarray(x[i], np.float64).ravel()
        xl, xu = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
        c = np.asarray(spec[i], np.float64)
        if method == "ibp":
            ref = _ref_ibp(layers, xl, xu, c)
        else:
            ref = _ref_crown(layers, xl, xu, c, fastlin=method == "fastlin")
        scale = max(1.0, np.abs(ref).max())
        np.testing.assert_allclose(lo[i], ref[0], atol=1e-5 * scale)
        np.testing.assert_allclose(hi[i], ref[1], atol=1e-5 * scale)
        # The reference's stability decisions must not all be trivial: some width remains.
        assert np.max(ref[1] - ref[0]) > 1e-3


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), eps=st.floats(0.001, 0.1),
       kind_norm=st.sampled_from([("mlp", "linf"), ("cnn", "linf"), ("mlp", "l2")]))
def test_bounds_contain_sampled_outputs(seed, eps, kind_norm):
    """Soundness: random weights, centre, eps; outputs of sampled inputs lie in the bounds."""
    kind, norm = kind_norm
    model = _model(kind, seed)
    x, _ = _data(seed, n=2)
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed + 7))
    delta = jax.random.uniform(k1, (64, *x.shape), minval=-1, maxval=1)
    if norm == "l2":
        flat = delta.reshape(64, 2, -1)
        delta = (flat / jnp.linalg.norm(flat, axis=-1, keepdims=True)).reshape(delta.shape)
        delta = delta * jax.random.uniform(k2, (64, 2, 1, 1, 1))
    # Include corners of the box (the extreme points for Linf).
    delta = delta.at[:16].set(jnp.sign(delta[:16])) if norm == "linf" else delta
    xs = jnp.clip(x + eps * delta, 0, 1)
    out = jax.vmap(model.apply_fn, (None, 0))(model.params, xs)  # [64, 2, 5]
    spec = jnp.broadcast_to(jnp.eye(5), (2, 5, 5))
    for method, (lo, hi) in _all_bounds(kind, norm)(model.params, x, eps, spec).items():
        assert jnp.all(out >= lo - 1e-4), method
        assert jnp.all(out <= hi + 1e-4), method


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_method_ordering(kind):
    """CROWN's margin lower bound >= IBP's; alpha-CROWN's >= CROWN's (and > somewhere)."""
    model = MODELS[kind]
    x, y = _data(11, n=3)
    spec = api.margin_spec(y, 5)
    res = {m: _bounds_fn(kind, m)(model.params, x, 0.05, spec)[0]
           for m in ("ibp", "crown", "alpha_crown", "crown_ibp")}
    assert jnp.all(res["crown"] >= res["ibp"] - 1e-5)
    assert jnp.all(res["alpha_crown"] >= res["crown"] - 1e-6)
    assert jnp.any(res["alpha_crown"] > res["crown"] + 1e-4)
    assert jnp.all(res["crown"] >= res["crown_ibp"] - 1e-5)


def test_robust_condition_eq5():
    lower = jnp.array([[1.0, -1.0, 0.0], [1.0, 0.5, 1.5]])
    upper = jnp.array([[2.0, 0.9, 0.5], [2.0, 1.2, 2.0]])
    y = jnp.array([0, 0])
    # example 0: lower_y = 1 > upper_j = 0.9, 0.5 -> robust; example 1: 1 < 1.2 -> not.
    np.testing.assert_array_equal(api.robust_condition(lower, upper, y), [True, False])
    np.testing.assert_array_equal(api.margin_condition(jnp.array([[0.0, 0.1, 0.2]]),
                                                       jnp.array([0])), [True])


def test_certify_flags_and_eps_zero():
    """At eps=0 every method verifies exactly the correctly classified examples."""
    model = MODELS["cnn"]
    x, _ = _data(5, n=4)
    pred = jnp.argmax(model.apply_fn(model.params, x), -1)
    y = pred.at[0].set((pred[0] + 1) % 5)
    for method in ("ibp", "crown"):
        lower, _ = _bounds_fn("cnn", method)(model.params, x, 0.0, api.margin_spec(y, 5))
        np.testing.assert_array_equal(api.margin_condition(lower, y), y == pred)
    certify = jax.jit(api.certify, static_argnums=(0, 5))
    ok = certify(model.apply_fn, model.params, x, pred, 0.5, "ibp")
    assert not jnp.any(ok)
    ok = certify(model.apply_fn, model.params, x, pred, 0.0, "ibp")
    assert jnp.all(ok)
    with pytest.raises(ValueError, match="valid methods"):
        api.certify(model.apply_fn, model.params, x, y, 0.1, "deepz")


def _tiny_transformer(params, x):
    """Patch embedding, LayerNorm, one attention head (softmax, two bounded products),
    exact GELU MLP, residuals, mean pooling, linear head: the ViT/ConvNeXt primitives."""
    b = x.shape[0]
    tokens = x.reshape(b, 4, 4) @ params["embed"]  # 4 patches of 4 pixels -> dim 6
    h = nn_layernorm(tokens)
    q, k, v = h @ params["q"], h @ params["k"], h @ params["v"]
    att = jax.nn.softmax(jnp.einsum("btd,bsd->bts", q, k) / jnp.sqrt(6.0), axis=-1)
    tokens = tokens + jnp.einsum("bts,bsd->btd", att, v)
    tokens = tokens + jax.nn.gelu(nn_layernorm(tokens) @ params["w1"], approximate=False)
    return jnp.tanh(tokens.mean(axis=1)) @ params["head"]


def nn_layernorm(t):
    mu = t.mean(-1, keepdims=True)
    var = ((t - mu) ** 2).mean(-1, keepdims=True)
    return (t - mu) * jax.lax.rsqrt(var + 1e-6)


def test_transformer_primitives_sound_for_ibp_and_crown():
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    shapes = {"embed": (4, 6), "q": (6, 6), "k": (6, 6), "v": (6, 6), "w1": (6, 6),
              "head": (6, 3)}
    params = {n: 0.5 * jax.random.normal(kk, s) for kk, (n, s) in zip(keys, shapes.items())}
    x = jax.random.uniform(keys[-1], (2, 4, 4, 1))
    eps = 0.01
    xs = jnp.clip(x + eps * jax.random.uniform(jax.random.PRNGKey(3), (200, *x.shape),
                                               minval=-1, maxval=1), 0, 1)
    out = jax.vmap(_tiny_transformer, (None, 0))(params, xs)
    widths = {}
    for method in ("ibp", "crown"):
        # CROWN's program here has thousands of operations (a backward pass per relaxed
        # node): compiled without XLA's expensive optimisations (~40 s -> a few s)
        run = jax.jit(lambda p, a, m=method: api.bounds(_tiny_transformer, p, a, eps, m))
        lo, hi = run.lower(params, x).compile(compiler_options=FAST_COMPILE)(params, x)
        assert jnp.all(jnp.isfinite(lo)) and jnp.all(jnp.isfinite(hi))
        assert jnp.all(out >= lo - 1e-5) and jnp.all(out <= hi + 1e-5), method
        widths[method] = float(jnp.mean(hi - lo))
    assert widths["crown"] <= widths["ibp"] + 1e-6
