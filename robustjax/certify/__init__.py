"""Certified robustness: bound propagation over any JAX function (IBP, CROWN, Fast-Lin,
CROWN-IBP, alpha-CROWN), certified training losses, randomized smoothing and CLEVER."""

from robustjax.certify.api import (METHODS, bounds, certify, margin_condition, margin_spec,
                                   robust_condition, verified_accuracy)
from robustjax.certify.clever import CleverConfig, clever_targeted, clever_untargeted
from robustjax.certify.crown import AlphaCrownConfig
from robustjax.certify.ibp import IBP_RULES, Interval, propagate
from robustjax.certify.interpreter import UnsupportedPrimitiveError, flatten
from robustjax.certify.smoothing import SmoothingConfig
from robustjax.certify.training import (CertifiedTrainingConfig, certified_loss,
                                        train_certified)

__all__ = [
    "METHODS", "bounds", "certify", "margin_condition", "margin_spec", "robust_condition",
    "verified_accuracy", "CleverConfig", "clever_targeted", "clever_untargeted",
    "AlphaCrownConfig", "IBP_RULES", "Interval", "propagate", "UnsupportedPrimitiveError",
    "flatten", "SmoothingConfig", "CertifiedTrainingConfig", "certified_loss", "train_certified",
]
