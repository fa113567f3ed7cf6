"""Model registry and constructors.

``create(name, num_classes=..., **overrides) -> Model`` builds a randomly initialised model;
``embedded_default()`` returns the small CNN trained on mnist5k (cached).
"""

from __future__ import annotations

from robustjax.models.registry import MODELS, create, wrap  # noqa: F401
from robustjax.models.default import embedded_default  # noqa: F401,E402
