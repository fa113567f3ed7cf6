"""Natural corruptions (ImageNet-C), spatial distortions, ImageNet-P sequences and their metrics."""

from robustjax.corruptions.registry import (
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    HOST_CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corrupt_all,
)
