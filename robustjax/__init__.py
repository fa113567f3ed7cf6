"""robustjax: measure and improve the robustness of vision models, in JAX."""

from robustjax.types import Model, ModelSpec, check_batch, check_images, check_labels  # noqa: F401
from robustjax import compilation_cache as _compilation_cache

__version__ = "0.1.0"

# JAX's persistent compilation cache under the robustjax cache folder (never raises; off with
# ROBUSTJAX_COMPILATION_CACHE=0 or robustjax.compilation_cache.disable())
_compilation_cache._enable_on_import()
