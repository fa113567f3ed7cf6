"""Transfer attacks: DI / TI boosters, ensembles, surrogate -> victim evaluation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustjax.attacks import transfer as T
from robustjax.attacks.gradient import MIFGSMConfig, mifgsm
from robustjax.models import create


def _bilinear_reference(img, side):
    """PyTorch's bilinear resize (align_corners=False, no antialias) of one HWC image, numpy."""
    n = img.shape[0]
    src = np.maximum((np.arange(side) + 0.5) * n / side - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = src - i0
    rows = img[i0] * (1 - lam)[:, None, None] + img[i1] * lam[:, None, None]
    return rows[:, i0] * (1 - lam)[None, :, None] + rows[:, i1] * lam[None, :, None]


@pytest.fixture(scope="module")
def tiny():
    model = create("cnn", key=jax.random.PRNGKey(3), input_shape=(12, 12, 3),
                   channels=(4, 8), hidden=16)
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 12, 12, 3))
    y = jnp.argmax(model.apply_fn(model.params, x), -1)
    return model, x, y


@pytest.mark.parametrize("side,top,left", [(10, 0, 1), (11, 0, 0), (9, 2, 1)])
def test_resize_and_pad_matches_pytorch_bilinear(side, top, left):
    x = np.random.default_rng(0).random((2, 12, 12, 3), np.float32)
    out = np.asarray(T.resize_and_pad(jnp.asarray(x), side, top, left, 12))
    for b in range(2):
        want = np.zeros((12, 12, 3), np.float32)
        want[top:top + side, left:left + side] = _bilinear_reference(x[b], side)
        np.testing.assert_allclose(out[b], want, atol=2e-6)


def test_input_diversity_ranges_and_enlarging_canvas():
    x = jnp.ones((1, 20, 20, 1))
    sides = set()
    di = jax.jit(T.input_diversity, static_argnums=2)
    for i in range(40):
        out = np.asarray(di(jax.random.PRNGKey(i), x, 0.9))[0, ..., 0]
        assert out.shape == (20, 20)
        side = int(round(out.sum() ** 0.5))
        assert 18 <= side < 20 and out[out > 0].size == side * side
        sides.add(side)
    assert sides == {18, 19}
    big = T.input_diversity(jax.random.PRNGKey(0), x, 1.1)
    assert big.shape == (1, 22, 22, 1)  # the paper's form: enlarge and pad (299 -> 330)
    with pytest.raises(ValueError, match="square"):
        T.input_diversity(jax.random.PRNGKey(0), jnp.ones((1, 20, 21, 1)), 0.9)
    with pytest.raises(ValueError, match="no size range"):
        T.input_diversity(jax.random.PRNGKey(0), jnp.ones((1, 5, 5, 1)), 1.0)


def test_gaussian_kernel_and_smoothing_match_scipy():
    from scipy import ndimage, stats

    k = T.gaussian_kernel(7, 3.0)
    k1 = stats.norm.pdf(np.linspace(-3, 3, 7))
    np.testing.assert_allclose(k, np.outer(k1, k1) / np.outer(k1, k1).sum(), rtol=1e-6)
    g = np.random.default_rng(1).normal(size=(2, 9, 9, 3)).astype(np.float32)
    out = np.asarray(T.smooth_gradient(jnp.asarray(g), k))
    for b in range(2):
        for c in range(3):
            want = ndimage.convolve(g[b, :, :, c], k, mode="constant", cval=0.0)
            np.testing.assert_allclose(out[b, :, :, c], want, atol=1e-5)


def test_without_diversity_difgsm_is_mifgsm(tiny):
    model, x, y = tiny
    eps, steps = 0.05, 5
    cfg = T.DIFGSMConfig(eps=eps, step_size=eps / steps, steps=steps, decay=1.0,
                         diversity_prob=0.0)
    got = _jitted(T.difgsm, model.apply_fn)(model.params, x, y, jax.random.PRNGKey(0), cfg)
    want = mifgsm(model.apply_fn, model.params, x, y, jax.random.PRNGKey(0),
                  MIFGSMConfig(eps=eps, steps=steps, decay=1.0))
    np.testing.assert_allclose(np.asarray(got.x_adv), np.asarray(want.x_adv), atol=1e-6)
    # a 1x1 TI kernel is the identity
    ti = _jitted(T.tifgsm, model.apply_fn)(model.params, x, y, jax.random.PRNGKey(0),
                                           T.TIFGSMConfig(eps=eps, step_size=eps / steps,
                                                          steps=steps, decay=1.0, kernel_size=1,
                                                          diversity_prob=0.0))
    np.testing.assert_allclose(np.asarray(ti.x_adv), np.asarray(want.x_adv), atol=1e-6)


def test_diversity_changes_the_gradient_and_key_matters(tiny):
    model, x, y = tiny
    cfg = T.DIFGSMConfig(eps=0.05, step_size=0.01, steps=3, diversity_prob=1.0)
    run = _jitted(T.difgsm, model.apply_fn)
    a = run(model.params, x, y, jax.random.PRNGKey(0), cfg)
    b = run(model.params, x, y, jax.random.PRNGKey(1), cfg)
    plain = run(model.params, x, y, jax.random.PRNGKey(0),
                T.DIFGSMConfig(eps=0.05, step_size=0.01, steps=3, diversity_prob=0.0))
    assert not np.allclose(a.x_adv, b.x_adv)
    assert not np.allclose(a.x_adv, plain.x_adv)


@settings(max_examples=4, deadline=None)
@given(eps=st.floats(0.0, 0.3), norm=st.sampled_from(["linf", "l2"]),
       seed=st.integers(0, 100))
def test_budget_box_and_queries(tiny, eps, norm, seed):
    model, x, y = tiny
    cfg = T.TIFGSMConfig(eps=eps, step_size=eps / 2, steps=2, kernel_size=3, decay=1.0,
                         norm=norm, random_start=True)
    run = _jitted(T.tifgsm, model.apply_fn)
    r = run(model.params, x, y, jax.random.PRNGKey(seed), cfg)
    assert float(jnp.max(r.norm)) <= eps * (1 + 1e-5) + 1e-6
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    assert np.all(np.asarray(r.queries) == 2)
    pred = jnp.argmax(model.apply_fn(model.params, r.x_adv), -1)
    np.testing.assert_array_equal(np.asarray(r.success), np.asarray(pred != y))


@functools.lru_cache(maxsize=None)
def _jitted(attack, apply_fn):
    return jax.jit(lambda p, x, y, k, c: attack(apply_fn, p, x, y, k, c))


def test_attack_succeeds_on_the_surrogate_and_vmaps_over_eps(tiny):
    model, x, y = tiny  # y: the model's own predictions, so eps 0 never succeeds
    f, p = model.apply_fn, model.params

    def rate(eps):
        cfg = T.DIFGSMConfig(eps=eps, step_size=eps / 4, steps=5, decay=1.0)
        return jnp.mean(T.difgsm(f, p, x, y, jax.random.PRNGKey(0), cfg).success)

    rates = np.asarray(jax.jit(jax.vmap(rate))(jnp.array([0.0, 0.02, 0.5])))
    assert rates[0] == 0.0 and rates[2] == 1.0 and rates[1] <= rates[2]


def test_ensemble_fusions(tiny):
    model, x, _ = tiny
    # a second network of the same architecture: other weights (no second initialisation)
    other = jax.tree_util.tree_map(lambda a: -0.8 * a[::-1], model.params)
    fns, params = (model.apply_fn, model.apply_fn), (model.params, other)
    z1, z2 = jax.jit(lambda p, x: (fns[0](p[0], x), fns[1](p[1], x)))(params, x)
    fused = jax.jit(T.ensemble(fns, (0.25, 0.75)))(params, x)
    np.testing.assert_allclose(fused, 0.25 * z1 + 0.75 * z2, rtol=1e-5, atol=1e-6)
    fused = jax.jit(T.ensemble(fns, fuse="probabilities"))(params, x)
    want = np.log(0.5 * jax.nn.softmax(z1) + 0.5 * jax.nn.softmax(z2))
    np.testing.assert_allclose(fused, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="sum"):
        T.ensemble(fns, (0.5, 0.7))
    with pytest.raises(ValueError, match="fuse"):
        T.ensemble(fns, fuse="votes")
    with pytest.raises(TypeError, match="tuple of 2"):
        T.ensemble(fns)(model.params, x)


def test_transfer_evaluation(tiny):
    model, x, _ = tiny
    f, p = model.apply_fn, model.params
    y = jnp.array([0, 1, 2, 3, 4, 5]) % 10  # labels the model mostly gets wrong: clean_ok varies
    y = y.at[:3].set(jnp.argmax(f(p, x[:3]), -1))  # the first three are correct
    cfg = T.DIFGSMConfig(eps=0.1, step_size=0.025, steps=4)
    attack = jax.jit(functools.partial(T.difgsm, f, config=cfg))
    # victim = surrogate: the transfer rate is the white-box success on clean-correct examples
    res = T.transfer_evaluation(attack, f, p, p, x, y, jax.random.PRNGKey(0))
    ok = np.asarray(res.victim_clean_correct)
    assert ok[:3].all()
    want = np.asarray(res.attack.success)[ok].mean()
    assert float(res.transfer_rate) == pytest.approx(want)
    np.testing.assert_array_equal(res.victim_success, res.attack.success)
    # an ensemble of the model with itself (fused logits) is the model: the same attack
    attack2 = jax.jit(functools.partial(T.difgsm, T.ensemble((f, f)), config=cfg))
    res2 = T.transfer_evaluation(attack2, f, p, (p, p), x, y, jax.random.PRNGKey(0))
    np.testing.assert_allclose(res2.attack.x_adv, res.attack.x_adv, atol=1e-5)
    # targeted: the rate is the fraction predicted as the target
    tgt = (y + 1) % 10
    cfg_t = T.DIFGSMConfig(eps=0.1, step_size=0.025, steps=4, targeted=True)
    attack_t = jax.jit(functools.partial(T.difgsm, f, config=cfg_t))
    res_t = T.transfer_evaluation(attack_t, f, p, p, x, tgt, jax.random.PRNGKey(0), y_true=y,
                                  targeted=True)
    pred = np.asarray(jnp.argmax(f(p, res_t.attack.x_adv), -1))
    assert float(res_t.transfer_rate) == pytest.approx(np.mean(pred == np.asarray(tgt)))


def test_bad_configs_say_what_is_wrong(tiny):
    with pytest.raises(ValueError, match="odd"):
        T.TIFGSMConfig(kernel_size=4)
    with pytest.raises(ValueError, match="diversity_prob"):
        T.DIFGSMConfig(diversity_prob=1.5)
    with pytest.raises(ValueError, match="norm"):
        T.DIFGSMConfig(norm="l1")
    model, x, y = tiny
    with pytest.raises(ValueError, match="kernel_size 15"):
        T.tifgsm(model.apply_fn, model.params, x, y, jax.random.PRNGKey(0), T.TIFGSMConfig())
