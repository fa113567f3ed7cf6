"""ResNet port against timm (reduced sizes, random weights) and full-size shapes.

Fixtures: scripts/make_resnet_fixtures.py (timm, eval mode, randomised BatchNorm statistics).
The basic-block fixture is a torch.save (zip) file, the bottleneck one a .safetensors file.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.models import MODELS, create, load

FIXTURES = pathlib.Path(__file__).parent / "fixtures/resnet"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


@pytest.mark.parametrize("tag", sorted(MANIFEST))
def test_reduced_resnet_matches_timm(tag):
    info = MANIFEST[tag]
    io = np.load(FIXTURES / f"{tag}_io.npz")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in info["overrides"].items()}
    model = load(info["model"], FIXTURES / info["checkpoint"], num_classes=info["num_classes"],
                 input_shape=io["x"].shape[1:], **overrides)
    with jax.default_matmul_precision("highest"):
        fwd = jax.jit(lambda p, x: (model.apply_fn(p, x), model.embed_fn(p, x)))
        logits, feats = map(np.asarray, fwd(model.params, jnp.asarray(io["x"])))
    assert logits.shape == io["logits"].shape
    assert np.abs(logits - io["logits"]).max() <= 1e-4
    assert np.abs(feats - io["features"]).max() <= 1e-4
    # the fixture is not trivial: logits differ between the two inputs and across classes
    assert np.abs(io["logits"][0] - io["logits"][1]).max() > 1e-2


# torchvision's documented parameter counts (weights + biases + BN affine, no running stats);
# every full size's exact key names and shapes are checked by test_zoo_manifest.py.
PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_full_size_parameter_counts(name):
    module = MODELS[name].module(num_classes=1000)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert n == PARAMS[name]
    assert MODELS[name].spec.class_names[0].startswith("tench")


def test_create_small_resnet_and_embed():
    model = create("resnet50", num_classes=5, input_shape=(32, 32, 3), layers=(1, 1, 1, 1),
                   widths=(4, 4, 8, 8), stem_width=4,
                   key=jax.random.key(0, impl="unsafe_rbg"))  # threefry init compiles ~7x slower
    x = jnp.full((2, 32, 32, 3), 0.5)
    logits, feats = jax.jit(lambda p, x: (model.apply_fn(p, x), model.embed_fn(p, x)))(
        model.params, x)
    assert logits.shape == (2, 5) and feats.shape == (2, 32)
    assert model.spec.class_names is None  # a 5-class head has no ImageNet names
