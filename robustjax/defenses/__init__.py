"""Defenses that wrap or watch a trained model (survey section 4).

Three rooms:

* ``robustjax.train``: training recipes (robust losses for adversarial, certified and distilled
  training, composed with an ordinary optax chain);
* ``robustjax.defenses.transforms``: input transformations as ``Model -> Model`` wrappers, each
  declaring whether it is differentiable so that evaluation attacks it adaptively;
* ``robustjax.defenses.detectors``: adversarial-example detectors (a score per example and a
  threshold at a chosen false-positive rate).

``robustjax.defenses.evaluation`` attacks a defended model naively and adaptively and flags
gradient masking.
"""
from robustjax.defenses import detectors  # noqa: E402,F401
from robustjax.defenses import evaluation, transforms  # noqa: E402,F401
