"""Adversarial-example detectors: a score per example (higher = more likely adversarial) and
a threshold at a chosen false-positive rate on clean data.

Every detector is a pair of pure functions plus a frozen config; the fitted state is a pytree
(``flax.struct`` dataclass) that carries its config as static metadata:

=====================  ==============================================  ===========================
name                   fit                                             score -> float32 [b]
=====================  ==============================================  ===========================
``feature_squeezing``  ``fit_feature_squeezing(apply_fn, params,       ``score_feature_squeezing(
                       x_clean, config)``                              apply_fn, params, x, state)``
``spectral``           ``fit_spectral(x_clean, x_adv, config)``        ``score_spectral(x, state)``
``mahalanobis``        ``fit_mahalanobis(embed_fn, params, x_clean,    ``score_mahalanobis(
                       y_clean, config)``                              embed_fn, params, x, state)``
=====================  ==============================================  ===========================

Each takes only what it needs (feature squeezing the logits, Mahalanobis the penultimate
features ``Model.embed_fn``, the spectral detector the pixels alone). Then::

    t = threshold_at_fpr(score(clean_held_out), fpr=0.05)   # FPR on those clean scores <= 5%
    flagged = detect(score(x), t)                             # bool [b]: score > t

``DETECTORS`` maps a name to ``Detector(fit, score, config)``; ``get_detector(name)`` raises a
KeyError listing the valid names.
"""

from typing import Any, Callable, NamedTuple

from robustjax.defenses.detectors._common import detect  # noqa: F401
from robustjax.defenses.detectors.mahalanobis import (  # noqa: F401
    MahalanobisConfig,
    MahalanobisState,
    fit_mahalanobis,
    fit_mahalanobis_features,
    min_distance,
    score_mahalanobis,
)
from robustjax.defenses.detectors.spectral import (  # noqa: F401
    SpectralConfig,
    SpectralState,
    fit_spectral,
    logistic_regression,
    score_spectral,
    spectral_features,
)
from robustjax.defenses.detectors.squeezing import (  # noqa: F401
    FEATURE_SQUEEZING_PRESETS,
    FeatureSqueezingConfig,
    FeatureSqueezingState,
    fit_feature_squeezing,
    non_local_means,
    score_feature_squeezing,
    squeeze,
    squeeze_distances,
)
from robustjax.metrics.detection import threshold_at_fpr  # noqa: F401


class Detector(NamedTuple):
    """A registry entry: the fit and score functions and the config class (its defaults)."""

    fit: Callable[..., Any]
    score: Callable[..., Any]
    config: type


DETECTORS = {
    "feature_squeezing": Detector(fit_feature_squeezing, score_feature_squeezing,
                                  FeatureSqueezingConfig),
    "spectral": Detector(fit_spectral, score_spectral, SpectralConfig),
    "mahalanobis": Detector(fit_mahalanobis, score_mahalanobis, MahalanobisConfig),
}


def get_detector(name: str) -> Detector:
    """``DETECTORS[name]`` with an error that lists the valid names."""
    if name not in DETECTORS:
        raise KeyError(f"unknown detector {name!r}; valid names: {', '.join(DETECTORS)}")
    return DETECTORS[name]
