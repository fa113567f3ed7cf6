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
from robustjax.corruptions.metrics import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    ALEXNET_EXTRA_ERRORS,
    ALEXNET_FLIP_PROBABILITY,
    ALEXNET_TOP5_DISTANCE,
    cifar10c_accuracy,
    corruption_error,
    flip_probability,
    flip_rate,
    mce,
    mean_corruption_error,
    mfr,
    mt5d,
    relative_corruption_error,
    relative_mce,
    retention_rate,
    top5_distance,
)
from robustjax.corruptions.sequences import NOISE_SEQUENCE, PERTURBATIONS, perturbation_sequence
from robustjax.corruptions.spatial import SPATIAL_SEVERITIES, distort
from robustjax.corruptions.tfds_readers import TFDS_NAMES, load_corrupted, tfds_config
