"""Make the model-zoo parity fixtures under tests/fixtures/zoo/ (needs torch + timm).

Run once with a Python that has ``torch``, ``timm``, ``torchvision``, ``safetensors`` and
``efficientnet-lite-pytorch`` (robustjax's own test environment needs none of them)::

    python scripts/make_zoo_fixtures.py            # writes tests/fixtures/zoo/*

What it writes (all references are computed by PyTorch in float64, eval mode):

* ``convnext_timm.safetensors``: a reduced timm ConvNeXt (``depths=(1, 1, 2, 1)``,
  ``dims=(8, 16, 24, 32)``, 7 classes), timm key names; ``convnext_fb.pth``: the same weights
  under the original facebookresearch key names, saved by ``torch.save`` as ``{"model": sd}``
  like the official release (checked to map back exactly with timm's own
  ``convnext.checkpoint_filter_fn``); ``convnext_convmlp.npz``: a reduced ConvNeXt with
  ``conv_mlp=True`` (the atto ... nano layout: fc1/fc2 are 1x1 convs).
  ``convnext_ref.npz`` / ``convnext_convmlp_ref.npz``: input pixels ``x`` [2, 32, 32, 3] in
  [0, 1] (NHWC), ``logits`` and ``features`` (``forward_head(pre_logits=True)``).
* ``vit.npz`` + ``vit_ref.npz``: a reduced timm ViT (img 32, patch 8, dim 32, depth 2,
  2 heads, 7 classes).
* ``inception_ref.npz``: full-size Inception-V3 (timm ``inception_v3``, 1000 classes) cannot be
  reduced through timm's arguments and its weights (95 MB) are too big to commit, so its
  weights are NOT stored: they are regenerated bit-exactly from the manifest's key shapes by
  :func:`seeded_state_dict` (numpy only, seed in the file), which both this script and the test
  call. The reference holds the input (139x139, so that Mixed_7c still has 3x3 positions),
  logits and features.
* ``manifest.json``: for every full-size model of the zoo, the state-dict key names and shapes
  (timm with ``pretrained=False`` on the meta device, i.e. nothing is allocated; torchvision
  Inception-V3 with its ``AuxLogits``; EfficientNet-Lite0 from ``efficientnet-lite-pytorch``,
  the architecture of the real weights, whose names differ from timm's
  ``tf_efficientnet_lite0``, recorded too for reference).

All fixture weights come from :func:`seeded_state_dict`: timm's own initialisation would leave
ConvNeXt's layer scale at 1e-6 (blocks almost the identity) and BatchNorm at its trivial
statistics, which would let layout errors pass unnoticed.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "zoo"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

CONVNEXT_SMALL = {"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)}
VIT_SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
SMALL_CLASSES = 7
INCEPTION_SIZE = 139
SEED = 20261125


def seeded_state_dict(shapes, seed: int) -> dict[str, np.ndarray]:
    """Deterministic float32 weights for the given ``[(key, shape), ...]``, numpy only.

    One ``np.random.default_rng(seed)`` stream, drawn with ``random()`` (uniform [0, 1), stable
    across numpy versions) in the given key order. Values by role: ``running_var`` in
    [0.5, 1.5), ``running_mean`` in [-0.2, 0.2), 1-D ``weight``/``gamma`` (norm scales, layer
    scale) in [0.5, 1.5), biases in [-0.1, 0.1), ``cls_token``/``pos_embed`` in [-0.5, 0.5),
    other weights uniform with variance ``2 / fan_in`` (fan_in = prod(shape[1:])).
    ``num_batches_tracked`` gets int64 zeros.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes:
        shape = tuple(shape)
        if key.endswith("num_batches_tracked"):
            out[key] = np.zeros(shape, np.int64)
            continue
        u = rng.random(shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var":
            v = 0.5 + u
        elif leaf == "running_mean":
            v = 0.4 * (u - 0.5)
        elif leaf in ("cls_token", "pos_embed"):
            v = u - 0.5
        elif leaf == "bias":
            v = 0.2 * (u - 0.5)
        elif len(shape) == 1:  # LayerNorm / BatchNorm scale, layer-scale gamma
            v = 0.5 + u
        else:
            fan_in = math.prod(shape[1:])
            v = (2.0 * u - 1.0) * math.sqrt(6.0 / fan_in)
        out[key] = v.astype(np.float32)
    return out


def timm_to_fb(key: str) -> str:
    """timm ConvNeXt key -> facebookresearch key (the inverse of timm's checkpoint filter)."""
    import re

    key = re.sub(r"^stem\.", "downsample_layers.0.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
    key = key.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc", ".pwconv")
    key = re.sub(r"^head\.norm\.", "norm.", key)
    return re.sub(r"^head\.fc\.", "head.", key)


# --- everything below needs torch ---------------------------------------------------------------

def _shapes(model) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def _load_seeded(model, seed):
    import torch

    sd = seeded_state_dict(_shapes(model), seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return sd


def _reference(model, x_nhwc: np.ndarray, mean, std) -> dict[str, np.ndarray]:
    """Float64 eval-mode logits and pre-logit features for pixels ``x`` (NHWC, [0, 1])."""
    import torch

    model = model.double().eval()
    x = (x_nhwc.astype(np.float64) - np.asarray(mean)) / np.asarray(std)
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        feats = model.forward_features(t)
        logits = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
    return {"x": x_nhwc.astype(np.float32), "logits": logits.numpy(),
            "features": pre.numpy().reshape(pre.shape[0], -1)}


def _pixels(rng, size: int) -> np.ndarray:
    return rng.random((2, size, size, 3)).astype(np.float32)


def make_convnext(rng):
    import timm
    import torch
    from safetensors.numpy import save_file
    from timm.models.convnext import checkpoint_filter_fn

    model = timm.create_model("convnext_tiny", num_classes=SMALL_CLASSES, **CONVNEXT_SMALL)
    sd = _load_seeded(model, SEED + 1)
    save_file(sd, str(OUT / "convnext_timm.safetensors"))
    fb = {timm_to_fb(k): torch.from_numpy(v) for k, v in sd.items()}
    back = checkpoint_filter_fn({"model": fb}, model)  # timm's own fb -> timm renaming
    assert set(back) == set(sd), set(back) ^ set(sd)
    assert all(np.array_equal(back[k].numpy(), sd[k]) for k in sd)
    torch.save({"model": fb}, OUT / "convnext_fb.pth")
    np.savez(OUT / "convnext_ref.npz", **_reference(model, _pixels(rng, 32), IMAGENET_MEAN,
                                                    IMAGENET_STD))

    model = timm.create_model("convnext_atto", num_classes=SMALL_CLASSES, **CONVNEXT_SMALL)
    assert model.stages[0].blocks[0].use_conv_mlp
    np.savez(OUT / "convnext_convmlp.npz", **_load_seeded(model, SEED + 2))
    np.savez(OUT / "convnext_convmlp_ref.npz",
             **_reference(model, _pixels(rng, 32), IMAGENET_MEAN, IMAGENET_STD))


def make_vit(rng):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", num_classes=SMALL_CLASSES, **VIT_SMALL)
    np.savez(OUT / "vit.npz", **_load_seeded(model, SEED + 3))
    np.savez(OUT / "vit_ref.npz", **_reference(model, _pixels(rng, 32), HALF, HALF))


def make_inception(rng, manifest):
    import timm

    model = timm.create_model("inception_v3")
    assert _shapes(model) == [(k, s) for k, s in manifest["models"]["inception_v3"]["keys"]]
    _load_seeded(model, SEED + 4)
    ref = _reference(model, _pixels(rng, INCEPTION_SIZE), HALF, HALF)
    np.savez(OUT / "inception_ref.npz", seed=np.int64(SEED + 4), **ref)


# registry name -> how to build it: (library, constructor, kwargs)
def _manifest_models():
    models = {}
    for size in ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge"):
        models[f"convnext_{size}"] = ("timm", f"convnext_{size}", {})
        if size in ("tiny", "small", "base", "large", "xlarge"):
            models[f"convnext_{size}_22k"] = ("timm", f"convnext_{size}", {"num_classes": 21841})
    for size in ("tiny", "small", "base", "large"):
        for patch in (16, 32):
            name = f"vit_{size}_patch{patch}_224"
            if size == "tiny" and patch == 32:  # no timm constructor; same architecture family
                models[name] = ("timm", "vit_tiny_patch16_224", {"patch_size": 32})
            else:
                models[name] = ("timm", name, {})
    for depth in (18, 34, 50, 101, 152):
        models[f"resnet{depth}"] = ("timm", f"resnet{depth}", {})
    models["inception_v3"] = ("timm", "inception_v3", {})
    models["inception_v3@torchvision"] = ("torchvision", "inception_v3",
                                          {"aux_logits": True, "init_weights": False})
    models["efficientnet_lite0"] = ("efficientnet_lite_pytorch", "efficientnet-lite0", {})
    models["tf_efficientnet_lite0@timm"] = ("timm", "tf_efficientnet_lite0", {})
    return models


FB_SIZES = tuple(f"convnext_{s}" for s in ("tiny", "small", "base", "large", "xlarge"))


def _check_fb_names(model) -> None:
    """timm_to_fb is exactly inverted by timm's own checkpoint filter (fb -> timm names)."""
    from timm.models.convnext import checkpoint_filter_fn

    sd = model.state_dict()
    back = checkpoint_filter_fn({"model": {timm_to_fb(k): v for k, v in sd.items()}}, model)
    assert list(back) == list(sd)
    assert all(back[k].shape == sd[k].shape for k in sd)


def _head_key(model) -> str:
    """The classifier's bias (its length is the number of classes)."""
    keys = list(model.state_dict())
    return [k for k in keys if k.endswith(".bias") and k.split(".")[0] in ("head", "fc", "_fc",
                                                                          "classifier")][-1]


def make_manifest() -> dict:
    import timm
    import torch
    import torchvision

    manifest = {}
    for name, (lib, ctor, kwargs) in _manifest_models().items():
        with torch.device("meta"):  # shapes only, no memory
            if lib == "timm":  # explicit num_classes: some default cfgs (in21k ViTs) have none
                kwargs = {"num_classes": 1000, **kwargs}
                model = timm.create_model(ctor, pretrained=False, **kwargs)
            elif lib == "torchvision":
                model = getattr(torchvision.models, ctor)(weights=None, **kwargs)
            else:
                from efficientnet_lite_pytorch import EfficientNet
                model = EfficientNet.from_name(ctor)
        model_name, _, variant = name.partition("@")
        if model_name.startswith("convnext_") and "_".join(name.split("_")[:2]) in FB_SIZES:
            _check_fb_names(model)
        manifest[name] = {
            "model": model_name,
            "source": f"{lib}.{ctor}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})",
            "num_classes": int(model.state_dict()[_head_key(model)].shape[0]),
            "loadable": variant != "timm",  # timm's tf_efficientnet_lite0 names: reference only
            "keys": _shapes(model),
        }
        print(f"{name}: {len(manifest[name]['keys'])} keys", file=sys.stderr)
    return manifest


def _manifest_json(manifest: dict) -> str:
    """JSON with one state-dict key per line (readable diffs when timm changes)."""
    lines = ["{", f'"generator": {json.dumps(manifest["generator"])},', '"models": {']
    models = list(manifest["models"].items())
    for i, (name, entry) in enumerate(models):
        head = {k: v for k, v in entry.items() if k != "keys"}
        lines.append(f"{json.dumps(name)}: {json.dumps(head)[:-1]}, \"keys\": [")
        keys = entry["keys"]
        lines += [json.dumps(kv) + ("," if j < len(keys) - 1 else "") for j, kv in enumerate(keys)]
        lines.append("]}" + ("," if i < len(models) - 1 else ""))
    lines += ["}", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == json.loads(json.dumps(manifest))
    return text


def main():
    import timm
    import torch
    import torchvision

    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(SEED)
    manifest = make_manifest()
    manifest = {"generator": f"scripts/make_zoo_fixtures.py with torch {torch.__version__}, "
                             f"torchvision {torchvision.__version__}, timm {timm.__version__}",
                "models": manifest}
    (OUT / "manifest.json").write_text(_manifest_json(manifest))
    make_convnext(rng)
    make_vit(rng)
    make_inception(rng, manifest)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1e6:.2f} MB to {OUT}")


if __name__ == "__main__":
    main()
