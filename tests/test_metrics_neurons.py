"""Activation capture, DeepGauge coverage, neuron sensitivity and uncertainty."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.metrics import (CoverageStats, NeuronRanges, NeuronUncertaintyConfig,
                               activations_fn, neuron_sensitivity, neuron_uncertainty)
from robustjax.models import small


@pytest.fixture(scope="module")
def cnn():
    m = small.CNN(channels=(4, 6), hidden=8)
    v = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    return m, v


def test_activations_fn_captures_conv_and_dense_post_relu(cnn):
    m, v = cnn
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
    acts = jax.jit(activations_fn(m, v, mean=(0.5,), std=(0.25,)))(x)
    assert list(acts) == ["conv0", "conv1", "dense0"]          # head excluded
    assert acts["conv0"].shape == (4, 14, 14, 4) and acts["dense0"].shape == (4, 8)
    # dense0 recomputed by hand from conv1's output and the dense0 weights
    p = v["params"]["dense0"]
    h = np.asarray(acts["conv1"]).reshape(4, -1)
    np.testing.assert_allclose(acts["dense0"], np.maximum(h @ p["kernel"] + p["bias"], 0),
                               rtol=1e-4, atol=1e-5)
    raw = activations_fn(m, v, mean=(0.5,), std=(0.25,), post=None, exclude=())(x)
    assert "head" in raw and float(jnp.min(raw["conv0"])) < 0  # pre-activation values
    # the head equals the Model's logits (same normalisation)
    logits = m.apply(v, (x - 0.5) / 0.25)
    np.testing.assert_allclose(raw["head"], logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no activations captured"):
        activations_fn(m, v, kinds=(type(None),))(x)


def test_coverage_hand_case():
    # one dense layer, 2 neurons; ranges [0, 1] and [0, 2] from "training" values
    train = {"d": jnp.array([[0.0, 0.0], [1.0, 2.0]])}
    ranges = NeuronRanges.from_batch(train)
    test = {"d": jnp.array([[0.05, 1.5], [0.95, 2.5], [1.0, -1.0]])}
    out = CoverageStats.from_batch(test, ranges, k=4).compute()
    # neuron 0: values 0.05 (sec 0), 0.95 (sec 3), 1.0 (= high: sec 3) -> 2 of 4 sections
    # neuron 1: 1.5 (sec 3); 2.5 > high (upper corner); -1 < low (lower corner) -> 1 section
    assert float(out["kmnc"]) == pytest.approx(3 / 8)
    assert float(out["nbc"]) == pytest.approx(2 / 4)
    assert float(out["snac"]) == pytest.approx(1 / 2)
    assert float(out["per_layer"]["d"]["kmnc"]) == pytest.approx(3 / 8)


def test_coverage_conv_channel_means_and_streaming(cnn):
    m, v = cnn
    f = jax.jit(activations_fn(m, v))
    xs = jax.random.uniform(jax.random.PRNGKey(2), (8, 28, 28, 1))
    a1, a2 = f(xs[:4]), f(xs[4:])
    ranges = NeuronRanges.from_batch(a1).merge(NeuronRanges.from_batch(a2))
    for k in a1:  # merged per-batch ranges == min/max over all examples' channel means
        vals = np.concatenate([np.asarray(a[k]).mean(axis=(1, 2)) if a[k].ndim == 4
                               else np.asarray(a[k]) for a in (a1, a2)])
        np.testing.assert_allclose(ranges.layers[k].low, vals.min(0), rtol=1e-6)
        np.testing.assert_allclose(ranges.layers[k].high, vals.max(0), rtol=1e-6)
    # the training activations themselves never leave their own ranges: no corner coverage
    cov = CoverageStats.from_batch(a1, ranges, k=5).merge(
        CoverageStats.from_batch(a2, ranges, k=5)).compute()
    assert float(cov["nbc"]) == 0.0 and float(cov["snac"]) == 0.0
    assert 0.0 < float(cov["kmnc"]) <= 1.0
    assert ranges.layers["conv0"].low.shape == (4,)  # one neuron per channel
    bright = CoverageStats.from_batch(f(jnp.clip(xs[:4] * 3, 0, 1)), ranges, k=5).compute()
    assert float(bright["nbc"]) > 0.0


def test_neuron_sensitivity_hand_case():
    a = {"c": jnp.zeros((2, 2, 2, 3)), "d": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    b = {"c": jnp.zeros((2, 2, 2, 3)).at[0, 0, 0, 1].set(4.0),
         "d": jnp.array([[1.0, 0.0], [2.0, 4.0]])}
    s = neuron_sensitivity(a, b)
    per = s.per_neuron()
    np.testing.assert_allclose(per["c"], [0.0, 4.0 / 4 / 2, 0.0])  # (1/N) (1/dim) ||.||_1
    np.testing.assert_allclose(per["d"], [0.5, 1.0])
    assert float(s.compute()["d"]) == pytest.approx(0.75)
    merged = neuron_sensitivity({k: v[:1] for k, v in a.items()},
                                {k: v[:1] for k, v in b.items()}).merge(
        neuron_sensitivity({k: v[1:] for k, v in a.items()}, {k: v[1:] for k, v in b.items()}))
    np.testing.assert_allclose(merged.per_neuron()["d"], per["d"])


def test_neuron_uncertainty_linear_layer_closed_form():
    w = jnp.array([[1.0, 0.0], [2.0, 0.5], [0.0, 0.0], [-1.0, 3.0]])

    def acts_fn(x):
        return {"lin": x.reshape(x.shape[0], -1) @ w}

    x = jnp.full((2, 2, 2, 1), 0.5)
    cfg = NeuronUncertaintyConfig(noise_std=0.02, num_samples=4000)  # no clipping at 0.5 +- 5 sd
    u = neuron_uncertainty(acts_fn, x, jax.random.PRNGKey(0), cfg).per_neuron()["lin"]
    expected = 0.02 ** 2 * np.sum(np.asarray(w) ** 2, axis=0)   # Var(e @ w)
    np.testing.assert_allclose(u, expected, rtol=0.08)


def _deepgauge_numpy(train, test, k):
    """Independent float64 loop over neurons: KMNC, NBC, SNAC as in Ma et al. 2018."""
    sections = upper = lower = total = 0
    for name in train:
        tr, te = np.asarray(train[name], np.float64), np.asarray(test[name], np.float64)
        for n in range(tr.shape[1]):
            lo, hi = tr[:, n].min(), tr[:, n].max()
            edges = np.linspace(lo, hi, k + 1)
            hit = set()
            for v in te[:, n]:
                if lo <= v <= hi:
                    hit.add(min(int(np.searchsorted(edges, v, side="right")) - 1, k - 1))
            sections += len(hit)
            upper += int(np.any(te[:, n] > hi))
            lower += int(np.any(te[:, n] < lo))
            total += 1
    return sections / (k * total), (upper + lower) / (2 * total), upper / total


def test_coverage_matches_numpy_reimplementation():
    r = np.random.default_rng(5)
    train = {"a": r.normal(size=(50, 6)), "b": r.uniform(size=(50, 3))}
    test = {"a": 1.3 * r.normal(size=(20, 6)), "b": r.uniform(-0.2, 1.1, size=(20, 3))}
    ranges = NeuronRanges.from_batch({k: jnp.asarray(v, jnp.float32) for k, v in train.items()})
    got = CoverageStats.from_batch({k: jnp.asarray(v, jnp.float32) for k, v in test.items()},
                                   ranges, k=7).compute()
    kmnc, nbc, snac = _deepgauge_numpy(
        {k: np.asarray(v, np.float32) for k, v in train.items()},
        {k: np.asarray(v, np.float32) for k, v in test.items()}, 7)
    assert 0 < nbc < 1 and 0 < kmnc < 1
    assert got["kmnc"] == pytest.approx(kmnc) and got["nbc"] == pytest.approx(nbc)
    assert got["snac"] == pytest.approx(snac)
