import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import Model, ModelSpec, check_batch, check_images, check_labels
from robustjax.types import normalize


def test_model_spec_validates_fields():
    with pytest.raises(ValueError, match="input_shape"):
        ModelSpec("m", (28, 28), 10)
    with pytest.raises(ValueError, match="mean must have 1 or 3"):
        ModelSpec("m", (8, 8, 3), 10, mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="std must be positive"):
        ModelSpec("m", (8, 8, 1), 10, std=(0.0,))
    with pytest.raises(ValueError, match="class_names has 2"):
        ModelSpec("m", (8, 8, 1), 3, class_names=("a", "b"))


def test_model_spec_dict_round_trip():
    spec = ModelSpec("m", (8, 8, 3), 2, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0), ("a", "b"), "x", 0.9)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_normalize_per_channel():
    x = jnp.ones((2, 3, 3, 3)) * 0.5
    out = normalize(x, (0.5, 0.25, 0.0), (1.0, 0.25, 0.5))
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 1.0, 1.0])


def test_model_call_is_apply_fn():
    model = Model(lambda p, x: x.sum((1, 2, 3))[:, None] * p, 2.0, ModelSpec("m", (2, 2, 1), 1))
    np.testing.assert_allclose(model(jnp.ones((1, 2, 2, 1))), [[8.0]])


@pytest.mark.parametrize("bad, err, msg", [
    (np.zeros((28, 28, 1), np.float32), ValueError, "NHWC"),
    (np.zeros((1, 28, 28, 1), np.uint8), TypeError, "astype"),
    (np.full((1, 28, 28, 1), 2.0, np.float32), ValueError, r"\[0, 1\]"),
    (np.full((1, 28, 28, 1), -0.1, np.float32), ValueError, r"\[0, 1\]"),
    (np.full((1, 28, 28, 1), np.nan, np.float32), ValueError, "NaN"),
])
def test_check_images_errors(bad, err, msg):
    with pytest.raises(err, match=msg):
        check_images(bad)


def test_check_images_shape_mismatch():
    with pytest.raises(ValueError, match=r"expects \(28, 28, 1\)"):
        check_images(np.zeros((1, 32, 32, 3), np.float32), (28, 28, 1))
    check_images(np.zeros((1, 28, 28, 1), np.float32), (28, 28, 1))


def test_check_labels_errors():
    with pytest.raises(ValueError, match="vector"):
        check_labels(np.zeros((2, 1), np.int32))
    with pytest.raises(TypeError, match="integer"):
        check_labels(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        check_labels(np.array([0, 10]), 10)
    with pytest.raises(ValueError, match="3 labels but there are 2"):
        check_batch(np.zeros((2, 4, 4, 1), np.float32), np.zeros(3, np.int32))


def test_checks_skip_values_under_jit():
    # Under jit there are no values to check; shape/dtype checks still apply.
    jax.jit(lambda x: (check_images(x), x)[1])(jnp.full((1, 2, 2, 1), 5.0))
    with pytest.raises(ValueError, match="NHWC"):
        jax.jit(lambda x: (check_images(x), x)[1])(jnp.zeros((2, 2, 1)))
