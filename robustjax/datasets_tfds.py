"""Real datasets through tensorflow-datasets (optional extra ``robustjax[tfds]``).

Nothing is downloaded implicitly: unless ``download=True``, a dataset that tfds has not prepared
fails fast with instructions instead of starting a multi-GB download on a cluster node. This is
the one tfds reader; ``robustjax.corruptions.load_corrupted`` maps corruption names onto it.
"""

from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

# name -> (tfds name, default split, how to get the data)
DATASETS = {
    "imagenet2012": ("imagenet2012", "validation",
                     "ImageNet needs the manual tars: download ILSVRC2012_img_val.tar (and "
                     "ILSVRC2012_img_train.tar for train) from image-net.org into "
                     "<data_dir>/downloads/manual/, then run `tfds build imagenet2012`."),
    "imagenet2012_corrupted": ("imagenet2012_corrupted", "validation",
                               "ImageNet-C is built from the ImageNet validation set, which tfds "
                               "cannot download: get ILSVRC2012_img_val.tar from image-net.org, "
                               "put it in <data_dir>/downloads/manual/, then call with "
                               "download=True or run `tfds build "
                               "imagenet2012_corrupted/<corruption>_<1-5>`."),
    "cifar10": ("cifar10", "test", "run `tfds build cifar10` on a machine with internet, then "
                "copy <data_dir>/cifar10 to this machine."),
    "cifar10_corrupted": ("cifar10_corrupted", "test",
                          "tfds downloads CIFAR-10-C (2.9 GB): call with download=True on a "
                          "machine with internet access, or run `tfds build "
                          "cifar10_corrupted/<corruption>_<1-5>` and pass its data_dir."),
    "imagenette": ("imagenette", "validation", "run `tfds build imagenette` on a machine with "
                   "internet, then copy <data_dir>/imagenette to this machine."),
}


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ModuleNotFoundError(
            "this dataset is read with tensorflow-datasets (and tensorflow), which is not "
            "installed: pip install robustjax[tfds]   (quote it in zsh). To corrupt your own "
            "images no extra package is needed: use robustjax.corruptions.corrupt.") from None
    return tfds


def _to_arrays(examples, size: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for image, label in examples:
        img = np.asarray(image)
        if size is not None and img.shape[:2] != (size, size):
            from robustjax.data import resize_center_crop_uint8

            img = resize_center_crop_uint8(img, size, int(round(size / 0.875)))
        xs.append(img)
        ys.append(int(label))
    if not xs:
        return np.zeros((0, 0, 0, 3), np.float32), np.zeros((0,), np.int32)
    x = np.stack(xs).astype(np.float32) / 255.0
    return x, np.asarray(ys, np.int32)


def _varies_in_size(builder) -> bool:
    """Whether the builder's images have no fixed height and width (ImageNet, Imagenette)."""
    info = builder.info
    key = info.supervised_keys[0] if info.supervised_keys else "image"
    shape = getattr(info.features[key], "shape", (None,))
    return None in tuple(shape)[:2]


def load(name: str, split: Optional[str] = None, *, data_dir: Optional[str] = None,
         config: Optional[str] = None, size: Optional[int] = None,
         limit: Optional[int] = None, download: bool = False
         ) -> tuple[np.ndarray, np.ndarray]:
    """Load a tfds dataset as float32 NHWC [0, 1] images and int32 labels.

    Args:
      name: a key of ``DATASETS``.
      split: a tfds split string; ``"test"`` maps to the dataset's evaluation split.
      data_dir: tfds data directory (default: tfds's own, ``~/tensorflow_datasets``).
      config: builder config, e.g. ``"gaussian_noise_3"`` for the corrupted datasets.
      size: resize (short side to size/0.875, bicubic) and center-crop to ``size`` x ``size``.
        Datasets whose images differ in size (ImageNet, Imagenette) default to 224.
      limit: read at most this many examples.
      download: let tfds download and prepare the data if it is missing (never by default).
    """
    if name not in DATASETS:
        raise KeyError(f"unknown tfds dataset {name!r}; valid names: {', '.join(DATASETS)}")
    tfds_name, default_split, how = DATASETS[name]
    if split in (None, "test", "all"):
        split = default_split
    if name.endswith("_corrupted") and config is None:
        raise ValueError(f"{name} needs config='<corruption>_<severity>', "
                         f"e.g. config='gaussian_noise_3'")
    tfds = _import_tfds()
    full = f"{tfds_name}/{config}" if config else tfds_name
    if limit is not None:
        split = f"{split}[:{int(limit)}]"
    builder = tfds.builder(full, data_dir=data_dir)
    if size is None and _varies_in_size(builder):
        size = 224
    if download:
        builder.download_and_prepare()
    # Whether the data is there is asked of as_dataset, not is_prepared(): the answer is the
    # same on disk, and tfds.testing.mock_data (which patches reading, not is_prepared) works.
    try:
        ds = builder.as_dataset(split=split, as_supervised=True)
    except AssertionError as e:  # tfds: "Dataset ...: could not find data in <data_dir>"
        if "could not find data" not in str(e):
            raise
        raise FileNotFoundError(
            f"tfds dataset {full!r} is not prepared in tfds data_dir "
            f"{data_dir or '~/tensorflow_datasets'}. How to get it: {how}") from None
    examples = tfds.as_numpy(ds)
    if limit is not None:  # also where a split slice is ignored (tfds.testing.mock_data)
        examples = itertools.islice(examples, int(limit))
    return _to_arrays(examples, size)
