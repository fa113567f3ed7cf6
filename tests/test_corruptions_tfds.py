"""The TFDS readers with a stand-in module: the name mapping, a missing tensorflow-datasets and
the conversion to float32 [0, 1] images. The real builders under ``tfds.testing.mock_data``
are tested in test_datasets_tfds_real.py."""

import sys
import types

import numpy as np
import pytest

from robustjax.corruptions import tfds_readers


def test_names_map_to_tfds_configs():
    assert tfds_readers.tfds_config("cifar10_corrupted", "glass_blur", 3) == (
        "cifar10_corrupted/frosted_glass_blur_3")
    assert tfds_readers.tfds_config("cifar10_corrupted", "elastic_transform", 1) == (
        "cifar10_corrupted/elastic_1")
    assert tfds_readers.tfds_config("imagenet2012_corrupted", "glass_blur", 5) == (
        "imagenet2012_corrupted/glass_blur_5")
    with pytest.raises(ValueError, match="valid"):
        tfds_readers.tfds_config("cifar10_corrupted", "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        tfds_readers.tfds_config("cifar10_corrupted", "fog", 6)


def test_missing_tfds_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install robustjax\[tfds\]"):
        tfds_readers.load_corrupted("cifar10_corrupted", "fog", 1)


class _Builder:
    info = types.SimpleNamespace(supervised_keys=("image", "label"), features={
        "image": types.SimpleNamespace(shape=(32, 32, 3))})

    def __init__(self, name, prepared):
        self.name, self.prepared = name, prepared

    def as_dataset(self, split, as_supervised):
        assert as_supervised
        if not self.prepared:  # tfds' message
            raise AssertionError("Dataset x: could not find data in /nowhere.")
        self.split = split
        rng = np.random.default_rng(0)
        return [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), i % 10) for i in range(3)]


def _fake_tfds(prepared, seen):
    mod = types.ModuleType("tensorflow_datasets")

    def builder(name, data_dir=None):
        b = _Builder(name, prepared)
        seen.append(b)
        return b

    mod.builder = builder
    mod.as_numpy = lambda ds: iter(ds)
    return mod


def test_absent_data_says_how_to_get_it(monkeypatch):
    seen = []
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds(False, seen))
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_val.tar"):
        tfds_readers.load_corrupted("imagenet2012_corrupted", "fog", 2)
    with pytest.raises(FileNotFoundError, match="download=True"):
        tfds_readers.load_corrupted("cifar10_corrupted", "fog", 2)
    assert seen[0].name == "imagenet2012_corrupted/fog_2"


def test_reader_converts_images(monkeypatch):
    seen = []
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds(True, seen))
    x, y = tfds_readers.load_corrupted("cifar10_corrupted", "glass_blur", 4, limit=3)
    assert seen[0].name == "cifar10_corrupted/frosted_glass_blur_4"
    assert seen[0].split == "test[:3]"
    assert x.dtype == np.float32 and x.shape == (3, 32, 32, 3)
    assert 0 <= x.min() and x.max() <= 1 and y.dtype == np.int32
    np.testing.assert_array_equal(y, [0, 1, 2])
