"""Inception-V3 port against timm, at full size.

timm's Inception-V3 cannot be shrunk through its arguments and its 23.8M float32 weights
(95 MB) are too big for a committed fixture, so the fixture (scripts/make_zoo_fixtures.py) stores
only the input (2 images, 139x139, so that Mixed_7c still has 3x3 positions), the float64 timm
reference logits/features and a seed. The weights are regenerated bit-exactly from the manifest's
key shapes and the seed by ``seeded_state_dict`` (numpy only), the same function the script used
to fill the timm model. Every tensor is random, BatchNorm statistics included, so eps (1e-3),
padding, pooling (avg pools count their padding) and branch order all show in the logits.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.models import MODELS, inception, load

from zoo_fixture_script import FIXTURES, ROOT, mzf  # noqa: E402,F401


@pytest.fixture(scope="module")
def io():
    return dict(np.load(FIXTURES / "inception_ref.npz"))


@pytest.fixture(scope="module")
def state_dict(io):
    keys = json.loads((FIXTURES / "manifest.json").read_text())["models"]["inception_v3"]["keys"]
    return mzf.seeded_state_dict(keys, int(io["seed"]))


def test_inception_matches_timm(io, state_dict):
    model = load("inception_v3", state_dict, input_shape=io["x"].shape[1:])
    with jax.default_matmul_precision("highest"):
        fwd = jax.jit(lambda p, x: (model.apply_fn(p, x), model.embed_fn(p, x)))
        logits, feats = (np.asarray(a) for a in fwd(model.params, jnp.asarray(io["x"])))
    assert logits.shape == (2, 1000) and feats.shape == (2, 2048)
    assert np.abs(logits - io["logits"]).max() <= 1e-4
    assert np.abs(feats - io["features"]).max() <= 1e-4
    assert np.abs(io["logits"][0] - io["logits"][1]).max() > 0.1  # not degenerate


def test_torchvision_aux_logits_are_ignored(state_dict):
    """torchvision checkpoints carry AuxLogits.*: ignored, the rest converts unchanged."""
    from robustjax.models import loading

    module, spec = loading._build("inception_v3", None, None, {})
    aux = {"AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1), np.float32),
           "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)}
    _, report, _ = loading.convert("inception_v3", {**state_dict, **aux}, module, spec)
    assert report.ok, report.describe()
    assert inception.IGNORED_KEYS == ("AuxLogits.",)


def test_inception_spec_is_timms():
    spec = MODELS["inception_v3"].spec
    assert spec.input_shape == (299, 299, 3) and spec.crop_pct == 0.875
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)  # = torchvision's transform_input path


def test_inception_rejects_too_small_inputs():
    module = inception.InceptionV3(num_classes=10)
    with pytest.raises(ValueError, match="75x75"):
        jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
