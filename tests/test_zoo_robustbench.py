"""RobustBench's CIFAR-10 architectures and checkpoint formats.

Reference: RobustBench 1.1.1's own model definitions (``wide_resnet.WideResNet``,
``dm_wide_resnet.DMWideResNet`` / ``DMPreActResNet``, ``resnet.PreActResNet``) on seeded random
weights, PyTorch float64, eval mode (scripts/make_robustbench_fixtures.py). The weights are
regenerated here from the manifest's key shapes by the zoo script's numpy-only
``seeded_state_dict``; ``wrn_normalized.pth`` is a real ``torch.save`` file.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import attacks, weights
from robustjax.models import MODELS, StateDictMismatchError, create, load
from zoo_fixture_script import mzf

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "robustbench"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
PARITY = MANIFEST["parity"]
REF = np.load(FIXTURES / "reference.npz")


def _overrides(info):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in info["overrides"].items()}


def _state_dict(tag):
    info = PARITY[tag]
    return mzf.seeded_state_dict(info["keys"], info["seed"])


def _forward(model, x):
    with jax.default_matmul_precision("highest"):
        fwd = jax.jit(lambda p, x: (model.apply_fn(p, x), model.embed_fn(p, x)))
        return tuple(map(np.asarray, fwd(model.params, jnp.asarray(x))))


@pytest.mark.parametrize("tag", sorted(PARITY))
def test_matches_robustbench(tag):
    info = PARITY[tag]
    model = load(info["model"], _state_dict(tag), **_overrides(info))
    logits, feats = _forward(model, REF["x"])
    want = REF[f"{tag}/logits"]
    assert logits.shape == want.shape == (3, 10)
    assert np.abs(logits - want).max() <= 1e-4
    assert np.abs(feats - REF[f"{tag}/features"]).max() <= 1e-4
    # not a trivial fixture: logits differ across inputs and classes
    assert np.abs(want[0] - want[1]).max() > 0.5 and np.ptp(want[0]) > 1.0


@pytest.mark.parametrize("tag", ["wrn", "dm_wrn"])
def test_input_gradients_match_robustbench(tag):
    """What gradient attacks use: d CE / dx, through both paddings of strided convolutions."""
    info = PARITY[tag]
    model = load(info["model"], _state_dict(tag), **_overrides(info))
    y = jnp.asarray([1, 4, 7])

    def loss(x):
        logits = model.apply_fn(model.params, x)
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(3), y])

    with jax.default_matmul_precision("highest"):
        grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(REF["x"])))
    want = REF[f"{tag}/input_grad"]
    scale = np.abs(want).max()
    assert scale > 1e-3
    assert np.abs(grad - want).max() <= 1e-4 * max(1.0, scale)


def _params_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    return tree_a == tree_b and all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


def _wrappers(sd, mean, std):
    """The ways RobustBench-era training scripts save a state dict (flat dicts)."""
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return {
        "state_dict+module": ({"state_dict": {f"module.{k}": v for k, v in sd.items()},
                               "epoch": 3}, None),
        "model_state_dict+model": ({"model_state_dict": {f"model.{k}": v
                                                         for k, v in sd.items()}}, None),
        "normalize_model": ({"normalize.mean": m, "normalize.std": s,
                             **{f"model.{k}": v for k, v in sd.items()}}, (mean, std)),
        "sequential": ({"module.0.mean": m[0, :, 0, 0], "module.0.std": s[0, :, 0, 0],
                        **{f"module.1.{k}": v for k, v in sd.items()}}, (mean, std)),
        "mu_sigma": ({"mu": m, "sigma": s, **sd}, (mean, std)),
    }


def test_checkpoint_wrappers_load_the_same_weights():
    """Nested dicts, module./model. prefixes and normalisation layers are undone exactly."""
    info = PARITY["wrn"]
    sd = _state_dict("wrn")
    plain = load(info["model"], sd, **_overrides(info))
    assert plain.spec.mean == (0.0,) and plain.spec.std == (1.0,)  # pixels, as RobustBench
    mean, std = tuple(MANIFEST["norm_mean"]), tuple(MANIFEST["norm_std"])
    for what, (ckpt, norm) in _wrappers(sd, mean, std).items():
        model = load(info["model"], ckpt, **_overrides(info))
        assert _params_equal(model.params, plain.params), what
        want = norm or ((0.0,), (1.0,))
        np.testing.assert_allclose(model.spec.mean, want[0], rtol=1e-6, err_msg=what)
        np.testing.assert_allclose(model.spec.std, want[1], rtol=1e-6, err_msg=what)
    # the normalisation taken from the checkpoint is applied: RobustBench's normalize_model
    model = load(info["model"], _wrappers(sd, mean, std)["normalize_model"][0],
                 **_overrides(info))
    logits, _ = _forward(model, REF["x"])
    assert np.abs(logits - REF["wrn/logits_normalized"]).max() <= 1e-4
    assert np.abs(REF["wrn/logits_normalized"] - REF["wrn/logits"]).max() > 0.1


def test_real_torch_file_with_dataparallel_and_normalize_model():
    """``torch.save({"model_state_dict": DataParallel(normalize_model(WRN)).state_dict()})``."""
    path = FIXTURES / "wrn_normalized.pth"
    raw = weights.load_torch(path)
    assert raw["epoch"] == 7 and next(iter(raw["model_state_dict"])).startswith("module.")
    model = load("wrn_28_10", path, depth=10, width=1)
    assert model.spec.source == str(path)
    fp16 = np.asarray(MANIFEST["norm_mean"], np.float16).astype(np.float64)
    np.testing.assert_allclose(model.spec.mean, fp16, rtol=1e-7)
    logits, _ = _forward(model, REF["x"])
    assert np.abs(logits - REF["wrn_normalized/logits"]).max() <= 1e-4


def test_split_normalization_leaves_other_buffers_alone():
    """A module holding more than mean/std, or 2-D buffers, is not a normalisation layer."""
    sd = {"head.mean": np.zeros(3), "head.std": np.ones(3), "head.weight": np.ones((2, 3)),
          "conv.weight": np.ones((3, 3, 1, 1))}
    assert weights.split_normalization(sd) == (sd, None)
    sd2 = {"mean": np.zeros((3, 3)), "std": np.ones((3, 3)), "w": np.ones(2)}
    assert weights.split_normalization(sd2)[1] is None
    assert weights.strip_wrapper_prefixes({"model.a": 1, "b": 2}) == {"model.a": 1, "b": 2}
    assert weights.strip_wrapper_prefixes({"module.model.a": 1}) == {"a": 1}


def test_mismatched_checkpoint_lists_the_keys():
    """A classic-WRN checkpoint does not fit the DeepMind WRN, nor another width."""
    sd = _state_dict("wrn")
    with pytest.raises(StateDictMismatchError) as e:
        load("dm_wrn_28_10", sd, depth=16, width=2)
    msg = str(e.value)
    assert "missing checkpoint keys" in msg and "init_conv.weight" in msg
    assert "unexpected checkpoint keys" in msg and "block1.layer.0.conv1.weight" in msg
    with pytest.raises(StateDictMismatchError) as e:
        load("wrn_28_10", sd, depth=16, width=4)
    assert "wrongly shaped" in str(e.value) and "block1_0/conv1/kernel" in str(e.value)
    # sub_block1 (built by RobustBench but unused in its forward) is intentionally ignored
    assert any(k.startswith("sub_block1.") for k in sd)


@pytest.mark.parametrize("name", sorted(n for n in MODELS if n.startswith(("dm_", "wrn_",
                                                                           "preact_"))))
def test_specs_follow_robustbench(name):
    """DeepMind models normalise with their file's constants; the classic WRN takes pixels."""
    spec, c = MODELS[name].spec, MANIFEST["dm_constants"]
    assert name in MANIFEST["models"] and spec.input_shape == (32, 32, 3)
    assert spec.num_classes == MANIFEST["models"][name]["num_classes"] == len(spec.class_names)
    if name.startswith("dm_"):
        which = "CIFAR100" if name.endswith("_cifar100") else "CIFAR10"
        assert spec.mean == tuple(c[f"{which}_MEAN"]) and spec.std == tuple(c[f"{which}_STD"])
    elif name.startswith("wrn_"):
        assert spec.mean == (0.0,) and spec.std == (1.0,)
    names = spec.class_names
    assert (names[0], names[-1]) == (("apple", "worm") if spec.num_classes == 100 else
                                     ("airplane", "truck"))
    assert list(names) == sorted(names)  # both label sets are in alphabetical order


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        create("wrn_28_10", depth=12, width=1)
    with pytest.raises(ValueError, match="unknown activation"):
        create("dm_wrn_28_10", depth=10, width=1, activation="gelu")


def test_pgd_on_a_tiny_wrn():
    """Attacks run on the zoo's WRN: inside the eps ball, in [0, 1], robust <= clean."""
    info = PARITY["dm_wrn_relu"]
    model = load(info["model"], _state_dict("dm_wrn_relu"), **_overrides(info))
    assert model.train_apply_fn is not None and model.spec.class_names[0] == "airplane"
    fwd = jax.jit(model.apply_fn)
    x = jnp.asarray(REF["x"])
    y = jnp.argmax(fwd(model.params, x), -1)  # correctly classified by definition
    cfg = attacks.PGDConfig(eps=8 / 255, step_size=2 / 255, steps=5)
    attack = jax.jit(functools.partial(attacks.pgd, model.apply_fn, config=cfg))
    res = attack(model.params, x, y, jax.random.PRNGKey(0))
    delta = np.asarray(res.x_adv - x)
    assert np.abs(delta).max() <= 8 / 255 + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    ce = lambda lg: -jax.nn.log_softmax(lg)[jnp.arange(3), y]  # noqa: E731
    assert float(ce(fwd(model.params, res.x_adv)).mean()) > float(ce(fwd(model.params, x)).mean())


# Parameter counts of RobustBench's own modules (the manifest's keys, less BatchNorm running
# statistics); WRN-28-10 is the 36.5M of Zagoruyko & Komodakis 2016.
FULL_PARAMS = {"wrn_28_10": 36_479_194, "preact_resnet18": 11_171_146,
               "dm_wrn_70_16": 266_796_506}


@pytest.mark.parametrize("name", sorted(FULL_PARAMS))
def test_full_size_parameter_counts(name):
    module = MODELS[name].module(num_classes=10)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"])) == \
        FULL_PARAMS[name]
