"""Sparse intermediate bounds (auto_LiRPA's; ``crown`` module docstring): eager CROWN /
Fast-Lin / alpha-CROWN bound only the ReLU neurons IBP finds unstable. Against the dense
passes (``sparse=False``) on small random CNNs, the edge cases (every neuron stable, every
neuron unstable), the compile cache and auto_LiRPA's fixture."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.certify import api
from robustjax.certify.crown import AlphaCrownConfig
from test_certify_lirpa import FIXTURE, _net
from tests.compile_events import count_compiles

DN = ("NHWC", "HWIO", "NHWC")


def _cnn(seed, pool=False):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    params = {"c1": jax.random.normal(k[0], (3, 3, 1, 4)) * 0.6,
              "b1": jax.random.normal(k[1], (4,)) * 0.1,
              "c2": jax.random.normal(k[2], (3, 3, 4, 6)) * 0.3,
              "d1": jax.random.normal(k[3], ((4 if pool else 8) ** 2 * 6, 16)) * 0.2,
              "d2": jax.random.normal(k[4], (16, 5)) * 0.3}

    def apply_fn(p, x):
        h = jnp.maximum(jax.lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME",
                                                     dimension_numbers=DN) + p["b1"], 0.0)
        h = jnp.maximum(jax.lax.conv_general_dilated(h, p["c2"], (1, 1), "SAME",
                                                     dimension_numbers=DN), 0.0)
        if pool:
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                      "VALID")
        h = jnp.maximum(h.reshape((h.shape[0], -1)) @ p["d1"], 0.0)
        return h @ p["d2"]

    return apply_fn, params


def _margins(apply_fn, params, x, y, eps, key, n=128):
    """Margins f_y - f_j at sampled points of the ball (corners and uniform)."""
    corners = jnp.sign(jax.random.normal(key, (n // 2, *x.shape)))
    uniform = jax.random.uniform(jax.random.fold_in(key, 1), (n // 2, *x.shape),
                                 minval=-1, maxval=1)
    xs = jnp.clip(x[None] + eps * jnp.concatenate([corners, uniform]), 0, 1)
    logits = jax.vmap(lambda a: apply_fn(params, a))(xs)
    return jnp.einsum("bjk,nbk->nbj", api.margin_spec(y, logits.shape[-1]), logits)


@pytest.mark.parametrize("seed,pool,method", [(0, False, "crown"), (1, True, "crown"),
                                              (2, False, "fastlin"), (3, True, "fastlin")])
def test_sparse_as_tight_as_dense_and_sound(seed, pool, method):
    apply_fn, params = _cnn(seed, pool)
    x = jax.random.uniform(jax.random.PRNGKey(100 + seed), (6, 8, 8, 1))
    y = jnp.argmax(apply_fn(params, x), -1)
    eps = 0.03
    spec = api.margin_spec(y, 5)
    rows = api._sparse_rows(apply_fn, params, x, eps, method, "linf", 4, AlphaCrownConfig())
    assert rows and any(0 < k < 8 * 8 * 6 for _, k in rows)  # sparse and not trivial
    sparse = api.bounds(apply_fn, params, x, eps, method, spec=spec)
    dense = api.bounds(apply_fn, params, x, eps, method, spec=spec, sparse=False)
    assert jnp.all(sparse[0] >= dense[0] - 1e-5)
    assert jnp.all(sparse[1] <= dense[1] + 1e-5)
    margins = _margins(apply_fn, params, x, y, eps, jax.random.PRNGKey(seed))
    assert jnp.all(margins >= sparse[0][None] - 1e-5)
    assert jnp.all(margins <= sparse[1][None] + 1e-5)


def test_every_neuron_stable():
    apply_fn, params = _cnn(0)
    x = jax.random.uniform(jax.random.PRNGKey(7), (4, 8, 8, 1))
    rows = api._sparse_rows(apply_fn, params, x, 0.0, "crown", "linf", 4, AlphaCrownConfig())
    assert rows and all(k == 0 for _, k in rows)  # no backward pass at all
    sparse = api.bounds(apply_fn, params, x, 0.0, "crown")
    dense = api.bounds(apply_fn, params, x, 0.0, "crown", sparse=False)
    np.testing.assert_allclose(sparse[0], dense[0], atol=1e-5)
    np.testing.assert_allclose(sparse[0], apply_fn(params, x), atol=1e-4)


def test_every_neuron_unstable():
    # x in the whole box [0, 1]: x - 0.5 in [-0.5, 0.5], its ReLU in [0, 0.5], minus 0.25:
    # every neuron of the second ReLU input is unstable, so its rows are the whole node.
    d = 6
    params = {"w": jnp.eye(d), "v": jnp.eye(d) + 0.1, "out": jnp.ones((d, 3))}

    def apply_fn(p, x):
        h = jnp.maximum(x.reshape((x.shape[0], -1)) @ p["w"] - 0.5, 0.0)
        h = jnp.maximum(h @ p["v"] - 0.25 - 0.05 * d, 0.0)
        return h @ p["out"]

    x = jnp.full((2, 1, d, 1), 0.5)
    rows = api._sparse_rows(apply_fn, params, x, 0.5, "crown", "linf", 2, AlphaCrownConfig())
    assert (d,) in {(k,) for _, k in rows}
    sparse = api.bounds(apply_fn, params, x, 0.5, "crown")
    dense = api.bounds(apply_fn, params, x, 0.5, "crown", sparse=False)
    np.testing.assert_allclose(sparse[0], dense[0], atol=1e-6)
    np.testing.assert_allclose(sparse[1], dense[1], atol=1e-6)


def test_new_data_in_the_same_bucket_does_not_recompile():
    apply_fn, params = _cnn(4)
    x1 = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 1))
    x2 = jnp.clip(x1 + 1e-4 * jax.random.normal(jax.random.PRNGKey(2), x1.shape), 0, 1)
    rows = [api._sparse_rows(apply_fn, params, a, 0.03, "crown", "linf", 4,
                             AlphaCrownConfig()) for a in (x1, x2)]
    assert rows[0] == rows[1]
    jax.block_until_ready(api.bounds(apply_fn, params, x1, 0.03, "crown"))
    with count_compiles() as again:
        jax.block_until_ready(api.bounds(apply_fn, params, x2, 0.03, "crown"))
    assert len(again) == 0


def test_alpha_crown_sparse():
    apply_fn, params = _cnn(5, pool=True)
    x = jax.random.uniform(jax.random.PRNGKey(3), (4, 8, 8, 1))
    y = jnp.argmax(apply_fn(params, x), -1)
    eps, spec = 0.03, api.margin_spec(y, 5)
    crown = api.bounds(apply_fn, params, x, eps, "crown", spec=spec, upper=False)[0]
    alpha = api.bounds(apply_fn, params, x, eps, "alpha_crown", spec=spec, upper=False)[0]
    dense = api.bounds(apply_fn, params, x, eps, "alpha_crown", spec=spec, upper=False,
                       sparse=False)[0]
    assert jnp.all(alpha >= crown - 1e-6)
    assert jnp.all(alpha >= dense - 1e-5)
    assert jnp.all(_margins(apply_fn, params, x, y, eps, jax.random.PRNGKey(5))
                   >= alpha[None] - 1e-5)
    flags = api.certify(apply_fn, params, x, y, eps, "alpha_crown")
    assert jnp.array_equal(flags, api.margin_condition(alpha, y))


@pytest.mark.parametrize("arch", ["tiny", "tiny_bn"])
def test_sparse_equals_auto_lirpa(arch):
    # auto_LiRPA's own bounds are sparse: the same fixture and tolerance as the jitted
    # (dense) test_certify_lirpa.
    apply_fn, params = _net(arch)
    x, y = jnp.asarray(FIXTURE[f"{arch}/x"]), jnp.asarray(FIXTURE[f"{arch}/y"])
    eps = float(FIXTURE[f"{arch}/eps"])
    for method in ("crown", "fastlin"):
        lower = api.bounds(apply_fn, params, x, eps, method, spec=api.margin_spec(y, 5),
                           chunk_size=2, upper=False)[0]
        ref = FIXTURE[f"{arch}/lirpa_{method}"]
        np.testing.assert_allclose(lower, ref, atol=1e-5 * max(1.0, np.abs(ref).max()),
                                   err_msg=method)
