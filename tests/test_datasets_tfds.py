"""The tfds path with a stand-in module: what tfds' own mock_data cannot show (a missing
tensorflow-datasets, that nothing is downloaded unless asked). The real builders under
``tfds.testing.mock_data`` are tested in test_datasets_tfds_real.py."""

import sys
import types

import numpy as np
import pytest

from robustjax import data, datasets_tfds


def test_missing_tfds_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ModuleNotFoundError, match=r"robustjax\[tfds\]"):
        data.load("cifar10", "test")


def _fake_tfds(examples, prepared=True):
    """A stand-in with the builder API robustjax uses; records what was asked."""
    calls = {}

    class Builder:
        # like tfds: ImageNet's images have no fixed size
        info = types.SimpleNamespace(supervised_keys=("image", "label"), features={
            "image": types.SimpleNamespace(shape=(None, None, 3))})

        def __init__(self, name, data_dir=None):
            calls["name"] = name

        def download_and_prepare(self):
            calls["downloaded"] = True

        def as_dataset(self, split, as_supervised):
            if not prepared:  # tfds' message
                raise AssertionError("Dataset x: could not find data in /nowhere. Please make "
                                     "sure to call dataset_builder.download_and_prepare()")
            calls["split"] = split
            return [(ex["image"], ex["label"]) for ex in examples]

    return types.SimpleNamespace(builder=Builder, as_numpy=lambda ds: iter(ds)), calls


def test_conversion_to_float_nhwc(monkeypatch):
    rng = np.random.default_rng(0)
    exs = [{"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": i}
           for i in range(3)]
    fake, calls = _fake_tfds(exs)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    x, y = data.load("cifar10", "test", limit=3, size=32)
    assert calls == {"name": "cifar10", "split": "test[:3]"}  # nothing downloaded
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32 and y.tolist() == [0, 1, 2]
    np.testing.assert_allclose(x[1] * 255, exs[1]["image"], atol=1e-4)


def test_corrupted_needs_config_and_absent_data_explains(monkeypatch):
    fake, calls = _fake_tfds([], prepared=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    with pytest.raises(ValueError, match="gaussian_noise_3"):
        data.load("cifar10_corrupted", "test")
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_val.tar"):
        data.load("imagenet2012_corrupted", "test", config="fog_2")
    assert calls["name"] == "imagenet2012_corrupted/fog_2" and "downloaded" not in calls
    with pytest.raises(FileNotFoundError):  # the stand-in's download prepares nothing
        data.load("imagenet2012_corrupted", "test", config="fog_2", download=True)
    assert calls["downloaded"]


def test_imagenet_resized_to_224(monkeypatch):
    exs = [{"image": np.full((300, 400, 3), 128, np.uint8), "label": 5}]
    fake, _ = _fake_tfds(exs)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    x, y = datasets_tfds.load("imagenet2012", "validation")
    assert x.shape == (1, 224, 224, 3) and y.tolist() == [5]
