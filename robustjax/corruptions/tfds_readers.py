"""Readers for the released corruption benchmarks in TensorFlow Datasets.

``imagenet2012_corrupted`` (ImageNet-C built by TFDS from the ImageNet validation tar, which
must be downloaded by hand) and ``cifar10_corrupted`` (CIFAR-10-C, 2.7 GiB download). Their
config names are ``<corruption>_<severity>``; CIFAR-10-C spells two corruptions differently
(``frosted_glass_blur``, ``elastic``), mapped here from robustjax's (imagecorruptions') names.

``tensorflow_datasets`` is imported only when a reader is called; without it, or without the
prepared data, the reader raises an error that says how to get them. On the embedded datasets
robustjax generates corruptions on the fly instead (``robustjax.corruptions.corrupt``).
"""

from __future__ import annotations

from robustjax.corruptions.registry import CORRUPTIONS, SEVERITIES

_SAME = {name: name for name in CORRUPTIONS}
TFDS_NAMES = {
    "imagenet2012_corrupted": dict(_SAME),
    "cifar10_corrupted": {**_SAME, "glass_blur": "frosted_glass_blur", "elastic_transform": "elastic"},
}
def tfds_config(dataset: str, corruption: str, severity: int) -> str:
    """The TFDS name, e.g. ``tfds_config('cifar10_corrupted', 'glass_blur', 3)`` ->
    ``'cifar10_corrupted/frosted_glass_blur_3'``."""
    if dataset not in TFDS_NAMES:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(TFDS_NAMES)}")
    if corruption not in TFDS_NAMES[dataset]:
        raise ValueError(f"unknown corruption {corruption!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    return f"{dataset}/{TFDS_NAMES[dataset][corruption]}_{severity}"


def load_corrupted(dataset: str, corruption: str, severity: int, *, split: str | None = None,
                   data_dir: str | None = None, limit: int | None = None,
                   download: bool = False):
    """Loads one (corruption, severity) block of a released benchmark.

    Args:
      dataset: ``'imagenet2012_corrupted'`` or ``'cifar10_corrupted'``.
      corruption: robustjax name (a key of ``CORRUPTIONS``).
      severity: 1..5.
      split: default ``'validation'`` (ImageNet-C) or ``'test'`` (CIFAR-10-C).
      data_dir: TFDS data directory (default: TFDS's).
      limit: read only the first ``limit`` examples.
      download: let TFDS download/prepare the data if it is missing.

    Returns:
      ``(x, y)``: float32 ``[n, H, W, 3]`` in [0, 1] (224 x 224 for ImageNet-C, 32 x 32 for
      CIFAR-10-C) and int32 ``[n]`` labels.
    """
    from robustjax import datasets_tfds

    config = tfds_config(dataset, corruption, severity).split("/", 1)[1]
    return datasets_tfds.load(dataset, split, data_dir=data_dir, config=config, limit=limit,
                              download=download, size=None)
