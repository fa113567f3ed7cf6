"""Natural corruptions (ImageNet-C), spatial distortions, ImageNet-P sequences and their metrics.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019; parameters as in imagecorruptions(-imaug), the reference package.

* ``corrupt(x, name, severity, key)``: a batch float32 ``[B, H, W, C]`` in [0, 1] (C = 1 or 3)
  -> same shape. ``CORRUPTIONS`` lists the 15 benchmark corruptions then the 4 extras. All are
  jittable and vmappable; one calls the host through ``jax.pure_callback`` (CPU, not
  differentiable): ``jpeg_compression`` (Pillow's codec). Frost reads its six texture images
  (robustjax/assets/frost, from imagecorruptions, Apache-2.0) once per image size on the host;
  glass blur runs the reference's sequential pixel moves as parallel waves with exactly the
  sequential result; spatter's water drops compute Canny edges and a distance transform in JAX.
  The same key gives the same output; per-pixel draws use Philox-2x32-10 keyed by ``key``
  (``_philox``) and differ from the reference's NumPy ones (statistics match).
* Image size: the reference parameters are for 224 x 224 images. Relative ones (zoom factors,
  pixelate, elastic, fog's map) follow any size as in the reference; pixel-unit ones (blur radii
  and sigmas, glass-blur shifts, snow/motion blur lengths, spatter sigmas, frost texture scale)
  stay as published unless ``scale_pixels=True`` multiplies them by ``min(H, W) / 224``.
* Grayscale ``[..., 1]`` images are replicated to RGB (as the reference does) and the result is
  returned as its ITU-R 601 luma.
* Reference quirks kept on purpose: glass blur's 'swap' copies (NumPy view aliasing), motion blur
  stops its kernel at the image border without renormalising, ImageNet-P's tilt shrinks by
  f / (1 + f) at 0 degrees.
"""

from robustjax.corruptions.registry import (
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    HOST_CORRUPTIONS,
    SEVERITIES,
    TRACED_SEVERITY,
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
    error_rate,
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
