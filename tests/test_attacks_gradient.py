"""robustjax.attacks.gradient: closed forms on a linear model, invariants on a tiny MLP."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import _core, gradient as G
from robustjax.models.registry import create

K = 10
EPS = {"linf": 0.05, "l2": 0.5, "l1": 3.0}


def linear_apply(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(64, K)).astype(np.float32)),
              "b": jnp.asarray(rng.normal(size=(K,)).astype(np.float32))}
    x = jnp.asarray(rng.uniform(0.0, 1.0, (8, 8, 8, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, K, 8).astype(np.int32))
    return params, x, y


@pytest.fixture(scope="module")
def mlp():
    model = create("mlp", num_classes=K, input_shape=(8, 8, 1), hidden=(32,),
                   key=jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (32, 8, 8, 1))
    y = jnp.argmax(model(x), -1).astype(jnp.int32)  # clean accuracy 100% by construction
    return model, x, y


def _numpy_fgsm(params, x, y, eps, norm):
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    xf = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    z = xf @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), np.asarray(y)] -= 1.0
    g = p @ w.T  # d CE / d x
    if norm == "linf":
        d = np.sign(g)
    elif norm == "l2":
        d = g / np.linalg.norm(g, axis=1, keepdims=True)
    else:
        d = np.zeros_like(g)
        i = np.argmax(np.abs(g), 1)
        d[np.arange(len(i)), i] = np.sign(g[np.arange(len(i)), i])
    return np.clip(xf + eps * d, 0, 1).reshape(x.shape)


@pytest.mark.parametrize("norm", _core.NORMS)
def test_fgsm_fgm_closed_form_on_linear_model(linear, norm):
    params, x, y = linear
    r = G.fgsm(linear_apply, params, x, y, None, G.FGSMConfig(eps=EPS[norm], norm=norm))
    np.testing.assert_allclose(r.x_adv, _numpy_fgsm(params, x, y, EPS[norm], norm), atol=1e-5)
    assert r.queries.dtype == jnp.int32 and np.all(r.queries == 1)


# One compiled program per attack family, shared by the invariant tests below.
_jit = functools.partial(jax.jit, static_argnums=0)
ATTACKS = {
    "fgsm": (_jit(G.fgsm), lambda e, n: G.FGSMConfig(eps=e, norm=n)),
    "pgd": (_jit(G.pgd), lambda e, n: G.PGDConfig(eps=e, step_size=e / 4, norm=n, steps=10,
                                                  l1_sparsity=0.9)),
    "bim": (_jit(G.bim), lambda e, n: G.BIMConfig(eps=e, step_size=e / 5, norm=n)),
    "mifgsm": (_jit(G.mifgsm), lambda e, n: G.MIFGSMConfig(eps=e, norm=n)),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_invariants_every_attack_and_norm(mlp, name):
    model, x, y = mlp
    fn, make = ATTACKS[name]
    for norm in _core.NORMS:
        if name == "mifgsm" and norm == "l1":
            with pytest.raises(ValueError, match="valid norms: linf, l2"):
                make(1.0, norm)
            continue
        eps = EPS[norm]
        results = [fn(model.apply_fn, model.params, x, y, jax.random.PRNGKey(2), make(e, norm))
                   for e in (0.0, eps / 2, eps)]
        for e, r in zip((0.0, eps / 2, eps), results):
            assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
            assert float(r.norm.max()) <= e * (1 + 1e-5) + 1e-7, (norm, e)
            np.testing.assert_allclose(r.norm, _core.lp_norm(r.x_adv - x, norm), rtol=1e-6)
            pred = jnp.argmax(model(r.x_adv), -1)
            np.testing.assert_array_equal(r.success, pred != y)
        robust = [1.0 - float(r.success.mean()) for r in results]
        assert robust[0] == 1.0  # eps = 0 leaves every (correctly classified) input alone
        assert robust[2] <= robust[1] <= robust[0], (norm, robust)
        assert robust[2] < 1.0, (name, norm)  # the attack does something


def test_pgd_targeted_reaches_target(mlp):
    model, x, y = mlp
    target = (y + 3) % K
    cfg = G.PGDConfig(eps=0.5, step_size=0.05, steps=20, targeted=True)
    r = ATTACKS["pgd"][0](model.apply_fn, model.params, x, target, jax.random.PRNGKey(0), cfg)
    assert float(r.success.mean()) >= 0.9
    np.testing.assert_array_equal(r.success, jnp.argmax(model(r.x_adv), -1) == target)
    for loss in ("margin", "dlr"):
        cfg_l = dataclasses.replace(cfg, loss=loss)
        r = G.pgd(model.apply_fn, model.params, x, target, jax.random.PRNGKey(0), cfg_l)
        assert float(r.success.mean()) >= 0.9, loss


def test_pgd_matches_handwritten_loop_and_mifgsm_matches_paper(mlp):
    model, x, y = mlp
    eps, alpha, steps = 0.03, 0.01, 5
    key = jax.random.PRNGKey(7)
    r = G.pgd(model.apply_fn, model.params, x, y, key,
              G.PGDConfig(eps=eps, step_size=alpha, steps=steps, loop="fori"))

    def ce(z):
        return _core.cross_entropy(model(z), y).sum()

    xa = jnp.clip(x + jax.random.uniform(jax.random.split(key)[0], x.shape, minval=-eps,
                                         maxval=eps), 0, 1)
    for _ in range(steps):  # Madry et al.'s update written out
        xa = jnp.clip(jnp.clip(xa + alpha * jnp.sign(jax.grad(ce)(xa)), x - eps, x + eps), 0, 1)
    np.testing.assert_allclose(r.x_adv, xa, atol=1e-6)
    # the eager Python loop of compiled steps (CPU's fastest structure) gives the same result
    r_py = G.pgd(model.apply_fn, model.params, x, y, key,
                 G.PGDConfig(eps=eps, step_size=alpha, steps=steps, loop="python"))
    np.testing.assert_allclose(r_py.x_adv, xa, atol=1e-6)

    # Dong et al. 2018, Algorithm 1: g <- mu g + grad / ||grad||_1, x <- clip(x + a sign(g))
    r = G.mifgsm(model.apply_fn, model.params, x, y, None,
                 G.MIFGSMConfig(eps=eps, steps=steps, decay=1.0))
    xa, g = x, jnp.zeros_like(x)
    for _ in range(steps):
        grad = jax.grad(ce)(xa)
        g = g + grad / jnp.sum(jnp.abs(grad), axis=(1, 2, 3), keepdims=True)
        xa = jnp.clip(jnp.clip(xa + eps / steps * jnp.sign(g), x - eps, x + eps), 0, 1)
    np.testing.assert_allclose(r.x_adv, xa, atol=1e-6)
    assert np.all(r.queries == steps)


def test_one_trace_per_dataset_and_vmap_over_eps_and_models(mlp):
    model, x, y = mlp

    @jax.jit
    @chex.assert_max_traces(n=1)
    def attack(params, x, y, key, cfg):
        return G.pgd(model.apply_fn, params, x, y, key, cfg)

    cfg = G.PGDConfig(eps=0.02, step_size=0.005, steps=3)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    for i, eps in enumerate((0.01, 0.02, 0.04)):  # new data, new eps: no retrace
        attack(model.params, x[::-1] if i % 2 else x, y[::-1] if i % 2 else y, keys[i],
               dataclasses.replace(cfg, eps=eps, step_size=eps / 4))

    eps = jnp.array([0.01, 0.04])
    by_eps = jax.vmap(lambda e: G.pgd(model.apply_fn, model.params, x, y, keys[0],
                                      dataclasses.replace(cfg, eps=e, step_size=e / 4)))(eps)
    one = attack(model.params, x, y, keys[0], dataclasses.replace(cfg, eps=0.04, step_size=0.01))
    np.testing.assert_allclose(by_eps.x_adv[1], one.x_adv, atol=1e-6)

    other = create("mlp", num_classes=K, input_shape=(8, 8, 1), hidden=(32,),
                   key=jax.random.PRNGKey(5))
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), model.params, other.params)
    by_model = jax.vmap(lambda p: G.pgd(model.apply_fn, p, x, y, keys[0], cfg))(stacked)
    single = G.pgd(model.apply_fn, other.params, x, y, keys[0], cfg)
    np.testing.assert_allclose(by_model.x_adv[1], single.x_adv, atol=1e-6)


def test_config_errors_list_valid_names():
    with pytest.raises(ValueError, match="valid norms: linf, l2, l1"):
        G.PGDConfig(norm="l3")
    with pytest.raises(ValueError, match="valid losses"):
        G.FGSMConfig(loss="hinge")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        G.PGDConfig(eps=-0.1)


def test_eager_pgd_compiles_once_and_every_loop_structure_agrees(tiny_resnet):
    model = tiny_resnet
    x = jax.random.uniform(jax.random.PRNGKey(0), (4,) + tuple(model.spec.input_shape))
    y = jnp.argmax(model(x), -1).astype(jnp.int32)
    traces = []

    def apply_fn(params, z):
        traces.append(z.shape)
        return model.apply_fn(params, z)

    cfg = G.PGDConfig(eps=8 / 255, step_size=2 / 255, steps=3)
    key = jax.random.PRNGKey(1)
    auto = G.pgd(apply_fn, model.params, x, y, key, cfg)  # eager: compiled as one program
    n = len(traces)
    G.pgd(apply_fn, model.params, x[::-1], y[::-1], jax.random.PRNGKey(2),
          dataclasses.replace(cfg, eps=4 / 255, step_size=1 / 255))
    assert len(traces) == n  # new data, key and eps: no new trace
    for loop in ("python", "unroll", "fori"):
        r = G.pgd(apply_fn, model.params, x, y, key, dataclasses.replace(cfg, loop=loop))
        np.testing.assert_allclose(r.x_adv, auto.x_adv, atol=1e-6, err_msg=loop)
        np.testing.assert_array_equal(r.success, auto.success)
