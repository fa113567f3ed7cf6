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

import numpy as np

from robustjax.corruptions.registry import CORRUPTIONS, SEVERITIES

_SAME = {name: name for name in CORRUPTIONS}
TFDS_NAMES = {
    "imagenet2012_corrupted": dict(_SAME),
    "cifar10_corrupted": {**_SAME, "glass_blur": "frosted_glass_blur", "elastic_transform": "elastic"},
}
_HOW_TO = {
    "imagenet2012_corrupted": (
        "imagenet2012_corrupted is built from the ImageNet validation set, which TFDS cannot "
        "download: get ILSVRC2012_img_val.tar from https://image-net.org (registration needed), "
        "put it in <data_dir>/downloads/manual/ (default ~/tensorflow_datasets/downloads/manual), "
        "then call this reader with download=True (or run `tfds build "
        "imagenet2012_corrupted/<name>_<severity>`)."
    ),
    "cifar10_corrupted": (
        "cifar10_corrupted is downloaded by TFDS (2.7 GiB, from Zenodo): call this reader with "
        "download=True on a machine with internet access, or run `tfds build "
        "cifar10_corrupted/<name>_<severity>` and pass its data_dir."
    ),
}


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "reading the released ImageNet-C / CIFAR-10-C needs tensorflow-datasets (and "
            "tensorflow): pip install robustjax[tfds]   (or: pip install tensorflow-datasets "
            "tensorflow). To corrupt your own images no extra package is needed: use "
            "robustjax.corruptions.corrupt."
        ) from err
    return tfds


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
    name = tfds_config(dataset, corruption, severity)
    split = split or ("validation" if dataset == "imagenet2012_corrupted" else "test")
    tfds = _import_tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name} is not prepared in {data_dir or 'the default data_dir'}. "
            + _HOW_TO[dataset]
        )
    if limit is not None:
        split = f"{split}[:{int(limit)}]"
    xs, ys = [], []
    for image, label in tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True)):
        xs.append(np.asarray(image))
        ys.append(int(label))
    if not xs:
        return np.zeros((0, 0, 0, 3), np.float32), np.zeros((0,), np.int32)
    return np.stack(xs).astype(np.float32) / 255.0, np.asarray(ys, np.int32)
