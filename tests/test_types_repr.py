"""Short reprs of ModelSpec and Model: a summary, never the 1,000 ImageNet class names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from robustjax.models import create
from robustjax.types import Model, ModelSpec

NAMES = tuple(f"class number {i}, a synonym" for i in range(1000))
IMAGENET = ModelSpec("convnext_tiny", (224, 224, 3), 1000, (0.485, 0.456, 0.406),
                     (0.229, 0.224, 0.225), class_names=NAMES, crop_pct=0.875)


def test_spec_repr_summarises_class_names():
    text = repr(IMAGENET)
    assert len(text) < 300, text
    assert "'class number 0', 'class number 1', 'class number 2', ... +997 more" in text
    assert "class number 3" not in text and "synonym" not in text
    for part in ("name='convnext_tiny'", "input_shape=(224, 224, 3)", "num_classes=1000",
                 "mean=(0.485, 0.456, 0.406)", "crop_pct=0.875", "source='random init'"):
        assert part in text
    assert str(IMAGENET) == text


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5), crop=st.sampled_from([None, 0.875]),
       interp=st.sampled_from(["bilinear", "bicubic"]), gray=st.booleans())
def test_short_spec_repr_is_its_constructor(n, crop, interp, gray):
    """With a few class names the repr holds everything: eval(repr(spec)) == spec."""
    shape, mean = ((28, 28, 1), (0.5,)) if gray else ((32, 32, 3), (0.1, 0.2, 0.3))
    spec = ModelSpec("m", shape, n, mean, (0.25,) * len(mean),
                     class_names=tuple(f"c{i}, x" for i in range(n)), source="a.pth",
                     crop_pct=crop, interpolation=interp)
    assert eval(repr(spec), {"ModelSpec": ModelSpec}) == spec


def test_model_repr_counts_parameters_and_statistics():
    model = create("resnet18", num_classes=1000, input_shape=(32, 32, 3), layers=(1, 1, 1, 1),
                   widths=(4, 4, 8, 8), stem_width=4, key=jax.random.key(0, impl="unsafe_rbg"))
    model = Model(model.apply_fn, model.params,
                  ModelSpec("resnet18", (32, 32, 3), 1000, (0.485, 0.456, 0.406),
                            (0.229, 0.224, 0.225), class_names=NAMES),
                  model.embed_fn, model.train_apply_fn)
    n_params = sum(x.size for x in jax.tree.leaves(model.params["params"]))
    n_stats = sum(x.size for x in jax.tree.leaves(model.params["batch_stats"]))
    text = repr(model)
    assert len(text) < 400, text
    assert text.startswith("Model('resnet18', x 32x32x3 in [0, 1] -> 1000 classes "
                           "('class number 0', ")
    assert f"{n_params:,} parameters (" in text and "float32)" in text
    assert f"+ {n_stats:,} batch statistics" in text
    assert "with embed_fn, train_apply_fn" in text
    assert f"{n_params * 4 / 1024:.1f} KiB" in text


def test_model_repr_of_a_plain_function_model():
    params = {"w": jnp.ones((3, 2), jnp.float32), "b": np.zeros(2, np.float16)}
    model = Model(lambda p, x: x.reshape(x.shape[0], -1)[:, :3] @ p["w"],
                  params, ModelSpec("linear", (1, 1, 3), 2))
    text = repr(model)
    assert "8 parameters (28 B float16/float32)" in text
    assert "classes (" not in text and "with" not in text


@pytest.mark.parametrize("names", [None, ("a", "b")])
def test_spec_repr_without_or_with_few_names(names):
    spec = ModelSpec("mlp", (28, 28, 1), 2, class_names=names)
    assert ("class_names=('a', 'b')" in repr(spec)) == (names is not None)
