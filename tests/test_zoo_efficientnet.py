"""EfficientNet-Lite0 with the real ImageNet weights, read without torch, against PyTorch.

The reference logits were made by scripts/make_efficientnet_reference.py with PyPI
efficientnet-lite-pytorch (EfficientNet.from_pretrained) on the same uint8 inputs.
"""

import pathlib

import jax
import numpy as np
import pytest

from robustjax.models import efficientnet, load
from robustjax.models.loading import StateDictMismatchError
from robustjax.report.zoo import ported_lite0
from robustjax.weights import read_state_dict

FIXTURE = pathlib.Path(__file__).parent / "fixtures/efficientnet/lite0_natural.npz"


@pytest.fixture(scope="module")
def ported():
    # No skip: without the weights package this must fail, saying what to install.
    efficientnet.pretrained_path()
    model, fwd = ported_lite0()  # shared with the report section (one compilation)
    ref = np.load(FIXTURE)
    logits, feats = fwd(model.params, ref["images"].astype(np.float32) / 255.0)
    return model, ref, np.asarray(logits), np.asarray(feats)


def test_real_weights_match_pytorch(ported):
    model, ref, logits, _ = ported
    assert logits.shape == ref["logits"].shape == (7, 1000)
    np.testing.assert_array_equal(logits.argmax(1), ref["logits"].argmax(1))
    assert np.abs(logits - ref["logits"]).max() <= 1e-4


def test_real_weights_predict_the_known_classes(ported):
    # NOTES.md: with mean = std = 0.5 the PyTorch model predicts these (checked independently).
    model, ref, logits, _ = ported
    top1 = dict(zip(ref["names"].tolist(), logits.argmax(1).tolist()))
    assert top1["chelsea"] == 282 and top1["coffee"] == 967
    assert top1["rocket"] == 657 and top1["motorcycle"] == 665
    assert model.spec.class_names[282] == "tiger cat"
    assert model.spec.mean == model.spec.std == (0.5, 0.5, 0.5)
    assert model.spec.input_shape == (224, 224, 3) and model.spec.interpolation == "bicubic"


def test_embed_is_the_penultimate_layer(ported):
    model, _, logits, feats = ported
    assert feats.shape == (7, 1280)
    fc = model.params["params"]["fc"]
    recon = feats @ np.asarray(fc["kernel"], np.float64) + np.asarray(fc["bias"])
    np.testing.assert_allclose(recon, logits, atol=1e-3)


def test_every_key_is_used_and_param_count():
    sd = read_state_dict(efficientnet.pretrained_path())
    assert len(sd) == 296
    model = load("efficientnet_lite0", sd)  # strict: no missing/unexpected keys
    n = sum(np.size(v) for v in jax.tree.leaves(model.params["params"]))
    n_bn_stats = sum(np.size(v) for v in jax.tree.leaves(model.params["batch_stats"]))
    n_torch = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert n + n_bn_stats == n_torch


def test_wrong_head_is_one_clear_error():
    sd = read_state_dict(efficientnet.pretrained_path())
    sd.pop("_blocks.3._bn1.running_var")
    sd["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(StateDictMismatchError) as e:
        load("efficientnet_lite0", sd, num_classes=10)
    msg = str(e.value)
    assert "_blocks.3._bn1.running_var" in msg and "extra.weight" in msg
    assert "params/fc/kernel: checkpoint (1280, 1000) vs model (1280, 10)" in msg


def test_report_section_top3_quick(tmp_path):
    from robustjax.report.base import ReportContext
    from robustjax import data
    from robustjax.report.zoo import section, top_k
    from robustjax.types import Model, ModelSpec

    # the section ignores ctx.model (an MNIST model cannot classify photographs): a stub
    spec = ModelSpec("stub", (28, 28, 1), 10)
    stub = Model(lambda p, x: np.zeros((x.shape[0], 10), np.float32), {}, spec)
    x = np.zeros((4, 28, 28, 1), np.float32)
    ctx = ReportContext(stub, x, np.zeros(4, np.int32), jax.random.PRNGKey(0), tmp_path,
                        quick=True)
    sec = section(ctx)
    ref = np.load(FIXTURE)
    # data.load("natural") reproduces the fixture's inputs exactly (the fixture also holds
    # skimage's astronaut, which has no ImageNet label and is not in the dataset)
    names = [im.name for im in data.NATURAL_IMAGES]
    rows = [ref["names"].tolist().index(n) for n in names]
    x, _ = data.load("natural")
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), ref["images"][rows])
    assert list(sec.data["predictions"]) == names
    expected = top_k(ref["logits"][rows],
                     efficientnet.ENTRIES["efficientnet_lite0"].spec.class_names)
    for name, exp in zip(names, expected):
        got = sec.data["predictions"][name]
        assert [p["index"] for p in got] == [i for i, _, _ in exp]  # same top-3 as PyTorch
        np.testing.assert_allclose([p["prob"] for p in got], [p for _, _, p in exp], atol=1e-4)
    assert "tiger cat" in sec.markdown and "espresso" in sec.markdown
    assert sec.key == "zoo"
