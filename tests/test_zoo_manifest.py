"""Every full-size zoo model's PyTorch state dict converts exactly, without allocating weights.

``tests/fixtures/zoo/manifest.json`` (made by ``scripts/make_zoo_fixtures.py`` from timm,
torchvision and efficientnet-lite-pytorch with ``pretrained=False``) lists each checkpoint's key
names and shapes. Each key gets a zero-stride ``np.broadcast_to`` array of its shape (no memory),
the family converter maps it, and ``loading.convert`` compares the result with
``jax.eval_shape(module.init)``: no missing, unexpected or wrongly shaped keys, no model variable
left unconverted. RobustBench's CIFAR-10 architectures have their own manifest in the same format
(``tests/fixtures/robustbench/manifest.json``, made by ``scripts/make_robustbench_fixtures.py``
from robustbench 1.1.1's model definitions).
"""

import json
import pathlib

import numpy as np
import pytest

from robustjax.models import loading

ROOT = pathlib.Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "fixtures" / "zoo" / "manifest.json"
ROBUSTBENCH_MANIFEST = ROOT / "tests" / "fixtures" / "robustbench" / "manifest.json"
MODELS = {**json.loads(MANIFEST.read_text())["models"],
          **json.loads(ROBUSTBENCH_MANIFEST.read_text())["models"]}
LOADABLE = sorted(k for k, v in MODELS.items() if v["loadable"])
_ZERO = np.zeros((), np.float32)


def _placeholder_state_dict(keys):
    return {k: np.broadcast_to(_ZERO, tuple(shape)) for k, shape in keys}


def test_manifest_covers_the_zoo():
    """The manifest has every architecture the issue names (and every loadable zoo name)."""
    expected = {f"convnext_{s}" for s in ("atto", "femto", "pico", "nano", "tiny", "small",
                                          "base", "large", "xlarge")}
    expected |= {f"convnext_{s}_22k" for s in ("tiny", "small", "base", "large", "xlarge")}
    expected |= {f"vit_{s}_patch{p}_224" for s in ("tiny", "small", "base", "large")
                 for p in (16, 32)}
    expected |= {f"resnet{d}" for d in (18, 34, 50, 101, 152)}
    expected |= {"inception_v3", "efficientnet_lite0"}
    expected |= {"wrn_28_10", "wrn_34_10", "wrn_34_20", "wrn_70_16", "dm_wrn_28_10",
                 "dm_wrn_34_20", "dm_wrn_70_16", "dm_wrn_106_16", "preact_resnet18",
                 "dm_preact_resnet18", "dm_wrn_28_10_cifar100", "dm_wrn_70_16_cifar100",
                 "dm_preact_resnet18_cifar100"}
    covered = {v["model"] for v in MODELS.values() if v["loadable"]}
    assert expected <= covered, expected - covered
    assert set(loading.loadable_names()) <= covered, set(loading.loadable_names()) - covered
    assert MODELS["convnext_xlarge_22k"]["num_classes"] == 21841


@pytest.mark.parametrize("entry", LOADABLE)
def test_full_size_keys_convert_exactly(entry):
    info = MODELS[entry]
    name = info["model"]
    sd = _placeholder_state_dict(info["keys"])
    module, spec = loading._build(name, info["num_classes"], None, {})
    produced, report, expected = loading.convert(name, sd, module, spec)
    assert report.ok, report.describe()
    assert produced.keys() == expected.keys()
    for path, want in expected.items():
        assert tuple(np.shape(produced[path])) == tuple(want.shape), path
    n_ckpt = sum(int(np.prod(s)) for k, s in info["keys"] if not k.endswith("num_batches_tracked")
                 and not k.startswith(tuple(getattr(loading.family_of(name), "IGNORED_KEYS", ()))))
    assert sum(int(np.prod(w.shape)) for w in expected.values()) == n_ckpt


@pytest.mark.parametrize("entry", ["convnext_tiny", "convnext_xlarge_22k"])
def test_full_size_facebookresearch_names_convert_exactly(entry):
    """Original ConvNeXt release names (two-digit block indices in xlarge's stage 2, 22k head).

    ``timm_to_fb`` is checked by the fixture script to be inverted exactly by timm's own
    ``checkpoint_filter_fn`` for every released size.
    """
    from zoo_fixture_script import mzf

    info = MODELS[entry]
    sd = {mzf.timm_to_fb(k): v for k, v in _placeholder_state_dict(info["keys"]).items()}
    assert "stages.2.26.pwconv2.weight" in sd or entry == "convnext_tiny"
    module, mspec = loading._build(info["model"], info["num_classes"], None, {})
    _, report, _ = loading.convert(info["model"], sd, module, mspec)
    assert report.ok, report.describe()


def test_head_size_mismatch_is_reported():
    """A 21841-class checkpoint does not silently load into the 1000-class model."""
    info = MODELS["convnext_tiny_22k"]
    module, spec = loading._build("convnext_tiny", None, None, {})
    _, report, _ = loading.convert("convnext_tiny", _placeholder_state_dict(info["keys"]),
                                   module, spec)
    assert report.shape_mismatch and all("head_fc" in s for s in report.shape_mismatch)
    assert not (report.missing or report.unexpected)


def test_timm_efficientnet_names_differ_from_the_real_weights():
    """Documented in the manifest: timm's tf_efficientnet_lite0 names are not the checkpoint's."""
    timm_keys = {k for k, _ in MODELS["tf_efficientnet_lite0@timm"]["keys"]}
    real_keys = {k for k, _ in MODELS["efficientnet_lite0"]["keys"]}
    assert not timm_keys & real_keys
    assert len(timm_keys) == len(real_keys) == 296


# torchvision's documented parameter counts (weights, biases, norm affines; no running stats).
# Inception-V3 counts its AuxLogits head; timm's inception_v3 has none (23.8M).
DOCUMENTED = {"convnext_tiny": 28_589_128, "convnext_small": 50_223_688,
              "convnext_base": 88_591_464, "convnext_large": 197_767_336,
              "vit_base_patch16_224": 86_567_656, "vit_base_patch32_224": 88_224_232,
              "vit_large_patch16_224": 304_326_632, "vit_large_patch32_224": 306_535_400,
              "inception_v3@torchvision": 27_161_264}


@pytest.mark.parametrize("entry", sorted(DOCUMENTED))
def test_manifest_parameter_counts_match_documented(entry):
    """The manifest (and so the shapes the converters were checked against) is the real one."""
    stats = ("running_mean", "running_var", "num_batches_tracked")
    n = sum(int(np.prod(s)) for k, s in MODELS[entry]["keys"] if not k.endswith(stats))
    assert n == DOCUMENTED[entry]
