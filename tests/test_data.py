import numpy as np
import pytest

from robustjax import data


def _check_arrays(x, y):
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.ndim == 4 and len(x) == len(y)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_mnist5k_counts_and_split():
    x_tr, y_tr = data.load("mnist5k", "train")
    x_te, y_te = data.load("mnist5k", "test")
    _check_arrays(x_tr, y_tr)
    assert x_tr.shape == (4000, 28, 28, 1) and x_te.shape == (1000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(y_tr), [400] * 10)
    np.testing.assert_array_equal(np.bincount(y_te), [100] * 10)
    x_all, y_all = data.load("mnist5k", "all")
    assert len(x_all) == 5000
    # train and test are disjoint rows of the same file
    flat_all = {r.tobytes() for r in x_all.reshape(5000, -1)[:50]}
    assert flat_all  # the file is non-degenerate
    assert x_tr.max() == 1.0 and (x_tr > 0).mean() > 0.1  # real digit strokes, scaled by 255


def test_mnist5k_split_is_fixed():
    a = data.load("mnist5k", "test")
    b = data.load("mnist5k", "test")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_digits():
    x, y = data.load("digits", "all")
    _check_arrays(x, y)
    assert x.shape == (1797, 8, 8, 1)
    x_te, y_te = data.load("digits", "test")
    x_tr, _ = data.load("digits", "train")
    assert len(x_te) + len(x_tr) == 1797
    assert set(np.unique(y_te)) == set(range(10))


def test_natural_images_and_labels():
    x, y = data.load("natural")
    _check_arrays(x, y)
    assert x.shape == (len(data.NATURAL_IMAGES), 224, 224, 3)
    names = data.imagenet_class_names()
    assert len(names) == 1000
    labels = {im.name: names[im.label] for im in data.NATURAL_IMAGES}
    assert "tabby" in labels["chelsea"] and labels["coffee"] == "espresso"
    with pytest.raises(ValueError, match="only a 'test' split"):
        data.load("natural", "train")


def test_resize_center_crop_geometry():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 100:] = 255  # right half white
    out = data.resize_center_crop(img, 40, 50, "bilinear")
    assert out.shape == (40, 40, 3)
    assert out[:, :15].max() < 0.05 and out[:, 25:].min() > 0.95


def test_unknown_names_list_valid_ones():
    with pytest.raises(KeyError, match="mnist5k"):
        data.load("mnist")
    with pytest.raises(ValueError, match="unknown split"):
        data.load("mnist5k", "validation")


def test_batches_deterministic_order():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10, dtype=np.int32)
    plain = [b[1].tolist() for b in data.batches(x, y, 4)]
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b[1].tolist() for b in data.batches(x, y, 4, drop_remainder=True)] == plain[:2]
    s1 = [b[1].tolist() for b in data.batches(x, y, 3, shuffle_seed=5)]
    s2 = [b[1].tolist() for b in data.batches(x, y, 3, shuffle_seed=5)]
    assert s1 == s2 and sorted(sum(s1, [])) == list(range(10)) and s1 != plain
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(x, y, 0))
