"""The tfds readers against tensorflow-datasets itself: the real builders of cifar10,
cifar10_corrupted, imagenet2012, imagenet2012_corrupted and imagenette under
``tfds.testing.mock_data`` (random examples with each builder's real features, offline).

tensorflow-cpu and tensorflow-datasets are in the test extra: without them this module fails
to import, on purpose (no skip).
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from robustjax import data, datasets_tfds
from robustjax.corruptions import CORRUPTIONS, SEVERITIES, load_corrupted, tfds_readers
from robustjax.data import resize_center_crop_uint8

N = 3  # mock examples read per dataset


def raw(name, split, n):
    """The first n examples tfds itself yields (uint8 images, int labels) for a mocked split
    (mock_data ignores split slices, hence the explicit n)."""
    ds = tfds.load(name, split=split, as_supervised=True)
    return [(np.asarray(im), int(lab)) for im, lab in tfds.as_numpy(ds.take(n))]


@pytest.mark.parametrize("name,config,shape", [
    ("cifar10", None, (32, 32, 3)),
    ("cifar10_corrupted", "frosted_glass_blur_3", (32, 32, 3)),
    ("imagenet2012", None, (224, 224, 3)),
    ("imagenet2012_corrupted", "fog_2", (224, 224, 3)),
    ("imagenette", None, (224, 224, 3)),
])
def test_real_builders_read_as_float_nhwc(name, config, shape):
    full = f"{name}/{config}" if config else name
    with tfds.testing.mock_data(num_examples=2 * N):
        x, y = data.load(name, "test", config=config, limit=N)
        split = datasets_tfds.DATASETS[name][1]
        ref = raw(full, f"{split}[:{N}]", N)
        n_classes = tfds.builder(full).info.features["label"].num_classes
    assert x.shape == (N,) + shape and x.dtype == np.float32
    assert y.dtype == np.int32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(y, [lab for _, lab in ref])
    assert np.all((y >= 0) & (y < n_classes))
    for xi, (im, _) in zip(x, ref):
        if im.shape != shape:  # variable-size images: resized and center-cropped to 224
            assert name in ("imagenet2012", "imagenette")
            im = resize_center_crop_uint8(im, 224, 256)
        np.testing.assert_array_equal(np.round(xi * 255).astype(np.uint8), im)


def test_variable_size_images_differ_and_size_is_respected():
    """The mocked ImageNet/Imagenette images really vary in size (so np.stack alone would
    fail) and an explicit size wins over the default 224."""
    with tfds.testing.mock_data(num_examples=N):
        shapes = {im.shape for im, _ in raw("imagenette", "validation", N)}
        x, _ = datasets_tfds.load("imagenette", "validation", size=64)
    assert len(shapes) > 1
    assert x.shape == (N, 64, 64, 3)


@pytest.mark.parametrize("dataset", sorted(tfds_readers.TFDS_NAMES))
def test_every_corruption_is_a_real_config(dataset):
    configs = {c.name for c in tfds.builder_cls(dataset).BUILDER_CONFIGS}
    for corruption in CORRUPTIONS:
        for s in SEVERITIES:
            assert tfds_readers.tfds_config(dataset, corruption, s).split("/")[1] in configs


@pytest.mark.parametrize("dataset,corruption", [
    ("cifar10_corrupted", "elastic_transform"),
    ("imagenet2012_corrupted", "glass_blur"),
])
def test_load_corrupted_through_the_real_builder(dataset, corruption):
    with tfds.testing.mock_data(num_examples=N):
        x, y = load_corrupted(dataset, corruption, 4, limit=2)
        ref = raw(tfds_readers.tfds_config(dataset, corruption, 4),
                  f"{datasets_tfds.DATASETS[dataset][1]}[:2]", 2)
    side = 32 if dataset.startswith("cifar") else 224
    assert x.shape == (2, side, side, 3) and y.tolist() == [lab for _, lab in ref]
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8),
                                  np.stack([im for im, _ in ref]))


@pytest.mark.parametrize("name,config,hint", [
    ("cifar10", None, "tfds build cifar10"),
    ("imagenet2012_corrupted", "fog_2", "ILSVRC2012_img_val.tar"),
])
def test_unprepared_real_data_dir_explains_and_downloads_nothing(tmp_path, name, config, hint):
    with pytest.raises(FileNotFoundError, match=hint):
        datasets_tfds.load(name, "test", config=config, data_dir=str(tmp_path))
    assert not any(tmp_path.rglob("*"))  # nothing fetched or prepared
