import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.models import MODELS, create

SMALL = {"mlp": {}, "cnn": {}, "resnet18_cifar": {"widths": (4, 8, 8, 8), "blocks": (1, 1, 1, 1)}}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_output_shape_dtype_and_determinism(name):
    model = create(name, **SMALL[name])
    x = jax.random.uniform(jax.random.PRNGKey(1), (3,) + model.spec.input_shape)
    out = model(x)
    assert out.shape == (3, model.spec.num_classes) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, create(name, **SMALL[name])(x))
    feats = model.embed_fn(model.params, x)
    assert feats.ndim == 2 and feats.shape[0] == 3
    # Different init keys give different weights.
    other = create(name, key=jax.random.PRNGKey(7), **SMALL[name])
    assert not np.allclose(out, other(x))


def test_resnet_batchnorm_is_inference_mode():
    model = create("resnet18_cifar", **SMALL["resnet18_cifar"])
    assert "batch_stats" in model.params
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3))
    # Inference mode: each example's output does not depend on the rest of the batch.
    np.testing.assert_allclose(model(x)[:1], model(x[:1]), rtol=1e-5, atol=1e-5)


def test_cnn_has_no_batchnorm_and_normalisation_is_inside():
    model = create("cnn", num_classes=3, input_shape=(8, 8, 1), channels=(2, 4), hidden=5)
    assert set(model.params) == {"params"}
    assert model(jnp.zeros((1, 8, 8, 1))).shape == (1, 3)
    resnet = create("resnet18_cifar", **SMALL["resnet18_cifar"])
    assert resnet.spec.mean != (0.0,)


def test_create_errors():
    with pytest.raises(KeyError, match="valid names: .*cnn"):
        create("not_a_model")
    with pytest.raises(TypeError, match="bad override"):
        create("cnn", depth=3)


def test_registry_specs_are_consistent():
    for name, entry in MODELS.items():
        assert entry.spec.name == name
