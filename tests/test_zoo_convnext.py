"""ConvNeXt port against timm: reduced models with random weights, both key-naming schemes.

Fixtures (tests/fixtures/zoo/, made by scripts/make_zoo_fixtures.py with timm, eval mode, float64
references): a timm ConvNeXt with depths (1, 1, 2, 1), dims (8, 16, 24, 32), 7 classes, stored
with timm names (.safetensors) and with the original facebookresearch names (a torch.save'd
``{"model": sd}`` .pth, read without torch); and the same reduced sizes in timm's conv_mlp
layout (atto ... nano: fc1/fc2 as 1x1 convs). Weights are random with non-trivial layer scale.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import weights
from robustjax.models import MODELS, convnext, load

from zoo_fixture_script import FIXTURES, ROOT, mzf  # noqa: E402,F401
SMALL = dict(num_classes=mzf.SMALL_CLASSES, input_shape=(32, 32, 3), **mzf.CONVNEXT_SMALL)


def _outputs(model, x):
    """(logits, features) in float32 with exact matmuls, one compilation."""
    with jax.default_matmul_precision("highest"):
        fwd = jax.jit(lambda p, x: (model.apply_fn(p, x), model.embed_fn(p, x)))
        return tuple(np.asarray(a) for a in fwd(model.params, jnp.asarray(x)))


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "convnext_ref.npz"))


@pytest.fixture(scope="module")
def timm_named(ref):
    model = load("convnext_tiny", FIXTURES / "convnext_timm.safetensors", **SMALL)
    return model, _outputs(model, ref["x"])


def test_timm_names_match_timm(timm_named, ref):
    model, (logits, feats) = timm_named
    assert logits.shape == (2, mzf.SMALL_CLASSES) and feats.shape == (2, 32)
    assert np.abs(logits - ref["logits"]).max() <= 1e-4
    assert np.abs(feats - ref["features"]).max() <= 1e-4
    # the reference is not degenerate: the two images get clearly different logits
    assert np.abs(ref["logits"][0] - ref["logits"][1]).max() > 0.1
    assert model.spec.mean == convnext.IMAGENET_MEAN and model.spec.interpolation == "bicubic"


def test_facebookresearch_names_match_timm(timm_named, ref):
    sd = weights.read_state_dict(FIXTURES / "convnext_fb.pth")
    assert "downsample_layers.0.0.weight" in sd and "stages.0.0.pwconv1.weight" in sd
    model = load("convnext_tiny", FIXTURES / "convnext_fb.pth", **SMALL)
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                        model.params, timm_named[0].params)
    assert all(jax.tree.leaves(same))
    logits, _ = _outputs(model, ref["x"])
    assert np.abs(logits - ref["logits"]).max() <= 1e-4


def test_canonicalize_keys_gives_timm_names():
    fb = weights.read_state_dict(FIXTURES / "convnext_fb.pth")
    timm = weights.read_state_dict(FIXTURES / "convnext_timm.safetensors")
    renamed = convnext.canonicalize_keys(fb)
    assert set(renamed) == set(timm)
    assert all(np.array_equal(renamed[k], timm[k]) for k in timm)
    assert convnext.canonicalize_keys(timm).keys() == timm.keys()  # timm names pass through


def test_conv_mlp_layout_matches_timm():
    """timm's atto ... nano store fc1/fc2 as 1x1 convs (out, in, 1, 1)."""
    sd = np.load(FIXTURES / "convnext_convmlp.npz")
    assert sd["stages.0.blocks.0.mlp.fc1.weight"].shape == (32, 8, 1, 1)
    io = np.load(FIXTURES / "convnext_convmlp_ref.npz")
    model = load("convnext_atto", FIXTURES / "convnext_convmlp.npz", **SMALL)
    logits, feats = _outputs(model, io["x"])
    assert np.abs(logits - io["logits"]).max() <= 1e-4
    assert np.abs(feats - io["features"]).max() <= 1e-4


def test_22k_entries():
    entry = MODELS["convnext_tiny_22k"]
    assert entry.spec.num_classes == 21841 and entry.spec.class_names is None  # no 22k names
    assert MODELS["convnext_atto"].spec.class_names[1].startswith("goldfish")
    module = entry.module(num_classes=entry.spec.num_classes, depths=(1, 1, 1, 1),
                          dims=(8, 8, 8, 8))
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    assert jax.eval_shape(module.apply, variables, x).shape == (1, 21841)
    assert jax.eval_shape(lambda v, x: module.apply(v, x, features=True), variables,
                          x).shape == (1, 8)
