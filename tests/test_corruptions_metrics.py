"""mCE, relative mCE, retention rate, CIFAR-10-C accuracy, flip probability, top-5 distance."""

import numpy as np
import pytest
from scipy.stats import rankdata

from robustjax.corruptions import metrics as m


def test_mce_of_uniformly_scaled_alexnet_errors():
    errors = {c: [e * 0.767] * 5 for c, e in m.ALEXNET_ERRORS.items()}
    errors["speckle_noise"] = [1.0] * 5  # extras are never averaged in
    assert m.mce(errors) == pytest.approx(0.767, abs=1e-12)


def test_relative_mce_hand_computed():
    clean = 0.239
    # E_{s,c} - E_clean = 1.05 (E^A_c - E^A_clean) at every severity -> relative CE = 1.05
    errors = {c: [clean + 1.05 * (e - m.ALEXNET_CLEAN_ERROR)] * 5 for c, e in m.ALEXNET_ERRORS.items()}
    assert m.relative_mce(errors, clean) == pytest.approx(1.05, abs=1e-12)


def test_corruption_error_sums_over_severities():
    # gaussian noise, errors .5 .6 .7 .8 .9: CE = 3.5 / (5 * .886428); relative with clean .2
    e = [0.5, 0.6, 0.7, 0.8, 0.9]
    assert m.corruption_error(e, "gaussian_noise") == pytest.approx(3.5 / 4.43214)
    expected_rel = (3.5 - 5 * 0.2) / (5 * (0.886428 - 0.435))
    assert m.relative_corruption_error(e, 0.2, "gaussian_noise") == pytest.approx(expected_rel)
    assert m.corruption_error(e, "spatter") == pytest.approx(3.5 / (5 * 0.718))


def test_metric_errors_are_explicit():
    with pytest.raises(ValueError, match="missing"):
        m.mce({"gaussian_noise": [0.5] * 5})
    with pytest.raises(ValueError, match="5 errors"):
        m.corruption_error([0.5] * 4, "fog")
    with pytest.raises(ValueError, match="known"):
        m.corruption_error([0.5] * 5, "rain")


def test_retention_rate_and_cifar10c():
    assert m.retention_rate(0.6, 0.8) == pytest.approx(0.75)
    np.testing.assert_allclose(m.retention_rate([0.4, 0.8], 0.8), [0.5, 1.0])
    acc = {c: [0.9, 0.8, 0.7, 0.6, 0.5] for c in m.ALEXNET_ERRORS}
    acc["fog"] = [0.2] * 5
    assert m.cifar10c_accuracy(acc) == pytest.approx((14 * 0.7 + 0.2) / 15)


def test_flip_probability_hand_computed():
    p = np.array([[0, 0, 1, 0, 1]])
    assert m.flip_probability(p, noise=True) == pytest.approx(2 / 4)
    assert m.flip_probability(p, noise=False) == pytest.approx(3 / 4)
    # step 2: offsets 0 (0,1,1 -> 1 flip of 2) and 1 (0,0 -> 0 of 1): 1/3 over all pairs
    assert m.flip_probability(p, noise=False, step=2) == pytest.approx(1 / 3)
    two = np.array([[0, 0, 0], [1, 2, 1]])
    assert m.flip_probability(two, noise=False) == pytest.approx(0.5)


def _reference_top5(ranks, noise, step):
    """A transcription of ImageNet-P test.py's ranking_dist(mode='top5')."""
    cum = np.cumsum(np.asarray([0] + [1] * 5 + [0] * (ranks.shape[-1] - 6)))
    result = 0.0
    for vid in ranks:
        out = []
        for i in range(1 if noise else step):
            perm1 = vid[i]
            inv = np.argsort(perm1)
            for rank in vid[i::(1 if noise else step)][1:]:
                out.append(np.sum(np.abs(cum[:5] - cum[rank[inv] - 1][:5])))
                if not noise:
                    perm1, inv = rank, np.argsort(rank)
        result += np.mean(out) / len(ranks)
    return result


def test_top5_distance_matches_reference_transcription():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 20))
    logits[:, 1:] = logits[:, :1] + 0.4 * rng.normal(size=(3, 6, 20))
    ranks = np.stack([[rankdata(-f, method="ordinal") for f in v] for v in logits])
    for noise, step in ((True, 1), (False, 1), (False, 2), (False, 3)):
        ours = m.top5_distance(logits, noise=noise, step=step)
        assert ours == pytest.approx(_reference_top5(ranks, noise, step)), (noise, step)


def test_top5_distance_closed_forms():
    base = np.arange(10.0)[::-1]  # class 0 best
    swap12 = base.copy()
    swap12[[0, 1]] = swap12[[1, 0]]
    swap16 = base.copy()
    swap16[[0, 6]] = swap16[[6, 0]]
    assert m.top5_distance(np.stack([base, base])[None], noise=False) == 0.0
    assert m.top5_distance(np.stack([base, swap12])[None], noise=False) == 2.0
    assert m.top5_distance(np.stack([base, swap16])[None], noise=False) == 5.0


def test_flip_rate_and_mt5d_normalise_by_alexnet():
    assert m.mfr(dict(m.ALEXNET_FLIP_PROBABILITY)) == pytest.approx(1.0)
    assert m.mt5d(dict(m.ALEXNET_TOP5_DISTANCE)) == pytest.approx(1.0)
    assert m.flip_rate(0.0473, "gaussian_noise") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="known"):
        m.flip_rate(0.1, "fog")
