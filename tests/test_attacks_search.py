"""robustjax.attacks.search and .wrappers: sweeps, restarts, min-eps, EOT, BPDA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import gradient as G
from robustjax.attacks import search as S
from robustjax.attacks import wrappers as W
from robustjax.models.registry import create


@pytest.fixture(scope="module")
def mlp():
    model = create("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(32,),
                   key=jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 1))
    y = jnp.argmax(model(x), -1).astype(jnp.int32)
    return model, x, y


def binary_apply(params, x):
    s = x.reshape(x.shape[0], -1) @ params["w"] + params["c"]
    return jnp.stack([jnp.zeros_like(s), s], axis=-1)


def test_min_eps_bisection_finds_the_linf_boundary_distance():
    rng = np.random.default_rng(0)
    w = rng.normal(size=16).astype(np.float32)
    x = rng.uniform(0.45, 0.55, (12, 4, 4, 1)).astype(np.float32)
    c = -float(np.median(x.reshape(12, -1) @ w))
    params = {"w": jnp.asarray(w), "c": jnp.float32(c)}
    s = x.reshape(12, -1) @ w + c
    y = jnp.asarray((s > 0).astype(np.int32))
    dist = np.abs(s) / np.abs(w).sum()  # exact Linf distance to the hyperplane
    assert dist.max() < 0.05  # so the [0, 1] box never binds
    eps_max, steps = 0.1, 14
    eps_min, r = jax.jit(S.min_eps, static_argnums=(0, 1, 8))(
        G.fgsm, binary_apply, params, jnp.asarray(x), y, jax.random.PRNGKey(0),
        G.FGSMConfig(eps=0.1), eps_max, steps)
    np.testing.assert_allclose(eps_min, dist, atol=eps_max / 2 ** steps + 1e-6)
    assert bool(r.success.all())
    np.testing.assert_allclose(r.norm, eps_min, rtol=1e-5)


def test_min_eps_reports_inf_when_attack_fails(mlp):
    model, x, y = mlp
    eps_min, _ = S.min_eps(G.fgsm, model.apply_fn, model.params, x, y, jax.random.PRNGKey(0),
                           G.FGSMConfig(), 1e-4, 3)
    assert bool(jnp.all(jnp.isinf(eps_min)))


def test_sweep_strategies_agree_and_are_monotone(mlp):
    model, x, y = mlp
    sweep = jax.jit(S.eps_sweep, static_argnums=(0, 1), static_argnames="strategy")
    eps = jnp.array([0.0, 0.01, 0.03, 0.1])
    key = jax.random.PRNGKey(0)
    fg = {s: sweep(G.fgsm, model.apply_fn, model.params, x, y, key, G.FGSMConfig(), eps,
                   strategy=s) for s in ("shared", "unroll", "vmap")}
    for s in ("unroll", "vmap"):
        np.testing.assert_allclose(fg[s].x_adv, fg["shared"].x_adv, atol=1e-6)
    single = G.fgsm(model.apply_fn, model.params, x, y, None, G.FGSMConfig(eps=0.03))
    np.testing.assert_allclose(fg["shared"].x_adv[2], single.x_adv, atol=1e-6)

    cfg = G.PGDConfig(eps=0.04, step_size=0.01, steps=5)
    pg = {s: sweep(G.pgd, model.apply_fn, model.params, x, y, key, cfg, eps, strategy=s)
          for s in ("unroll", "map")}
    looped = S.eps_sweep(G.pgd, model.apply_fn, model.params, x, y, key, cfg, eps, "loop")
    np.testing.assert_allclose(looped.x_adv, pg["unroll"].x_adv, atol=1e-5)
    np.testing.assert_allclose(pg["unroll"].x_adv, pg["map"].x_adv, atol=1e-5)
    one = G.pgd(model.apply_fn, model.params, x, y, key, S.with_eps(cfg, 0.1))
    np.testing.assert_allclose(pg["unroll"].x_adv[3], one.x_adv, atol=1e-6)
    robust = 1 - np.asarray(pg["unroll"].success.mean(1))
    assert robust[0] == 1.0 and np.all(np.diff(robust) <= 0) and robust[-1] < 1.0
    with pytest.raises(ValueError, match="only for gradient.fgsm"):
        S.eps_sweep(G.pgd, model.apply_fn, model.params, x, y, key, cfg, eps, "shared")


def test_restarts_keep_best_and_stop_early(mlp):
    model, x, y = mlp
    run = jax.jit(S.restarts, static_argnums=(0, 1, 7))
    cfg = G.PGDConfig(eps=0.015, step_size=0.005, steps=3)
    key = jax.random.PRNGKey(0)
    single = [G.pgd(model.apply_fn, model.params, x, y, jax.random.fold_in(key, i), cfg)
              for i in range(4)]
    r = run(G.pgd, model.apply_fn, model.params, x, y, key, cfg, 4)
    any_success = np.any([np.asarray(s.success) for s in single], axis=0)
    np.testing.assert_array_equal(r.success, any_success)
    assert np.all(r.queries == 4 * 3)
    best_loss = np.max([np.asarray(s.loss) for s in single], axis=0)
    np.testing.assert_allclose(np.asarray(r.loss)[~any_success], best_loss[~any_success],
                               rtol=1e-6)
    # all broken by the first run: later restarts are skipped and cost no queries
    big = G.PGDConfig(eps=0.5, step_size=0.1, steps=3)
    r = run(G.pgd, model.apply_fn, model.params, x, y, key, big, 4)
    assert bool(r.success.all()) and np.all(r.queries == 3)


def test_bpda_passes_gradients_through_a_quantiser(mlp):
    model, x, y = mlp
    quant = lambda z: jnp.round(z * 4) / 4  # noqa: E731
    plain = lambda p, z: model.apply_fn(p, quant(z))  # noqa: E731
    defended = W.bpda_model(model.apply_fn, quant)
    np.testing.assert_allclose(defended(model.params, x), plain(model.params, x))

    def ce_sum(f):
        return lambda z: -jnp.sum(jax.nn.log_softmax(f(model.params, z))[jnp.arange(16), y])

    assert float(jnp.abs(jax.grad(ce_sum(plain))(x)).max()) == 0.0  # obfuscated gradient
    g_bpda = jax.grad(ce_sum(defended))(x)
    g_ref = jax.grad(lambda z: ce_sum(lambda p, u: model.apply_fn(p, u))(quant(x) + z - x))(x)
    np.testing.assert_allclose(g_bpda, g_ref, rtol=1e-5, atol=1e-7)  # identity backward
    y_q = jnp.argmax(defended(model.params, x), -1).astype(jnp.int32)
    cfg = G.PGDConfig(eps=0.3, step_size=0.05, steps=10, random_start=False)
    broken = G.pgd(defended, model.params, x, y_q, jax.random.PRNGKey(0), cfg)
    blocked = G.pgd(plain, model.params, x, y_q, jax.random.PRNGKey(0), cfg)
    assert float(blocked.success.mean()) == 0.0 and float(broken.success.mean()) >= 0.5


def test_eot_averages_probabilities_over_draws(mlp):
    model, x, y = mlp

    def noise(k, z):
        return jnp.clip(z + 0.1 * jax.random.normal(k, z.shape), 0, 1)

    f = jax.jit(W.eot(model.apply_fn, noise, num_samples=4))
    p = W.EOTParams(model.params, jax.random.PRNGKey(3))
    out = f(p, x)
    np.testing.assert_allclose(out, f(p, x))  # pure: same input, same draws
    assert not np.allclose(out, f(p, x * 0.99))  # a new iterate gets new draws
    key = jax.random.fold_in(p.key, W._input_seed(x))
    probs = [jax.nn.softmax(model.apply_fn(model.params, noise(k, x)))
             for k in jax.random.split(key, 4)]
    np.testing.assert_allclose(jnp.exp(out), jnp.mean(jnp.stack(probs), 0), rtol=1e-5, atol=1e-6)
    identity = W.eot(model.apply_fn, lambda k, z: z, num_samples=2)
    np.testing.assert_allclose(identity(p, x), jax.nn.log_softmax(model(x)), atol=1e-5)
    r = jax.jit(G.pgd, static_argnums=0)(f, p, x, y, jax.random.PRNGKey(0),
                                         G.PGDConfig(eps=0.05, steps=3))
    assert float(r.success.mean()) > 0.0


def test_report_section_quick(tmp_path):
    from robustjax.report import attacks as report
    from robustjax.report.base import ReportContext

    model = create("cnn", num_classes=10, input_shape=(8, 8, 1), channels=(4, 8), hidden=16,
                   key=jax.random.PRNGKey(0))
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (20, 8, 8, 1)))
    y = np.asarray(jnp.argmax(model(jnp.asarray(x)), -1)).astype(np.int32)
    y[:4] = (y[:4] + 1) % 10  # four clean mistakes
    ctx = ReportContext(model, x, y, jax.random.PRNGKey(0), tmp_path, quick=True)
    sec = report.section(ctx)
    d = sec.data
    assert d["n"] == 16 and d["clean"] == pytest.approx(12 / 16)
    assert set(d["robust_accuracy"]) >= {"FGSM", "PGD-5", "APGD-CE (10 it.)"}
    for name, vals in d["robust_accuracy"].items():
        assert all(v <= d["clean"] for v in vals), name
    assert d["robust_accuracy"]["PGD-5"][-1] <= d["robust_accuracy"]["PGD-5"][0]
    assert "| clean |" in sec.markdown and "eps=0.3" in sec.markdown
    assert (tmp_path / sec.figures[0]).exists()
