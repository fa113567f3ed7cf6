"""Robust training: BatchNorm train mode, adversarial losses, schedules, averaging, early
stopping, distillation, AdvBN."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import attacks, data, models, train
from robustjax.train import adversarial, advbn, averaging, distillation, modes, schedules

KEY = jax.random.PRNGKey(0)


def _digits():
    x, y = data.load("digits", "train")
    xt, yt = data.load("digits", "test")
    return x, y, xt, yt


@functools.lru_cache(maxsize=1)
def _standard_digits_cnn():
    x, y, xt, yt = _digits()
    m = models.create("cnn", num_classes=10, input_shape=(8, 8, 1), channels=(8, 16), hidden=32,
                      kernel=3, stride=1)
    p, _ = train.fit(m.apply_fn, m.params, optax.adam(3e-3), x, y, epochs=6, batch_size=50,
                     key=KEY)
    return m, p


def _robust_acc(apply_fn, params, x, y, eps):
    cfg = attacks.PGDConfig(eps=eps, step_size=eps / 4, steps=10)
    r = attacks.pgd(apply_fn, params, jnp.asarray(x), jnp.asarray(y), jax.random.PRNGKey(7), cfg)
    return 1.0 - float(jnp.mean(r.success))


# ------------------------------------------------------------------------- BatchNorm modes


def test_batchnorm_statistics_update_in_train_mode_only(tiny_resnet):
    m = tiny_resnet
    assert m.train_apply_fn is not None
    rng = np.random.default_rng(0)
    x = rng.random((16, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 16).astype(np.int32)
    opt = optax.sgd(0.01)
    state = train.init_state(m.params, opt)
    step_train = jax.jit(functools.partial(train.train_step, apply_fn=m.apply_fn, optimizer=opt,
                                           train_apply_fn=m.train_apply_fn))
    step_eval = jax.jit(functools.partial(train.train_step, apply_fn=m.apply_fn, optimizer=opt))
    after_train, _ = step_train(state, x, y, KEY)
    after_eval, _ = step_eval(state, x, y, KEY)
    before = m.params["batch_stats"]["stem_bn"]["mean"]
    # eval mode carries the statistics unchanged; train mode moves them towards the batch's
    np.testing.assert_array_equal(after_eval.params["batch_stats"]["stem_bn"]["mean"], before)
    moved = after_train.params["batch_stats"]["stem_bn"]["mean"]
    assert float(jnp.max(jnp.abs(moved - before))) > 1e-4
    # flax momentum 0.9: new = 0.9 old + 0.1 batch mean of the stem conv's output
    feats = {}

    def grab(next_fun, args, kwargs, ctx):
        out = next_fun(*args, **kwargs)
        if ctx.module.path == ("stem_conv",):
            feats["h"] = out
        return out

    with nn.intercept_methods(grab):
        m.train_apply_fn(m.params, x)
    expected = 0.9 * before + 0.1 * jnp.mean(feats["h"], axis=(0, 1, 2))
    np.testing.assert_allclose(moved, expected, rtol=1e-4, atol=1e-6)


def test_train_mode_apply_chains_updates_like_consecutive_forward_passes(tiny_resnet):
    m = tiny_resnet
    rng = np.random.default_rng(1)
    x1 = jnp.asarray(rng.random((8, 32, 32, 3), dtype=np.float32))
    x2 = jnp.asarray(rng.random((8, 32, 32, 3), dtype=np.float32))
    fn = modes.TrainModeApply(m.apply_fn, m.train_apply_fn)
    fn(m.params, x1)
    fn(m.params, x2)
    got = fn.updated({"batch_stats": m.params["batch_stats"]})["batch_stats"]
    _, first = m.train_apply_fn(m.params, x1)
    _, second = m.train_apply_fn({**m.params, **first}, x2)
    chex.assert_trees_all_close(got, second["batch_stats"], rtol=1e-5, atol=1e-6)
    # eval mode and train mode differ on a fresh model (running stats are the init ones)
    assert not np.allclose(fn.eval(m.params, x1), fn(m.params, x1), atol=1e-3)


def test_fit_warns_when_batch_stats_would_be_frozen(tiny_resnet):
    rng = np.random.default_rng(2)
    x = rng.random((8, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 8).astype(np.int32)
    with pytest.warns(UserWarning, match="train_apply_fn"):
        train.fit(tiny_resnet.apply_fn, tiny_resnet.params, optax.sgd(0.01), x, y, epochs=1,
                  batch_size=8, key=KEY)


def test_plain_flax_module_with_batchnorm_gets_train_mode():
    class Net(nn.Module):  # what a user writes: no robustjax layers
        @nn.compact
        def __call__(self, x, features=False, train=False):
            h = nn.Conv(4, (3, 3))(x)
            h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
            h = jnp.mean(h, (1, 2))
            return h if features else nn.Dense(3)(h)

    module = Net()
    variables = module.init(KEY, jnp.zeros((1, 8, 8, 1)))
    m = models.wrap(module, variables, models.registry.ModelSpec("net", (8, 8, 1), 3))
    x = np.random.default_rng(3).random((16, 8, 8, 1), dtype=np.float32)
    y = (np.arange(16) % 3).astype(np.int32)
    loss = train.pgd_at_loss(train.PGDATConfig(eps=0.1, step_size=0.05, steps=2))
    new, _ = train.fit_model(m, optax.adam(1e-2), x, y, epochs=2, batch_size=8, key=KEY,
                             loss_fn=loss)
    old_mean = variables["batch_stats"]["BatchNorm_0"]["mean"]
    assert float(jnp.max(jnp.abs(new.params["batch_stats"]["BatchNorm_0"]["mean"] - old_mean))) > 0


# ------------------------------------------------------------------------ inner attacks


def test_pgd_at_inner_attack_equals_attacks_pgd():
    m, p = _standard_digits_cnn()
    _, _, xt, yt = _digits()
    x, y = jnp.asarray(xt[:32]), jnp.asarray(yt[:32])
    cfg = train.PGDATConfig(eps=0.1, step_size=0.02, steps=5)
    ours = adversarial.pgd_perturb(m.apply_fn, p, x, y, KEY, cfg, 0)
    ref = attacks.pgd(m.apply_fn, p, x, y, KEY,
                      attacks.PGDConfig(eps=0.1, step_size=0.02, steps=5)).x_adv
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_scheduled_step_count_equals_static_steps():
    m, p = _standard_digits_cnn()
    _, _, xt, yt = _digits()
    x, y = jnp.asarray(xt[:16]), jnp.asarray(yt[:16])
    static = train.PGDATConfig(eps=0.1, step_size=0.02, steps=3)
    scheduled = train.PGDATConfig(eps=0.1, step_size=0.02,
                                  steps=optax.piecewise_constant_schedule(1, {10: 3}))
    a = adversarial.pgd_perturb(m.apply_fn, p, x, y, KEY, static, 0)
    b = jax.jit(lambda s: adversarial.pgd_perturb(m.apply_fn, p, x, y, KEY, scheduled, s))(20)
    c = jax.jit(lambda s: adversarial.pgd_perturb(m.apply_fn, p, x, y, KEY, scheduled, s))(0)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert float(jnp.max(jnp.abs(a - c))) > 1e-3  # one step at step 0 is a different point
    # inside the eps ball and the box
    assert float(jnp.max(jnp.abs(b - x))) <= 0.1 + 1e-6
    assert float(b.min()) >= 0.0 and float(b.max()) <= 1.0


def test_one_pgd_at_epoch_raises_robust_accuracy():
    m, p = _standard_digits_cnn()
    x, y, xt, yt = _digits()
    eps = 0.2  # measured: robust 0.02 before, 0.22 after one PGD-AT epoch, 0.02 after standard
    before = _robust_acc(m.apply_fn, p, xt, yt, eps)
    loss = train.pgd_at_loss(train.PGDATConfig(eps=eps, step_size=eps / 4, steps=5))
    at, _ = train.fit(m.apply_fn, p, optax.adam(2e-3), x, y, epochs=1, batch_size=50, key=KEY,
                      loss_fn=loss)
    std, _ = train.fit(m.apply_fn, p, optax.adam(2e-3), x, y, epochs=1, batch_size=50, key=KEY)
    after = _robust_acc(m.apply_fn, at, xt, yt, eps)
    after_std = _robust_acc(m.apply_fn, std, xt, yt, eps)
    assert after > before + 0.12, (before, after)
    assert after > after_std + 0.12, (after_std, after)


# ------------------------------------------------------------------------------ objectives


def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_mart_objective_matches_the_reference_formula():
    rng = np.random.default_rng(4)
    logits, logits_adv = rng.normal(size=(2, 12, 5)).astype(np.float32) * 3
    y = rng.integers(0, 5, 12)
    beta = 6.0
    # MART's public code, in numpy: argsort top-2, boosted CE, weighted KL
    adv_p = _np_softmax(logits_adv.astype(np.float64))
    top2 = np.argsort(adv_p, 1)[:, -2:]
    new_y = np.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    ce = -np.log(adv_p[np.arange(12), y])
    boost = -np.log(1.0001 - adv_p[np.arange(12), new_y] + 1e-12)
    nat_p = _np_softmax(logits.astype(np.float64))
    kl = np.sum(nat_p * (np.log(nat_p) - np.log(adv_p + 1e-12)), 1)
    ref = np.mean(ce + boost) + beta * np.mean(kl * (1.0000001 - nat_p[np.arange(12), y]))
    got = adversarial.mart_objective(jnp.asarray(logits), jnp.asarray(logits_adv),
                                     jnp.asarray(y), beta)
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)


def test_trades_with_beta_zero_is_cross_entropy_and_kl_is_nonnegative():
    m, p = _standard_digits_cnn()
    _, _, xt, yt = _digits()
    x, y = jnp.asarray(xt[:32]), jnp.asarray(yt[:32])
    ce = train.cross_entropy_loss(m.apply_fn, p, x, y, KEY, 0)
    l0 = train.trades_loss(train.TRADESConfig(eps=0.1, step_size=0.02, steps=3, beta=0.0))
    l6 = train.trades_loss(train.TRADESConfig(eps=0.1, step_size=0.02, steps=3, beta=6.0))
    np.testing.assert_allclose(float(l0(m.apply_fn, p, x, y, KEY, 0)), float(ce), rtol=1e-6)
    assert float(l6(m.apply_fn, p, x, y, KEY, 0)) > float(ce)


def test_fast_at_step_is_fgsm_from_a_random_start():
    m, p = _standard_digits_cnn()
    _, _, xt, yt = _digits()
    x, y = jnp.asarray(xt[:16]), jnp.asarray(yt[:16])
    cfg = train.FastATConfig(eps=0.1)
    x_adv = adversarial.fast_perturb(m.apply_fn, p, x, y, KEY, cfg, 0)
    x0 = attacks._core.random_start(KEY, x, 0.1, "linf")
    g = jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(
        m.apply_fn(p, z), y).sum())(x0)
    ref = jnp.clip(jnp.clip(x0 + 0.125 * jnp.sign(g), x - 0.1, x + 0.1), 0, 1)
    np.testing.assert_allclose(x_adv, ref, atol=1e-6)


# ----------------------------------------------------------------------------- schedules


def test_schedules_hit_their_values_at_the_given_steps():
    ramp = schedules.eps_ramp(0.3, ramp_steps=100, warmup_steps=50)
    assert float(ramp(0)) == 0.0 and float(ramp(50)) == 0.0
    np.testing.assert_allclose(float(ramp(100)), 0.15, rtol=1e-6)
    np.testing.assert_allclose(float(ramp(150)), 0.3, rtol=1e-6)
    np.testing.assert_allclose(float(ramp(10_000)), 0.3, rtol=1e-6)
    pe = schedules.per_epoch([1.0, 3.0, 6.0], steps_per_epoch=10, epochs=3)
    assert [float(pe(s)) for s in (0, 9, 10, 29, 99)] == [1.0, 1.0, 3.0, 6.0, 6.0]


def test_schedule_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="3 values for 4 epochs"):
        schedules.per_epoch([1.0, 2.0, 3.0], steps_per_epoch=10, epochs=4)
    with pytest.raises(TypeError, match="per_epoch"):
        train.TRADESConfig(beta=[1.0, 6.0])
    with pytest.raises(ValueError, match="scalar"):
        train.PGDATConfig(eps=lambda step: jnp.zeros(3))
    with pytest.raises(TypeError, match="number or an optax schedule"):
        train.PGDATConfig(eps="0.3")
    with pytest.raises(TypeError, match="integer"):
        train.PGDATConfig(steps=2.5)
    with pytest.raises(ValueError, match=">= 0"):
        train.MARTConfig(eps=-0.1)
    with pytest.raises(ValueError, match="attack mode"):
        train.PGDATConfig(attack_mode="test")
    with pytest.raises(KeyError, match="pgd_at, trades, mart, fast_at"):
        train.recipe("madry")


def test_eps_schedule_inside_the_loss_follows_the_step():
    m, p = _standard_digits_cnn()
    _, _, xt, yt = _digits()
    x, y = jnp.asarray(xt[:16]), jnp.asarray(yt[:16])
    cfg = train.PGDATConfig(eps=schedules.eps_ramp(0.2, 10), step_size=0.05, steps=3)
    f = jax.jit(lambda s: adversarial.pgd_perturb(m.apply_fn, p, x, y, KEY, cfg, s))
    assert float(jnp.max(jnp.abs(f(0) - x))) == 0.0
    np.testing.assert_allclose(float(jnp.max(jnp.abs(f(5) - x))), 0.1, atol=1e-6)
    np.testing.assert_allclose(float(jnp.max(jnp.abs(f(50) - x))), 0.2, atol=1e-6)


# ------------------------------------------------------------------ optax chains, averaging


def test_a_users_optax_chain_passes_unchanged_and_equals_a_manual_loop():
    x, y, _, _ = _digits()
    x, y = x[:200], y[:200]
    m = models.create("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(16,))
    sched = optax.cosine_decay_schedule(0.05, 8)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(5e-4),
                      optax.sgd(sched, momentum=0.9))
    got, _ = train.fit(m.apply_fn, m.params, opt, x, y, epochs=2, batch_size=50, key=KEY)
    # the same steps by hand
    params, state = m.params, opt.init(m.params)
    for epoch in range(2):
        for xb, yb in data.batches(x, y, 50, shuffle_seed=epoch, drop_remainder=True):
            g = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
                m.apply_fn(q, xb), yb).mean())(params)
            u, state = opt.update(g, state, params)
            params = optax.apply_updates(params, u)
    chex.assert_trees_all_close(got, params, rtol=1e-5, atol=1e-6)


def test_parameter_ema_and_swa_match_their_definitions():
    p0 = {"w": jnp.zeros(3)}
    updates = [jnp.full(3, float(i + 1)) for i in range(6)]  # params: 1, 3, 6, 10, 15, 21
    ema = optax.chain(optax.identity(), averaging.parameter_ema(0.5, debias=False))
    s_ema = ema.init(p0)
    sw = averaging.swa(start=2, every=2)
    s_swa = sw.init(p0)
    p = p0
    trajectory = []
    for u in updates:
        upd = {"w": u}
        _, s_ema = ema.update(upd, s_ema, p)
        _, s_swa = sw.update(upd, s_swa, p)
        p = optax.apply_updates(p, upd)
        trajectory.append(float(p["w"][0]))
    ref = 0.0
    for v in trajectory:
        ref = 0.5 * ref + 0.5 * v
    np.testing.assert_allclose(averaging.averaged_params(s_ema)["w"], ref, rtol=1e-6)
    # swa samples steps 2, 4, 6 -> params 3, 10, 21
    np.testing.assert_allclose(averaging.averaged_params(s_swa)["w"], (3 + 10 + 21) / 3,
                               rtol=1e-6)
    # debiased EMA of a constant is that constant from the first step on
    ema_d = averaging.parameter_ema(0.9)
    s = ema_d.init({"w": jnp.ones(2)})
    _, s = ema_d.update({"w": jnp.zeros(2)}, s, {"w": jnp.ones(2)})
    np.testing.assert_allclose(averaging.averaged_params(s)["w"], 1.0, rtol=1e-6)
    assert averaging.averaged_params(optax.adam(1e-3).init(p0)) is None


def test_fit_evaluates_and_returns_the_average_when_the_chain_has_one():
    x, y, _, _ = _digits()
    m = models.create("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(16,))
    opt = optax.chain(optax.sgd(0.1), averaging.parameter_ema(0.9))
    got, _ = train.fit(m.apply_fn, m.params, opt, x[:100], y[:100], epochs=1, batch_size=50,
                       key=KEY)
    params, state = m.params, opt.init(m.params)
    for xb, yb in data.batches(x[:100], y[:100], 50, shuffle_seed=0, drop_remainder=True):
        g = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
            m.apply_fn(q, xb), yb).mean())(params)
        u, state = opt.update(g, state, params)
        params = optax.apply_updates(params, u)
    chex.assert_trees_all_close(got, averaging.averaged_params(state), rtol=1e-5, atol=1e-7)
    assert not np.allclose(got["params"]["head"]["kernel"], params["params"]["head"]["kernel"])


def test_early_stopping_keeps_the_best_epoch_and_stops_on_patience():
    x, y, _, _ = _digits()
    m = models.create("mlp", num_classes=10, input_shape=(8, 8, 1), hidden=(16,))
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.9, 0.95])
    seen = []

    def eval_fn(params):
        seen.append(params)
        return next(scores)

    best, hist = train.fit(m.apply_fn, m.params, optax.sgd(0.05), x[:100], y[:100], epochs=6,
                           batch_size=50, key=KEY, eval_fn=eval_fn, keep_best=True, patience=2)
    assert hist["eval_metric"] == [0.1, 0.5, 0.3, 0.2]  # stopped after 2 epochs without gain
    assert hist["best_epoch"] == 1
    chex.assert_trees_all_close(best, seen[1])
    with pytest.raises(ValueError, match="eval_fn"):
        train.fit(m.apply_fn, m.params, optax.sgd(0.05), x[:100], y[:100], epochs=1,
                  batch_size=50, key=KEY, keep_best=True)


def test_robust_accuracy_fn_is_pgd_accuracy():
    m, p = _standard_digits_cnn()
    _, _, xt, yt = _digits()
    cfg = attacks.PGDConfig(eps=0.1, step_size=0.025, steps=10)
    fn = train.robust_accuracy_fn(m.apply_fn, xt[:64], yt[:64], cfg, jax.random.PRNGKey(7),
                                  batch_size=64)
    r = attacks.pgd(m.apply_fn, p, jnp.asarray(xt[:64]), jnp.asarray(yt[:64]),
                    jax.random.fold_in(jax.random.PRNGKey(7), 0), cfg)
    assert fn(p) == pytest.approx(1.0 - float(jnp.mean(r.success)))


# ---------------------------------------------------------------------------- distillation


def test_distillation_losses_reduce_to_their_closed_forms():
    m, p = _standard_digits_cnn()
    _, _, xt, yt = _digits()
    x, y = jnp.asarray(xt[:32]), jnp.asarray(yt[:32])
    ce = float(train.cross_entropy_loss(m.apply_fn, p, x, y, KEY, 0))
    t1 = distillation.temperature_loss(1.0)(m.apply_fn, p, x, y, KEY, 0)
    np.testing.assert_allclose(float(t1), ce, rtol=1e-6)
    # a student equal to its teacher: soft CE = the teacher's entropy at T
    T = 20.0
    dd = distillation.defensive_distillation_loss(m.apply_fn, p, T)(m.apply_fn, p, x, y, KEY, 0)
    q = jax.nn.softmax(m.apply_fn(p, x) / T)
    np.testing.assert_allclose(float(dd), float(jnp.mean(-jnp.sum(q * jnp.log(q), -1))),
                               rtol=1e-5)
    # RSLAD and ARD at eps 0 with student == teacher: KL terms vanish
    rs = distillation.rslad_loss(m.apply_fn, p, train.RSLADConfig(eps=0.0, steps=2))
    assert abs(float(rs(m.apply_fn, p, x, y, KEY, 0))) < 1e-3
    ard0 = distillation.ard_loss(m.apply_fn, p, train.ARDConfig(alpha=0.0, eps=0.1, steps=2,
                                                                 step_size=0.05))
    np.testing.assert_allclose(float(ard0(m.apply_fn, p, x, y, KEY, 0)), ce, rtol=1e-6)


def test_defensive_distillation_student_learns_from_the_teacher():
    m, p = _standard_digits_cnn()
    x, y, xt, yt = _digits()
    student = models.create("cnn", num_classes=10, input_shape=(8, 8, 1), channels=(8, 16),
                            hidden=32, kernel=3, stride=1, key=jax.random.PRNGKey(5))
    loss = distillation.defensive_distillation_loss(m.apply_fn, p, temperature=20.0)
    sp, _ = train.fit(student.apply_fn, student.params, optax.adam(3e-3), x, y, epochs=4,
                      batch_size=50, key=KEY, loss_fn=loss)
    assert train.accuracy(student.apply_fn, sp, xt, yt) > 0.8


# ------------------------------------------------------------------------------------ AdvBN


def test_advbn_perturbation_closed_form_and_identity():
    h = jnp.asarray(np.random.default_rng(5).random((2, 4, 4, 3), dtype=np.float32))
    mu = h.mean((1, 2), keepdims=True)
    m = jnp.asarray([1.0, 0.5, 2.0])
    s = jnp.asarray([1.0, 2.0, 0.0])
    out = advbn.perturb_statistics(h, m, s, relu=False)
    np.testing.assert_allclose(out.mean((1, 2)), (mu * m).reshape(2, 3), rtol=1e-5)
    np.testing.assert_allclose(out.std((1, 2)), (h.std((1, 2)) * s), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(advbn.perturb_statistics(h, jnp.ones(3), jnp.ones(3), True), h,
                               atol=1e-6)


def test_advbn_loss_on_a_resnet(tiny_resnet):
    m = tiny_resnet
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.random((8, 32, 32, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, 8).astype(np.int32))
    ce = float(train.cross_entropy_loss(m.apply_fn, m.params, x, y, KEY, 0))
    zero = train.advbn_loss(train.AdvBNConfig(layer="layer1_0", tau=0.0))
    np.testing.assert_allclose(float(zero(m.apply_fn, m.params, x, y, KEY, 0)), 2 * ce,
                               rtol=1e-5)
    adv = train.advbn_loss(train.AdvBNConfig(layer="layer1_0"))
    assert float(adv(m.apply_fn, m.params, x, y, KEY, 0)) > 2 * ce
    with pytest.raises(ValueError, match="not found"):
        train.advbn_loss(train.AdvBNConfig(layer="layer9_9"))(m.apply_fn, m.params, x, y,
                                                               KEY, 0)
    # trains in train mode (BatchNorm statistics move)
    new, _ = train.fit_model(m, optax.sgd(0.01), np.asarray(x), np.asarray(y), epochs=1,
                             batch_size=8, key=KEY, loss_fn=adv)
    assert not np.allclose(new.params["batch_stats"]["stem_bn"]["mean"],
                           m.params["batch_stats"]["stem_bn"]["mean"])


def test_certified_training_moved_with_the_old_name_kept():
    from robustjax.certify import training as old
    from robustjax.train import certified

    assert old.certified_loss is certified.certified_loss is train.certified_loss
