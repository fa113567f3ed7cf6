"""Tiny models shared by the C&W / DeepFool / EAD / FMN / black-box attack tests."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier


def mlp_apply(p, xb):
    h = jax.nn.relu(xb.reshape(xb.shape[0], -1) @ p["w"][0] + p["b"][0])
    return h @ p["w"][1] + p["b"][1]


@functools.lru_cache(maxsize=1)
def _trained_mlp():
    """Trained once per test session (every attacks-b test file shares it)."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached: the fit is good enough for attacks
        clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0)
        clf.fit(x[:1200].reshape(1200, -1), y[:1200])
    return x, y, [w.astype(np.float32) for w in clf.coefs_], \
        [b.astype(np.float32) for b in clf.intercepts_]


def digits_mlp(n_test: int = 32):
    """An MLP (64-32-10) trained by scikit-learn on digits (8x8x1 in [0, 1]) and test images."""
    x, y, ws, bs = _trained_mlp()
    params = {"w": [jnp.asarray(w) for w in ws], "b": [jnp.asarray(b) for b in bs]}
    xt, yt = x[1200:1200 + n_test], y[1200:1200 + n_test]
    assert np.mean(np.argmax(mlp_apply(params, xt), -1) == yt) > 0.85
    return mlp_apply, params, jnp.asarray(xt), jnp.asarray(yt)


def linear_apply(p, xb):
    return xb.reshape(xb.shape[0], -1) @ p[0] + p[1]


def affine_binary(b: int = 8, seed: int = 0):
    """Two-class affine model z = [0, w.x + c] on 4x4x1 images in [0.3, 0.7].

    Returns (apply_fn, params, x, y, f, w): ``f = w.x + c`` per example, so the exact minimal
    Lp distance to the boundary is ``|f| / ||w||_q`` (q the dual norm) when the box allows it.
    """
    rng = np.random.default_rng(seed)
    n = 16
    w = rng.normal(size=n).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=(b, 4, 4, 1)).astype(np.float32)
    f = x.reshape(b, -1) @ w
    c = -np.float32(np.mean(f))
    f = (f + c).astype(np.float64)
    W = np.zeros((n, 2), np.float32)
    W[:, 1] = w
    params = (jnp.asarray(W), jnp.asarray(np.array([0.0, c], np.float32)))
    y = jnp.asarray((f > 0).astype(np.int32))
    return linear_apply, params, jnp.asarray(x), y, f, w.astype(np.float64)


def predict(apply_fn, params, x):
    return np.asarray(jnp.argmax(apply_fn(params, x), -1))


def no_grad(apply_fn):
    """``apply_fn`` whose backward pass raises: a score-based attack must never differentiate."""

    @jax.custom_vjp
    def f(p, x):
        return apply_fn(p, x)

    def bwd(res, g):
        raise AssertionError("a score-based attack asked for a gradient of the model")

    f.defvjp(lambda p, x: (f(p, x), None), bwd)
    return f


def counting(apply_fn, log):
    """``apply_fn`` that appends the number of images of every call to ``log`` (a list)."""

    def f(p, xb):
        jax.debug.callback(lambda n: log.append(int(n)), jnp.int32(xb.shape[0]))
        return apply_fn(p, xb)

    return f
