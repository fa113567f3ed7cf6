"""ALDp, SSIM and PSD against closed forms, scikit-image and a float64 numpy loop."""

import numpy as np
import pytest
from skimage import data
from skimage.metrics import structural_similarity

from robustjax.metrics import ImperceptibilityStats, lp_distortions, psd, ssim


def _real_pairs():
    """Crops of two real RGB photos and noisy / blurred / shifted versions of them."""
    rng = np.random.default_rng(0)
    pairs = []
    for name, crop in (("astronaut", (slice(0, 96), slice(100, 196))),
                       ("chelsea", (slice(50, 146), slice(150, 246)))):
        im = (getattr(data, name)()[crop].astype(np.float32) / 255)
        for sigma in (0.01, 0.05, 0.2):
            pairs.append((im, np.clip(im + sigma * rng.standard_normal(im.shape), 0, 1)))
        pairs.append((im, np.roll(im, 2, axis=1)))
        pairs.append((im, np.clip(1.2 * im - 0.1, 0, 1)))
    return pairs


def test_ssim_matches_scikit_image_on_real_images():
    pairs = _real_pairs()
    x = np.stack([a for a, _ in pairs]).astype(np.float32)
    xa = np.stack([b for _, b in pairs]).astype(np.float32)
    got = np.asarray(ssim(x, xa))
    ref = np.array([structural_similarity(a.astype(np.float64), b.astype(np.float64),
                                          gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1,
                                          channel_axis=-1) for a, b in pairs])
    assert ref.min() < 0.2 and ref.max() > 0.9  # the cases span the range
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # grayscale, identical images
    g = x[:2, :, :, :1]
    np.testing.assert_allclose(np.asarray(ssim(g, g)), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[:, :8, :8], xa[:, :8, :8])


def test_lp_distortions_closed_form():
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    x[1] = 0.0
    x[1, 0, 0, 0] = 0.8  # ||x||_0 = 1, ||x||_2 = 0.8, ||x||_inf = 0.8
    xa = x.copy()
    xa[0, 0, 0, 0] += 0.3
    xa[0, 1, 1, 0] -= 0.4
    xa[0, 2, 2, 0] += 1e-4  # below l0_tol: not counted
    xa[1, 3, 3, 0] = 0.2
    d = {k: np.asarray(v) for k, v in lp_distortions(x, xa).items()}
    np.testing.assert_allclose(d["l0_abs"], [2, 1])
    np.testing.assert_allclose(d["l0_fraction"], [2 / 16, 1 / 16])
    np.testing.assert_allclose(d["l0_rel"], [2 / 16, 1 / 1])
    np.testing.assert_allclose(d["l2_abs"], [np.sqrt(0.09 + 0.16 + 1e-8), 0.2], rtol=1e-5)
    np.testing.assert_allclose(d["l2_rel"], [np.sqrt(0.25 + 1e-8) / 2.0, 0.2 / 0.8], rtol=1e-5)
    np.testing.assert_allclose(d["linf_abs"], [0.4, 0.2], rtol=1e-5)
    np.testing.assert_allclose(d["linf_rel"], [0.4 / 0.5, 0.2 / 0.8], rtol=1e-5)


def _psd_loop(x, xa, weight, floor):
    """DEEPSEC-style per-element loop in float64 (reflect padding, 3x3 population std)."""
    out = []
    for img, adv in zip(x.astype(np.float64), xa.astype(np.float64)):
        total = 0.0
        for c in range(img.shape[-1]):
            p = np.pad(img[:, :, c], 1, mode="reflect")
            pert = np.abs(adv[:, :, c] - img[:, :, c])
            for i in range(img.shape[0]):
                for j in range(img.shape[1]):
                    sd = np.std(p[i:i + 3, j:j + 3])
                    w = {"inverse_std": 1 / max(sd, floor), "one_minus_std": 1 - sd,
                         "std": sd}[weight]
                    total += pert[i, j] * w
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize("weight", ["inverse_std", "one_minus_std", "std"])
def test_psd_matches_numpy_loop(weight):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(2, 7, 6, 2)).astype(np.float32)
    x[0, :3, :3, 0] = 0.25  # a flat patch: the floor matters for inverse_std
    xa = np.clip(x + rng.uniform(-0.05, 0.05, x.shape), 0, 1).astype(np.float32)
    np.testing.assert_allclose(np.asarray(psd(x, xa, weight=weight)),
                               _psd_loop(x, xa, weight, 1 / 255), rtol=2e-4)


def test_psd_flat_image_closed_form_and_bad_weight():
    x = np.full((1, 5, 5, 1), 0.5, np.float32)
    xa = x.copy()
    xa[0, 2, 2, 0] += 0.1
    assert float(psd(x, xa)[0]) == pytest.approx(0.1 * 255, rel=1e-4)
    assert float(psd(x, xa, weight="one_minus_std")[0]) == pytest.approx(0.1, rel=1e-4)
    with pytest.raises(ValueError, match="valid: inverse_std"):
        psd(x, xa, weight="1/std")


def test_stats_average_over_mask():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(4, 12, 12, 1)).astype(np.float32)
    xa = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1).astype(np.float32)
    mask = np.array([True, False, True, False])
    out = ImperceptibilityStats.from_batch(x, xa, mask).compute()
    d = lp_distortions(x, xa)
    assert float(out["l2_abs"]) == pytest.approx(float(np.asarray(d["l2_abs"])[mask].mean()),
                                                 rel=1e-5)
    assert float(out["ssim"]) == pytest.approx(float(np.asarray(ssim(x, xa))[mask].mean()),
                                               rel=1e-5)


def test_stats_skip_ssim_on_small_images():
    x = np.full((2, 8, 8, 1), 0.5, np.float32)
    out = ImperceptibilityStats.from_batch(x, x + 0.01).compute()
    assert np.isnan(float(out["ssim"])) and float(out["linf_abs"]) == pytest.approx(0.01)
