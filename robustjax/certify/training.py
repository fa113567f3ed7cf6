"""Certified training moved to ``robustjax.train.certified``; this name stays for old imports."""

from robustjax.train.certified import (  # noqa: F401
    CertifiedTrainingConfig, certified_loss, linear_ramp, schedules, train_certified,
    worst_case_logits)
