"""Corruption and perturbation metrics of Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019 — THE implementation of mCE,
relative mCE, mFR and mT5D in robustjax — plus the retention rate (survey eq. 4, Zhou et al.
2022) and the CIFAR-10-C convention.

Errors are fractions in [0, 1] (not percent). ``errors`` arguments map a corruption name to the
five top-1 errors at severities 1..5 (any sequence of 5 floats).

* CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}; mCE = mean of CE_c over the 15 benchmark
  corruptions (the 4 extras are reported, never averaged in).
* relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean).
* The AlexNet normalisers are AlexNet's mean error over the 5 severities (Hendrycks' release),
  so sum_s E^AlexNet_{s,c} = 5 * ALEXNET_ERRORS[c].
* ImageNet-P: FR_p = FP_p / FP^AlexNet_p, mFR = mean over the 10 perturbations; T5D likewise
  with AlexNet's top-5 distances (uT5D).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

ALEXNET_ERRORS = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
# The extras were only published rounded (percent, one decimal).
ALEXNET_EXTRA_ERRORS = {
    "speckle_noise": 0.845,
    "gaussian_blur": 0.787,
    "spatter": 0.718,
    "saturate": 0.658,
}
ALEXNET_CLEAN_ERROR = 0.435  # the paper's value; torchvision's AlexNet measures 0.43478
# ImageNet-P (fractions): AlexNet flip probabilities and top-5 distances, difficulty 1.
ALEXNET_FLIP_PROBABILITY = {
    "gaussian_noise": 0.2365,
    "shot_noise": 0.3006,
    "motion_blur": 0.0930,
    "zoom_blur": 0.0594,
    "snow": 0.1193,
    "brightness": 0.0489,
    "translate": 0.1101,
    "rotate": 0.1310,
    "tilt": 0.0705,
    "scale": 0.2353,
}
ALEXNET_TOP5_DISTANCE = {
    "gaussian_noise": 4.77,
    "shot_noise": 5.76,
    "motion_blur": 1.93,
    "zoom_blur": 1.34,
    "snow": 2.42,
    "brightness": 1.19,
    "translate": 2.63,
    "rotate": 2.95,
    "tilt": 1.75,
    "scale": 4.48,
}


def _normaliser(name: str) -> float:
    if name in ALEXNET_ERRORS:
        return ALEXNET_ERRORS[name]
    if name in ALEXNET_EXTRA_ERRORS:
        return ALEXNET_EXTRA_ERRORS[name]
    valid = ", ".join(list(ALEXNET_ERRORS) + list(ALEXNET_EXTRA_ERRORS))
    raise ValueError(f"no AlexNet error for corruption {name!r}; known: {valid}")


def _five(errors: Sequence[float], name: str) -> np.ndarray:
    e = np.asarray(errors, np.float64)
    if e.shape != (5,):
        raise ValueError(f"{name}: expected 5 errors (severities 1..5), got shape {e.shape}")
    if np.any((e < 0) | (e > 1)):
        raise ValueError(f"{name}: errors must be fractions in [0, 1], got {e}")
    return e


def error_rate(logits, labels) -> float:
    """Top-1 error of ``logits [b, k]`` against int ``labels [b]``."""
    return float(np.mean(np.argmax(np.asarray(logits), -1) != np.asarray(labels)))


def corruption_error(errors: Sequence[float], name: str) -> float:
    """CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c} (a fraction; x100 for the paper's %)."""
    return float(_five(errors, name).sum() / (5 * _normaliser(name)))


def relative_corruption_error(
    errors: Sequence[float], clean_error: float, name: str, alexnet_clean_error=ALEXNET_CLEAN_ERROR
) -> float:
    """Relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean)."""
    e = _five(errors, name)
    return float((e - clean_error).sum() / (5 * (_normaliser(name) - alexnet_clean_error)))


def _benchmark_only(errors: Mapping[str, Sequence[float]]):
    missing = [c for c in ALEXNET_ERRORS if c not in errors]
    if missing:
        raise ValueError(f"mCE needs all 15 benchmark corruptions; missing: {', '.join(missing)}")
    return list(ALEXNET_ERRORS)


def mce(errors: Mapping[str, Sequence[float]]) -> float:
    """Mean CE over the 15 benchmark corruptions (extras in ``errors`` are ignored)."""
    return float(np.mean([corruption_error(errors[c], c) for c in _benchmark_only(errors)]))


def relative_mce(errors: Mapping[str, Sequence[float]], clean_error: float,
                 alexnet_clean_error: float = ALEXNET_CLEAN_ERROR) -> float:
    """Mean relative CE over the 15 benchmark corruptions."""
    names = _benchmark_only(errors)
    return float(np.mean(
        [relative_corruption_error(errors[c], clean_error, c, alexnet_clean_error) for c in names]
    ))


def retention_rate(corrupted_accuracy, clean_accuracy):
    """RetR = PR_corrupt / PR_clean (survey eq. 4) from accuracies; arrays broadcast.

    ``robustjax.metrics.retention_rate_stats`` is the same ratio as a mergeable accumulator
    computed from logits (streams over batches and devices).
    """
    clean_accuracy = np.asarray(clean_accuracy, np.float64)
    if np.any(clean_accuracy <= 0):
        raise ValueError(f"clean accuracy must be > 0, got {clean_accuracy}")
    return np.asarray(corrupted_accuracy, np.float64) / clean_accuracy


def cifar10c_accuracy(accuracies: Mapping[str, Sequence[float]]) -> float:
    """CIFAR-10-C convention: mean accuracy over the 15 benchmark corruptions x 5 severities."""
    names = _benchmark_only(accuracies)
    return float(np.mean([np.mean(_five(accuracies[c], c)) for c in names]))


def mean_corruption_error(errors: Mapping[str, Sequence[float]], names=None) -> float:
    """Unnormalised mean error over corruptions and severities (no AlexNet: e.g. MNIST)."""
    names = list(errors) if names is None else list(names)
    return float(np.mean([np.mean(np.asarray(errors[c], np.float64)) for c in names]))


# ----------------------------------------------------------------------------- ImageNet-P


def flip_probability(predictions, noise: bool, step: int = 1) -> float:
    """FP of Hendrycks & Dietterich's ImageNet-P evaluation (``test.py``'s ``flip_prob``).

    Args:
      predictions: int ``[m, n]`` top-1 predictions for ``m`` sequences of ``n`` frames.
      noise: True for noise sequences (frame 0 is the clean image; every frame is compared
        with it), False for temporal ones (consecutive frames ``step`` apart are compared, for
        each of the ``step`` starting offsets).
      step: the difficulty (frame stride) of temporal sequences.
    """
    p = np.asarray(predictions)
    step = 1 if noise else step
    per_seq = []
    for seq in p:
        flips = []
        for i in range(step):
            sub = seq[i::step]
            ref = np.broadcast_to(sub[0], sub[1:].shape) if noise else sub[:-1]
            flips.append(sub[1:] != ref)
        per_seq.append(np.concatenate(flips).mean())
    return float(np.mean(per_seq))


def _top5_dist(order_a: np.ndarray, rank_b: np.ndarray) -> float:
    # sigma_i = 1-based rank in frame b of frame a's i-th class; distance as the reference code:
    # sum_{i<5} |i - min(sigma_i - 1, 5)|.
    sigma = rank_b[order_a[:5]]
    return float(np.abs(np.arange(5) - np.minimum(sigma - 1, 5)).sum())


def top5_distance(logits, noise: bool, step: int = 1) -> float:
    """uT5D of ImageNet-P (``test.py``'s ``ranking_dist(mode='top5')``) for logits
    ``[m, n, k]`` (``k >= 5``), compared as in ``flip_probability``."""
    z = np.asarray(logits)
    if z.shape[-1] < 5:
        raise ValueError(f"top-5 distance needs >= 5 classes, got logits of shape {z.shape}")
    order = np.argsort(-z, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, z.shape[-1] + 1)[None, None], axis=-1)
    step = 1 if noise else step
    per_seq = []
    for o, r in zip(order, rank):
        d = []
        for i in range(step):
            idx = list(range(i, z.shape[1], step))
            for a, b in zip(idx[:-1], idx[1:]):
                d.append(_top5_dist(o[idx[0]] if noise else o[a], r[b]))
        per_seq.append(np.mean(d))
    return float(np.mean(per_seq))


def flip_rate(fp: float, name: str) -> float:
    """FR_p = FP_p / FP^AlexNet_p."""
    if name not in ALEXNET_FLIP_PROBABILITY:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(ALEXNET_FLIP_PROBABILITY)}")
    return fp / ALEXNET_FLIP_PROBABILITY[name]


def mfr(flip_probabilities: Mapping[str, float]) -> float:
    """Mean flip rate over the perturbations given (all 10 for the published mFR)."""
    return float(np.mean([flip_rate(v, k) for k, v in flip_probabilities.items()]))


def mt5d(top5_distances: Mapping[str, float]) -> float:
    """Mean top-5 distance normalised by AlexNet's, over the perturbations given."""
    for k in top5_distances:
        if k not in ALEXNET_TOP5_DISTANCE:
            raise ValueError(f"unknown perturbation {k!r}; known: {', '.join(ALEXNET_TOP5_DISTANCE)}")
    return float(np.mean([v / ALEXNET_TOP5_DISTANCE[k] for k, v in top5_distances.items()]))
