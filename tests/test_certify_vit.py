"""CROWN through a tiny ViT block (LayerNorm, attention products, softmax, GELU) against
auto_LiRPA on the same weights (fixture from ``benchmarks/certify_lirpa_vit.py``; no PyTorch
here): the bounds hold on samples, and their mean width is at most auto_LiRPA's (x1.05)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.certify import api
from tests.compile_events import FAST_COMPILE

PATH = pathlib.Path(__file__).parent / "fixtures" / "certify_lirpa_vit.npz"
FIXTURE = np.load(PATH) if PATH.exists() else None
T, P = 4, 16


def _ln(z, g, b):
    d = z - jnp.mean(z, -1, keepdims=True)
    var = jnp.maximum(jnp.mean(d * d, -1, keepdims=True), 0.0)
    return d * jax.lax.rsqrt(var + 1e-5) * g + b


def block(w, x):
    """The ViT block of the fixture; ``x [b, T, P, 1]`` (an "image" of T tokens)."""
    x = x.reshape((x.shape[0], T, P))
    z = x @ w["embed"] + w["embed_b"] + w["pos"]
    n = _ln(z, w["ln1_g"], w["ln1_b"])
    q, k, v = n @ w["q"], n @ w["k"], n @ w["v"]
    s = jnp.einsum("btd,bsd->bts", q, k) / np.sqrt(q.shape[-1])
    z = z + jax.nn.softmax(s, axis=-1) @ v @ w["o"]
    z = z + jax.nn.gelu(z @ w["fc1"] + w["fc1_b"]) @ w["fc2"] + w["fc2_b"]
    return jnp.mean(z, 1) @ w["head"] + w["head_b"]


def test_vit_block_crown_vs_auto_lirpa():
    assert FIXTURE is not None, f"missing fixture {PATH}"
    w = {k[2:]: jnp.asarray(FIXTURE[k]) for k in FIXTURE.files if k.startswith("w_")}
    x = jnp.asarray(FIXTURE["x"])[..., None]
    eps = float(FIXTURE["eps"])
    np.testing.assert_allclose(block(w, x), FIXTURE["torch_logits"], atol=1e-5)
    run = jax.jit(lambda p, a: api.bounds(block, p, a, eps, "crown", chunk_size=4))
    # ~8k operations (one backward pass per relaxed node); XLA's cheapest CPU compile of them
    # takes a third of the default's time, and the bounds do not depend on it.
    lo, hi = run.lower(w, x).compile(compiler_options=FAST_COMPILE)(w, x)
    xs = jnp.clip(x[None] + jax.random.uniform(jax.random.PRNGKey(0), (256, *x.shape),
                                               minval=-eps, maxval=eps), 0, 1)
    ys = jax.vmap(lambda a: block(w, a))(xs)
    assert bool(jnp.all(ys >= lo - 1e-5)) and bool(jnp.all(ys <= hi + 1e-5))
    ref = FIXTURE["lirpa_crown_upper"] - FIXTURE["lirpa_crown_lower"]
    width = float(jnp.mean(hi - lo))
    assert np.isfinite(ref).all()
    assert width <= 1.05 * float(np.mean(ref)), (width, float(np.mean(ref)))
