"""Input-transformation defenses: ``defend(model, get(name, **kwargs)) -> Model``.

``base`` holds the ``Transformation`` type, the wrapper and its adaptive versions (``bpda``,
``eot``, ``adaptive``); ``registry`` the defenses by name; ``ops``, ``jpeg``, ``smoothing`` and
``randomization`` the pure functions on NHWC batches in [0, 1].
"""

from robustjax.defenses.transforms.base import (  # noqa: F401
    Bound,
    DefendedApply,
    DefendedParams,
    Transformation,
    adaptive,
    bpda,
    defend,
    eot,
    identity,
)
from robustjax.defenses.transforms.jpeg import jpeg_differentiable, jpeg_exact  # noqa: F401
from robustjax.defenses.transforms.ops import bit_depth_reduction, median_filter  # noqa: F401
from robustjax.defenses.transforms.randomization import random_resize_pad  # noqa: F401
from robustjax.defenses.transforms.registry import TRANSFORMS, get  # noqa: F401
from robustjax.defenses.transforms.smoothing import (  # noqa: F401
    gaussian_filter,
    mean_filter,
    total_variation,
    tv_minimisation,
)
