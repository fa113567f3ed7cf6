"""The tfds path. tfds' own mock_data needs TensorFlow (hundreds of MB), which CI does not
install; a stand-in module checks our conversion and error handling instead."""

import sys
import types

import numpy as np
import pytest

from robustjax import data, datasets_tfds


def test_missing_tfds_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ModuleNotFoundError, match=r"robustjax\[tfds\]"):
        data.load("cifar10", "test")


def _fake_tfds(examples, fail=False):
    calls = {}

    def load(name, split, data_dir, download, as_supervised):
        calls.update(name=name, split=split, download=download)
        if fail:
            raise RuntimeError("Dataset not found")
        return examples

    return types.SimpleNamespace(load=load, as_numpy=lambda ds: iter(ds)), calls


def test_conversion_to_float_nhwc(monkeypatch):
    rng = np.random.default_rng(0)
    exs = [{"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": i}
           for i in range(3)]
    fake, calls = _fake_tfds(exs)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    x, y = data.load("cifar10", "test", limit=3)
    assert calls == {"name": "cifar10", "split": "test[:3]", "download": False}
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32 and y.tolist() == [0, 1, 2]
    np.testing.assert_allclose(x[1] * 255, exs[1]["image"], atol=1e-4)


def test_corrupted_needs_config_and_absent_data_explains(monkeypatch):
    fake, calls = _fake_tfds([], fail=True)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    with pytest.raises(ValueError, match="gaussian_noise_3"):
        data.load("cifar10_corrupted", "test")
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_val.tar"):
        data.load("imagenet2012_corrupted", "test", config="fog_2")
    assert calls["name"] == "imagenet2012_corrupted/fog_2"


def test_imagenet_resized_to_224(monkeypatch):
    exs = [{"image": np.full((300, 400, 3), 128, np.uint8), "label": 5}]
    fake, _ = _fake_tfds(exs)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    x, y = datasets_tfds.load("imagenet2012", "validation")
    assert x.shape == (1, 224, 224, 3) and y.tolist() == [5]
