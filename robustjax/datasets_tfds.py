"""Real datasets through tensorflow-datasets (optional extra ``robustjax[tfds]``).

Nothing is downloaded implicitly: tfds is called with ``download=False`` so a missing dataset
fails fast with instructions instead of starting a multi-GB download on a cluster node.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# name -> (tfds name, default split, how to get the data)
DATASETS = {
    "imagenet2012": ("imagenet2012", "validation",
                     "ImageNet needs the manual tars: download ILSVRC2012_img_val.tar (and "
                     "ILSVRC2012_img_train.tar for train) from image-net.org into "
                     "<data_dir>/downloads/manual/, then run `tfds build imagenet2012`."),
    "imagenet2012_corrupted": ("imagenet2012_corrupted", "validation",
                               "ImageNet-C is built from the ImageNet validation tar: put "
                               "ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ and run "
                               "`tfds build imagenet2012_corrupted --config <corruption>_<1-5>`."),
    "cifar10": ("cifar10", "test", "run `tfds build cifar10` on a machine with internet, then "
                "copy <data_dir>/cifar10 to this machine."),
    "cifar10_corrupted": ("cifar10_corrupted", "test",
                          "run `tfds build cifar10_corrupted --config <corruption>_<1-5>` "
                          "(downloads 2.9 GB) and copy <data_dir>/cifar10_corrupted here."),
    "imagenette": ("imagenette", "validation", "run `tfds build imagenette` on a machine with "
                   "internet, then copy <data_dir>/imagenette to this machine."),
}


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ModuleNotFoundError(
            "this dataset is read with tensorflow-datasets, which is not installed: "
            "pip install 'robustjax[tfds]'") from None
    return tfds


def _to_arrays(examples, size: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for ex in examples:
        img = np.asarray(ex["image"])
        if size is not None and img.shape[:2] != (size, size):
            from robustjax.data import resize_center_crop

            img = (resize_center_crop(img, size, int(round(size / 0.875))) * 255).astype(np.uint8)
        xs.append(img)
        ys.append(int(ex["label"]))
    if not xs:
        raise ValueError("the requested split is empty")
    x = np.stack(xs).astype(np.float32) / 255.0
    return x, np.asarray(ys, np.int32)


def load(name: str, split: Optional[str] = None, *, data_dir: Optional[str] = None,
         config: Optional[str] = None, size: Optional[int] = None,
         limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a tfds dataset as float32 NHWC [0, 1] images and int32 labels.

    Args:
      name: a key of ``DATASETS``.
      split: a tfds split string; ``"test"`` maps to the dataset's evaluation split.
      data_dir: tfds data directory (default: tfds's own, ``~/tensorflow_datasets``).
      config: builder config, e.g. ``"gaussian_noise_3"`` for the corrupted datasets.
      size: resize (short side to size/0.875, bicubic) and center-crop to ``size`` x ``size``;
        needed for ImageNet, whose images differ in size.
      limit: read at most this many examples.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown tfds dataset {name!r}; valid names: {', '.join(DATASETS)}")
    tfds_name, default_split, how = DATASETS[name]
    if split in (None, "test", "all"):
        split = default_split
    if name.endswith("_corrupted") and config is None:
        raise ValueError(f"{name} needs config='<corruption>_<severity>', "
                         f"e.g. config='gaussian_noise_3'")
    if name.startswith("imagenet2012") and size is None:
        size = 224
    tfds = _import_tfds()
    full = f"{tfds_name}/{config}" if config else tfds_name
    if limit is not None:
        split = f"{split}[:{int(limit)}]"
    try:
        ds = tfds.load(full, split=split, data_dir=data_dir, download=False,
                       as_supervised=False)
    except Exception as e:  # tfds raises several types for absent data
        raise FileNotFoundError(
            f"could not read {full!r} (split {split!r}) from tfds data_dir "
            f"{data_dir or '~/tensorflow_datasets'}: {e}\nHow to get it: {how}") from None
    return _to_arrays(tfds.as_numpy(ds), size)
