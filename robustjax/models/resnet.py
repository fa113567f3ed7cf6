"""ImageNet ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition"), v1.5.

The torchvision / timm architecture: 7x7/2 stem conv, BatchNorm, ReLU, 3x3/2 max-pool, four
stages of BasicBlocks (ResNet-18/34) or Bottlenecks (50/101/152) with the stride on the 3x3
conv, global average pool, linear head. BatchNorm runs in inference mode unless ``train=True`` (eps 1e-5; PyTorch
momentum 0.1 = flax momentum 0.9). Input: *normalised* NHWC float32; ``features=True`` returns
the pooled penultimate features ``[b, widths[-1] * expansion]``.

torchvision and timm use the same state-dict names (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``); flax submodules are named after them (``layer1_0``).
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from robustjax.models.layers import Conv, maybe_remat
from robustjax.models.loading import batch_norm, conv, dense
from robustjax.models.registry import (
    Entry, IMAGENET_MEAN, IMAGENET_STD, imagenet_class_names)
from robustjax.types import ModelSpec


def _bn(name, train: bool = False):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)



def _conv(features, k, stride=1, name=None):
    p = k // 2  # explicit symmetric padding, as PyTorch (flax 'SAME' is asymmetric at stride 2)
    return Conv(features, (k, k), strides=stride, padding=((p, p), (p, p)), use_bias=False,
                name=name)


class Block(nn.Module):
    """BasicBlock (expansion 1) or Bottleneck (expansion 4), with an optional projection."""

    width: int
    stride: int = 1
    bottleneck: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = functools.partial(_bn, train=train)
        if self.bottleneck:
            out_features = self.width * 4
            h = nn.relu(bn("bn1")(_conv(self.width, 1, name="conv1")(x)))
            h = nn.relu(bn("bn2")(_conv(self.width, 3, self.stride, name="conv2")(h)))
            h = bn("bn3")(_conv(out_features, 1, name="conv3")(h))
        else:
            out_features = self.width
            h = nn.relu(bn("bn1")(_conv(self.width, 3, self.stride, name="conv1")(x)))
            h = bn("bn2")(_conv(self.width, 3, name="conv2")(h))
        if self.stride != 1 or x.shape[-1] != out_features:
            x = bn("downsample_bn")(_conv(out_features, 1, self.stride, name="downsample_conv")(x))
        return nn.relu(h + x)


class ResNet(nn.Module):
    num_classes: int = 1000
    layers: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_width: int = 64
    bottleneck: bool = False
    remat: bool = False  # rematerialise every block in the backward pass (layers.maybe_remat)

    @nn.compact
    def __call__(self, x, features: bool = False, train: bool = False):
        h = nn.relu(_bn("bn1", train)(_conv(self.stem_width, 7, 2, name="conv1")(x)))
        h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block = maybe_remat(Block, self.remat, static_argnums=(2,))  # (self, x, train)
        for s, (width, n) in enumerate(zip(self.widths, self.layers)):
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                h = block(width, stride, self.bottleneck, name=f"layer{s + 1}_{b}")(h, train)
        h = jnp.mean(h, axis=(1, 2))
        if features:
            return h
        return nn.Dense(self.num_classes, name="fc")(h)


def convert_state_dict(sd: Mapping[str, np.ndarray], module: ResNet) -> dict:
    """torchvision/timm ResNet state dict -> flax variables for ``module``."""
    params, stats = {}, {}
    params["conv1"] = conv(sd, "conv1", bias=False)
    params["bn1"], stats["bn1"] = batch_norm(sd, "bn1")
    n_convs, expansion = (3, 4) if module.bottleneck else (2, 1)
    channels = module.stem_width
    for s, n in enumerate(module.layers):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            out_channels = module.widths[s] * expansion
            name, prefix = f"layer{s + 1}_{b}", f"layer{s + 1}.{b}"
            p, st = {}, {}
            for i in range(1, n_convs + 1):
                p[f"conv{i}"] = conv(sd, f"{prefix}.conv{i}", bias=False)
                p[f"bn{i}"], st[f"bn{i}"] = batch_norm(sd, f"{prefix}.bn{i}")
            if stride != 1 or channels != out_channels:  # projection shortcut, as in Block
                p["downsample_conv"] = conv(sd, f"{prefix}.downsample.0", bias=False)
                p["downsample_bn"], st["downsample_bn"] = batch_norm(sd, f"{prefix}.downsample.1")
            params[name], stats[name] = p, st
            channels = out_channels
    params["fc"] = dense(sd, "fc")
    return {"params": params, "batch_stats": stats}


def _spec(name: str) -> ModelSpec:
    # torchvision's ImageNet weights: resize 256 bilinear, center crop 224, ImageNet mean/std.
    return ModelSpec(name, (224, 224, 3), 1000, IMAGENET_MEAN, IMAGENET_STD,
                     class_names=imagenet_class_names(), crop_pct=0.875,
                     interpolation="bilinear")


def _factory(layers, bottleneck):
    def make(num_classes: int = 1000, **overrides) -> ResNet:
        kw = {"layers": layers, "bottleneck": bottleneck, **overrides}
        return ResNet(num_classes=num_classes, **kw)

    return make


_CONFIGS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}

ENTRIES: dict[str, Entry] = {
    name: Entry(_factory(layers, bottleneck), _spec(name))
    for name, (layers, bottleneck) in _CONFIGS.items()
}
