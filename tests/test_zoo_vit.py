"""ViT port against timm: a reduced timm ViT with random weights (tests/fixtures/zoo/vit*.npz).

The fixture (scripts/make_zoo_fixtures.py): timm ``vit_tiny_patch16_224`` with img_size 32,
patch 8, embed dim 32, depth 2, 2 heads, 7 classes; every tensor random (cls token and
position embedding included); float64 eval-mode references for 2 images.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.models import MODELS, load, vit

from zoo_fixture_script import FIXTURES, ROOT, mzf  # noqa: E402,F401


@pytest.fixture(scope="module")
def ported():
    io = dict(np.load(FIXTURES / "vit_ref.npz"))
    model = load("vit_tiny_patch16_224", FIXTURES / "vit.npz", num_classes=mzf.SMALL_CLASSES,
                 input_shape=(32, 32, 3), **mzf.VIT_SMALL)
    with jax.default_matmul_precision("highest"):
        fwd = jax.jit(lambda p, x: (model.apply_fn(p, x), model.embed_fn(p, x)))
        logits, feats = (np.asarray(a) for a in fwd(model.params, jnp.asarray(io["x"])))
    return model, io, logits, feats


def test_vit_matches_timm(ported):
    _, io, logits, feats = ported
    assert logits.shape == (2, mzf.SMALL_CLASSES) and feats.shape == (2, 32)
    assert np.abs(logits - io["logits"]).max() <= 1e-4
    assert np.abs(feats - io["features"]).max() <= 1e-4
    assert np.abs(io["logits"][0] - io["logits"][1]).max() > 0.1  # not degenerate


def test_vit_preprocessing_spec(ported):
    model = ported[0]
    assert model.spec.mean == (0.5, 0.5, 0.5) and model.spec.std == (0.5, 0.5, 0.5)
    spec = MODELS["vit_base_patch32_224"].spec
    assert (spec.input_shape, spec.crop_pct, spec.interpolation) == ((224, 224, 3), 0.9,
                                                                     "bicubic")


def test_vit_rejects_other_image_sizes():
    module = vit.ViT(num_classes=3, img_size=32, patch_size=8, embed_dim=8, depth=1, num_heads=2)
    jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="32x32"):
        jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 48, 48, 3)))


def test_vit_sizes_match_timm_constructors():
    """Ti/S/B/L x patch 16/32 as timm: (embed_dim, depth, heads) and the patch size."""
    for name in ("vit_small_patch32_224", "vit_large_patch16_224"):
        module = MODELS[name].module(num_classes=1000)
        assert (module.embed_dim, module.depth, module.num_heads) == vit.SIZES[name.split("_")[1]]
        assert module.patch_size == int(name.split("patch")[1][:2])
