"""Survey eqs. (1), (3), (4), the robustness curve, and the shared mCE / eq. (5) forwarding."""

import importlib.util

import numpy as np
import pytest

from robustjax.metrics import (RobustnessCurve, corruption_error, fooling_rate, mce,
                               retention_rate, robust_condition, robustness_curve,
                               robustness_indicator)

CLEAN = np.array([[2, 0, 0], [0, 2, 0], [0, 0, 2], [2, 0, 0]], np.float32)  # preds 0 1 2 0
Y = np.array([0, 1, 0, 0], np.int32)                                         # ex. 2 wrong
PERT = np.array([[0, 2, 0], [0, 2, 0], [2, 0, 0], [2, 0, 0]], np.float32)   # preds 1 1 0 0


def test_robustness_indicator_eq1():
    second = np.array([[2, 0, 0], [2, 0, 0], [0, 0, 2], [2, 0, 0]], np.float32)
    r = robustness_indicator(CLEAN, np.stack([PERT, second]))
    np.testing.assert_array_equal(r, [False, False, False, True])
    np.testing.assert_array_equal(robustness_indicator(CLEAN, CLEAN), [True] * 4)
    np.testing.assert_array_equal(robustness_indicator(CLEAN, CLEAN, Y, require_correct=True),
                                  [True, True, False, True])
    with pytest.raises(ValueError, match="needs the labels"):
        robustness_indicator(CLEAN, CLEAN, require_correct=True)


def test_fooling_rate_eq3_both_references():
    # label reference: clean-correct examples 0, 1, 3; flipped to wrong: example 0 -> 1/3
    assert float(fooling_rate(CLEAN, PERT, Y)) == pytest.approx(1 / 3)
    # prediction reference (universal perturbations): preds change on 0 and 2 -> 2/4
    assert float(fooling_rate(CLEAN, PERT, reference="prediction")) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="valid: 'label', 'prediction'"):
        fooling_rate(CLEAN, PERT, Y, reference="clean")


def test_retention_rate_eq4():
    # clean accuracy 3/4; perturbed correct: 1 (y=1), 2 (y=0), 3 (y=0) -> 3/4 -> ratio 1
    assert float(retention_rate(CLEAN, PERT, Y)) == pytest.approx(1.0)
    worse = PERT.copy()
    worse[3] = [0, 0, 2]
    assert float(retention_rate(CLEAN, worse, Y)) == pytest.approx((2 / 4) / (3 / 4))
    assert np.isnan(float(retention_rate(PERT[:1], PERT[:1], np.array([0], np.int32))))


def test_robustness_curve_hand_case():
    min_eps = np.array([0.0, 0.1, 0.25, np.inf, 0.3])
    eps = np.array([0.0, 0.1, 0.2, 0.3, 1.0])
    np.testing.assert_allclose(robustness_curve(min_eps, eps), [0.2, 0.4, 0.4, 0.8, 0.8])
    merged = RobustnessCurve.from_min_eps(min_eps[:2], eps).merge(
        RobustnessCurve.from_min_eps(min_eps[2:], eps))
    np.testing.assert_allclose(merged.compute(), [0.2, 0.4, 0.4, 0.8, 0.8])
    np.testing.assert_allclose(RobustnessCurve.empty(eps).merge(merged).compute(),
                               merged.compute())
    with pytest.raises(ValueError, match="different eps grids"):
        merged.merge(RobustnessCurve.from_min_eps(min_eps, eps * 2))


def _available(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_shared_implementations_forward_or_say_missing():
    """Forwarding to the one mCE / eq. (5) implementation; a clear error before the merge."""
    if _available("robustjax.corruptions.metrics"):
        # AlexNet's mean gaussian_noise error is .886428: half of it gives CE = 0.5
        assert corruption_error([0.443214] * 5, "gaussian_noise") == pytest.approx(0.5)
        assert callable(mce)
    else:
        with pytest.raises(ImportError, match="robustjax.corruptions.metrics"):
            mce({"gaussian_noise": [0.5] * 5})
    lower = np.array([[1.0, -1.0, 0.0], [1.0, 2.0, 0.0]], np.float32)
    upper = np.array([[2.0, 0.5, 0.9], [3.0, 2.5, 0.5]], np.float32)
    y = np.array([0, 1], np.int32)
    if _available("robustjax.certify"):
        # ex. 0: lower_0 = 1 > upper_1 = .5, upper_2 = .9; ex. 1: lower_1 = 2 < upper_0 = 3
        np.testing.assert_array_equal(robust_condition(lower, upper, y), [True, False])
    else:
        with pytest.raises(ImportError, match="robustjax.certify"):
            robust_condition(lower, upper, y)
