"""Detectors (feature squeezing, spectral, Mahalanobis) and detection metrics.

Oracles: sklearn's ROC metrics and logistic regression, scipy's median filter, numpy
re-computations (loops for non-local means, np.linalg for the Mahalanobis fit and a linear
embedding's closed-form input gradient); then real effects (separation of shifted and noisy
data, chance on clean-vs-clean, an end-to-end PGD detection on a tiny trained MLP).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.ndimage
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from robustjax import data, metrics
from robustjax.attacks import PGDConfig, pgd
from robustjax.defenses import detectors as D
from robustjax.models import create

# ----------------------------------------------------------------------------- metrics

scores_st = st.lists(st.one_of(st.integers(-3, 3).map(float),
                               st.floats(-5, 5, allow_nan=False, width=32)),
                     min_size=1, max_size=30)
FPRS = [0.0, 0.01, 0.05, 0.1, 0.25, 0.29, 0.5, 0.99, 1.0]


def _sk_tpr_at_fpr(clean, adv, fpr):
    labels = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    f, t, _ = roc_curve(labels, np.r_[clean, adv], drop_intermediate=False)
    return np.max(t[f <= fpr])


@settings(max_examples=100, deadline=None)
@given(scores_st, scores_st)
def test_auroc_equals_sklearn_with_ties(clean, adv):
    labels = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    expected = roc_auc_score(labels, np.r_[clean, adv])
    assert metrics.auroc(np.float32(clean), np.float32(adv)) == pytest.approx(expected,
                                                                                abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(scores_st, scores_st, st.one_of(st.sampled_from(FPRS), st.floats(0, 1)))
def test_tpr_at_fpr_equals_sklearn_roc_curve(clean, adv, fpr):
    clean, adv = np.float32(clean), np.float32(adv)
    assert metrics.tpr_at_fpr(clean, adv, fpr) == _sk_tpr_at_fpr(clean, adv, fpr)
    t = metrics.threshold_at_fpr(clean, fpr)
    assert np.mean(clean > t) <= fpr  # the guarantee
    lower = clean[clean < t]
    if lower.size:  # and it is the smallest threshold with it (among the clean scores)
        assert np.mean(clean > lower.max()) > fpr


def test_threshold_at_fpr_on_continuous_scores_and_detect():
    s = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    for fpr in (0.01, 0.05, 0.2):
        t = D.threshold_at_fpr(s, fpr)
        flagged = np.asarray(D.detect(s, t))
        assert flagged.dtype == bool and flagged.mean() == pytest.approx(fpr, abs=1e-9)
    assert D.threshold_at_fpr(s, 1.0) == -np.inf


def test_detection_stats_merge_equals_one_shot():
    r = np.random.default_rng(1)
    c, a = r.normal(size=40), r.normal(1.0, size=30)
    chunks = [metrics.DetectionStats.from_scores(c[i:i + 10], a[i:i + 10]) for i in
              range(0, 40, 10)]
    merged = metrics.merge_all([metrics.DetectionStats.empty()] + chunks).compute(0.1)
    assert merged["auroc"] == pytest.approx(metrics.auroc(c, a), abs=1e-6)
    assert merged["tpr"] == metrics.tpr_at_fpr(np.float32(c), np.float32(a), 0.1)
    assert merged["fpr"] <= 0.1 and (merged["num_clean"], merged["num_adv"]) == (40, 30)


# ----------------------------------------------------------------------------- squeezing


def _linear_model(shape, k, seed=0):
    w = np.random.default_rng(seed).normal(size=(int(np.prod(shape)), k)).astype(np.float32)
    return (lambda p, x: x.reshape(x.shape[0], -1) @ p), w


def _nlm_numpy(x, search, patch, h):
    rs, rp = search // 2, patch // 2
    xp = np.pad(x, ((0, 0), (rs + rp,) * 2, (rs + rp,) * 2, (0, 0)), mode="reflect")
    out = np.zeros_like(x, dtype=np.float64)
    b, hh, ww, _ = x.shape
    for n in range(b):
        for i in range(hh):
            for j in range(ww):
                ci, cj = i + rs + rp, j + rs + rp
                p0 = xp[n, ci - rp:ci + rp + 1, cj - rp:cj + rp + 1]
                tot, wsum = 0.0, 0.0
                for di in range(-rs, rs + 1):
                    for dj in range(-rs, rs + 1):
                        q = xp[n, ci + di - rp:ci + di + rp + 1, cj + dj - rp:cj + dj + rp + 1]
                        wt = np.exp(-np.mean((p0 - q) ** 2) / h**2)
                        tot, wsum = tot + wt * xp[n, ci + di, cj + dj], wsum + wt
                out[n, i, j] = tot / wsum
    return out


def test_feature_squeezing_score_equals_numpy():
    r = np.random.default_rng(2)
    x = r.uniform(size=(3, 8, 8, 2)).astype(np.float32)
    apply_fn, w = _linear_model(x.shape[1:], 4)
    cfg = D.FeatureSqueezingConfig(bit_depth=3, median_size=2, nlm=(5, 3, 60))
    state = D.fit_feature_squeezing(apply_fn, w, x, cfg)
    got = np.asarray(D.score_feature_squeezing(apply_fn, w, x, state))

    def probs(z):
        z = z.reshape(len(z), -1).astype(np.float64) @ w
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    squeezed = [np.round(x * 7) / 7,
                scipy.ndimage.median_filter(x, size=(1, 2, 2, 1), mode="reflect"),
                _nlm_numpy(x, 5, 3, 60 / 255)]
    d = np.stack([np.abs(probs(x) - probs(s)).sum(-1) for s in squeezed], -1)
    np.testing.assert_allclose(np.asarray(D.squeeze_distances(apply_fn, w, x, cfg)), d,
                               atol=2e-5)
    np.testing.assert_allclose(got, d.max(-1), atol=2e-5)
    assert cfg.squeezers == ("bit_depth", "median", "nlm")


def test_feature_squeezing_presets_are_the_papers():
    assert D.FeatureSqueezingConfig.for_dataset("mnist") == D.FeatureSqueezingConfig(1, 2, None)
    assert D.FEATURE_SQUEEZING_PRESETS["cifar10"].nlm == (13, 3, 2.0)
    assert D.FEATURE_SQUEEZING_PRESETS["imagenet"] == D.FeatureSqueezingConfig(5, 2, (11, 3, 4))
    with pytest.raises(KeyError, match="mnist, cifar10, imagenet"):
        D.FeatureSqueezingConfig.for_dataset("svhn")


# ----------------------------------------------------------------------------- Mahalanobis


def test_mahalanobis_equals_numpy_and_closed_form_preprocessing():
    r = np.random.default_rng(3)
    k, n = 3, 300
    y = r.integers(0, k, n).astype(np.int32)
    x = np.clip(0.5 + 0.1 * r.normal(size=(n, 4, 4, 1)) + 0.05 * y[:, None, None, None],
                0, 1).astype(np.float32)
    embed_fn, w = _linear_model(x.shape[1:], 5, seed=4)
    state = D.fit_mahalanobis(embed_fn, w, x, y, D.MahalanobisConfig(batch_size=128))
    f = x.reshape(n, -1).astype(np.float64) @ w
    mu = np.stack([f[y == c].mean(0) for c in range(k)])
    prec = np.linalg.pinv((f - mu[y]).T @ (f - mu[y]) / n)
    np.testing.assert_allclose(np.asarray(state.means), mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.precision), prec, rtol=2e-3, atol=2e-3)
    xt = x[:20]
    ft = xt.reshape(20, -1).astype(np.float64) @ w
    d2 = np.einsum("bkd,de,bke->bk", ft[:, None] - mu, prec, ft[:, None] - mu)
    np.testing.assert_allclose(np.asarray(D.score_mahalanobis(embed_fn, w, xt, state)),
                               d2.min(-1), rtol=2e-3)
    # Input pre-processing, closed form for f = x W: grad_x d2_c = 2 (f - mu_c) P W^T.
    eps = 0.01
    pstate = D.fit_mahalanobis(embed_fn, w, x, y, D.MahalanobisConfig(epsilon=eps))
    c = d2.argmin(-1)
    grad = 2 * ((ft - mu[c]) @ prec) @ w.T
    xh = np.clip(xt.reshape(20, -1) - eps * np.sign(grad), 0, 1)
    fh = xh @ w
    d2h = np.einsum("bkd,de,bke->bk", fh[:, None] - mu, prec, fh[:, None] - mu).min(-1)
    got = np.asarray(D.score_mahalanobis(embed_fn, w, xt, pstate))
    np.testing.assert_allclose(got, d2h, rtol=2e-3)
    assert np.all(got < d2.min(-1))  # the step increases the confidence M = -distance


def test_mahalanobis_separates_a_shifted_distribution():
    r = np.random.default_rng(5)
    k, d, n = 4, 6, 800
    centers = 3 * r.normal(size=(k, d))
    y = r.integers(0, k, n).astype(np.int32)
    a = r.normal(size=(d, d)) / np.sqrt(d)
    clean = (centers[y] + r.normal(size=(n, d)) @ a).astype(np.float32)
    state = D.fit_mahalanobis_features(clean[:600], y[:600])
    shifted = clean[600:] + (r.normal(size=(200, d)) @ a).astype(np.float32) * 2.0
    s_clean = D.min_distance(jnp.asarray(clean[600:]), state)
    s_shift = D.min_distance(jnp.asarray(shifted), state)
    assert metrics.auroc(s_clean, s_shift) > 0.9


# ----------------------------------------------------------------------------- spectral


@pytest.fixture(scope="module")
def mnist_train():
    return data.load("mnist5k", "train")


def test_logistic_regression_equals_sklearn():
    r = np.random.default_rng(6)
    f = r.normal(size=(200, 5)).astype(np.float32)
    t = (f @ r.normal(size=5) + 0.5 * r.normal(size=200) > 0).astype(np.float32)
    l2 = 0.01
    w, b = D.logistic_regression(f, t, l2)
    sk = LogisticRegression(C=1 / (l2 * len(f)), tol=1e-10, max_iter=10_000).fit(f, t)
    np.testing.assert_allclose(np.asarray(w), sk.coef_[0], rtol=1e-3, atol=1e-4)
    assert float(b) == pytest.approx(sk.intercept_[0], abs=1e-4)


def test_spectral_separates_high_frequency_noise_and_is_chance_on_clean(mnist_train):
    r = np.random.default_rng(7)
    x = mnist_train[0][r.permutation(4000)[:1600]]  # the split is sorted by class
    # An MNIST-attack-sized (Linf 0.1) white sign perturbation: 80% of its power lies above
    # the default cutoff. (At 8/255 the digits' own edge spectra hide it: AUROC ~0.6.)
    eps = 0.1
    noisy = np.clip(x + eps * r.choice([-1.0, 1.0], size=x.shape), 0, 1).astype(np.float32)
    state = D.fit_spectral(x[:400], noisy[400:800])
    s_clean, s_noisy = D.score_spectral(x[800:1200], state), D.score_spectral(noisy[1200:1600],
                                                                              state)
    assert metrics.auroc(s_clean, s_noisy) > 0.95
    # Held-out clean splits look alike to it (no separation without a perturbation) ...
    assert abs(metrics.auroc(s_clean, D.score_spectral(x[1200:1600], state)) - 0.5) < 0.1
    # ... and fitted on two clean splits it learns nothing that transfers.
    null = D.fit_spectral(x[:400], x[400:800])
    a = metrics.auroc(D.score_spectral(x[800:1200], null), D.score_spectral(x[1200:1600], null))
    assert abs(a - 0.5) < 0.1
    assert D.spectral_features(x[:2]).shape == (2, 8)
    full = D.SpectralConfig(pooling="none", cutoff=1.0)
    assert D.spectral_features(x[:2], full).shape[1] == int(np.sum(
        np.hypot(*np.meshgrid(np.fft.fftfreq(28), np.fft.fftfreq(28))) / 0.5 >= 1.0))


# ----------------------------------------------------------------------------- end to end


def train_tiny_mlp(x, y):
    """A 784-64-10 MLP, 400 Adam steps of batch 100 (~93% on mnist5k test)."""
    model = create("mlp", hidden=(64,), key=jax.random.PRNGKey(0))
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, state, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(
                model.apply_fn(p, xb), yb).mean()

        g = jax.grad(loss)(params)
        u, state = opt.update(g, state, params)
        return optax.apply_updates(params, u), state

    params, state = model.params, opt.init(model.params)
    order = np.random.default_rng(0).permutation(len(x))
    for i in range(400):
        idx = order[(i * 100) % 4000:(i * 100) % 4000 + 100]
        params, state = step(params, state, x[idx], y[idx])
    return model.apply_fn, model.embed_fn, params


@pytest.fixture(scope="module")
def tiny_mlp(mnist_train):
    return train_tiny_mlp(*mnist_train)


def test_end_to_end_pgd_detection_above_chance(tiny_mlp, mnist_train, mnist_test):
    apply_fn, embed_fn, params = tiny_mlp
    (xtr, ytr), (xte, yte) = mnist_train, mnist_test
    perm = np.random.default_rng(8).permutation(len(xtr))  # the splits are sorted by class
    xtr, ytr = xtr[perm[:2000]], ytr[perm[:2000]]
    pick = np.random.default_rng(9).permutation(len(xte))[:300]
    xte, yte = xte[pick], yte[pick]
    assert np.mean(np.argmax(apply_fn(params, xte), -1) == yte) > 0.85
    attack = jax.jit(functools.partial(pgd, apply_fn,
                                       config=PGDConfig(eps=0.15, step_size=0.03, steps=10)))
    key_fit, key_test = jax.random.split(jax.random.PRNGKey(1))
    adv_fit = attack(params, xtr[:300], ytr[:300], key_fit).x_adv
    res = attack(params, xte, yte, key_test)
    ok = np.asarray(np.argmax(apply_fn(params, xte), -1) == yte)
    succ = np.asarray(res.success) & ok
    assert succ.sum() > 50
    clean, adv = xte[ok], np.asarray(res.x_adv)[succ]
    states = {
        "feature_squeezing": D.get_detector("feature_squeezing").fit(apply_fn, params, xtr[:100],
                                                     D.FeatureSqueezingConfig.for_dataset(
                                                         "mnist")),
        "mahalanobis": D.get_detector("mahalanobis").fit(embed_fn, params, xtr, ytr),
        "spectral": D.get_detector("spectral").fit(xtr[300:600], adv_fit),
    }
    score = {
        "feature_squeezing": lambda z: D.score_feature_squeezing(apply_fn, params, z,
                                                                 states["feature_squeezing"]),
        "mahalanobis": lambda z: D.score_mahalanobis(embed_fn, params, z,
                                                     states["mahalanobis"]),
        "spectral": lambda z: D.score_spectral(z, states["spectral"]),
    }
    for name, fn in score.items():
        assert D.get_detector(name).score.__name__ == f"score_{name}"
        area = metrics.auroc(fn(clean), fn(adv))
        assert area > 0.7, (name, area)


def test_scores_under_jit_equal_eager_calls():
    r = np.random.default_rng(10)
    x = r.uniform(size=(6, 8, 8, 1)).astype(np.float32)
    fn, w = _linear_model(x.shape[1:], 3)
    y = np.arange(6, dtype=np.int32) % 3
    fs = D.fit_feature_squeezing(fn, w, x, D.FeatureSqueezingConfig(bit_depth=2, nlm=(3, 3, 30)))
    sp = D.fit_spectral(x[:3], np.clip(x[3:] + 0.1, 0, 1), D.SpectralConfig(num_bins=2))
    mh = D.fit_mahalanobis(fn, w, x, y, D.MahalanobisConfig(epsilon=0.01))
    for score, state in ((D.score_feature_squeezing, fs), (D.score_mahalanobis, mh)):
        eager = score(fn, w, x, state)
        jitted = jax.jit(functools.partial(score, fn))(w, x, state)
        np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(D.score_spectral)(x, sp)),
                               np.asarray(D.score_spectral(x, sp)), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(mnist_train):
    x = mnist_train[0][:8]
    apply_fn, w = _linear_model(x.shape[1:], 10)
    fs = D.fit_feature_squeezing(apply_fn, w, x, D.FeatureSqueezingConfig.for_dataset("mnist"))
    with pytest.raises(ValueError, match="NHWC"):
        D.score_feature_squeezing(apply_fn, w, x[0], fs)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        D.score_spectral(x * 2, D.fit_spectral(x, x[::-1]))
    with pytest.raises(TypeError, match="fit_mahalanobis"):
        D.score_mahalanobis(apply_fn, w, x, None)
    with pytest.raises(TypeError, match="SpectralState returned by fit_spectral"):
        D.score_spectral(x, fs)
    with pytest.raises(ValueError, match="fitted"):
        D.score_feature_squeezing(apply_fn, w, x[:, :14, :14], fs)
    maha = D.fit_mahalanobis_features(np.random.default_rng(0).normal(size=(20, 3)),
                                      np.arange(20, dtype=np.int32) % 2)
    with pytest.raises(ValueError, match="10 features per example but the state was fitted on 3"):
        D.score_mahalanobis(apply_fn, w, x, maha)
    with pytest.raises(KeyError, match="feature_squeezing, spectral, mahalanobis"):
        D.get_detector("lid")
    with pytest.raises(ValueError, match="fpr"):
        metrics.threshold_at_fpr([0.0, 1.0], 1.5)
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc([0.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="rings"):
        D.spectral_features(x[:, :4, :4], D.SpectralConfig(num_bins=64))
    small_fn, small_w = _linear_model((6, 6, 1), 10)
    with pytest.raises(ValueError, match="too small"):
        D.fit_feature_squeezing(small_fn, small_w, x[:, :6, :6], D.FeatureSqueezingConfig())
