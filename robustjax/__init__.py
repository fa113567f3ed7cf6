"""robustjax: measure and improve the robustness of vision models, in JAX."""

from robustjax.types import Model, ModelSpec, check_batch, check_images, check_labels  # noqa: F401

__version__ = "0.1.0"
