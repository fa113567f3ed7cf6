"""Pre-activation ResNets for CIFAR (He et al. 2016, "Identity Mappings in Deep Residual
Networks"), as RobustBench ships them.

* ``PreActResNet`` (``robustbench/model_zoo/architectures/resnet.py``; Wong 2020, Rice 2020,
  Kireev 2021 entries): 3x3 stem conv to 64 channels (no BN), four stages of pre-activation
  blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3, widths 64/128/256/512, strides 1/2/2/2), a 1x1
  projection shortcut where the shape changes, taken from the raw input (``PreActBlock``) or
  from the activated one (``PreActBlockV2``: ``out_shortcut=True``); optional final BN-ReLU
  (``bn_before_fc``), 4x4 average pool (global at 32x32), linear head.
* ``DMPreActResNet`` (``dm_wide_resnet.py``, DeepMind's; Rebuffi 2021, Gowal 2021 entries):
  the same stages with Swish, strided convolutions padded ``(0, 1)``, a *3x3* projection
  shortcut from the raw input, a final BN-activation, and the CIFAR-10 mean/std inside.

BatchNorm: eps 1e-5, inference statistics unless ``train=True``. Input: *normalised* NHWC
float32; ``features=True`` returns the pooled ``[b, widths[-1]]`` features. Flax names follow
the PyTorch keys (``layer1.0.conv1`` -> ``layer1_0/conv1``; ``layer_0.0.conv_2d_1`` ->
``layer_0_0/conv_2d_1``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from robustjax.models.loading import batch_norm, conv, dense
from robustjax.models.registry import CIFAR_MEAN, CIFAR_SHAPE, CIFAR_STD, Entry
# the BatchNorm, convolution and activation conventions are the wide ResNets' (RobustBench's)
from robustjax.models.wide_resnet import (
    CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD, CIFAR10_CLASSES, _act, _bn, _conv,
    convert_block)
from robustjax.types import ModelSpec

_SAME = ((1, 1), (1, 1))


def _strides(layers: Sequence[int]):
    """(stage, block, stride) for every block: the first block of stages 2-4 has stride 2."""
    for s, n in enumerate(layers):
        for b in range(n):
            yield s, b, (2 if s > 0 and b == 0 else 1)


class PreActBlock(nn.Module):
    features: int
    stride: int
    out_shortcut: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(_bn("bn1", train)(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = _conv(self.features, 1, self.stride, ((0, 0), (0, 0)), "shortcut")(
                h if self.out_shortcut else x)
        h = _conv(self.features, 3, self.stride, _SAME, "conv1")(h)
        h = _conv(self.features, 3, 1, _SAME, "conv2")(nn.relu(_bn("bn2", train)(h)))
        return h + shortcut


class PreActResNet(nn.Module):
    """RobustBench ``resnet.PreActResNet`` (``PreActResNet18`` = the defaults)."""

    num_classes: int = 10
    layers: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    out_shortcut: bool = False  # True: PreActBlockV2 (shortcut from the activated input)
    bn_before_fc: bool = False

    @nn.compact
    def __call__(self, x, features: bool = False, train: bool = False):
        h = _conv(self.widths[0], 3, 1, _SAME, "conv1")(x)
        for s, b, stride in _strides(self.layers):
            h = PreActBlock(self.widths[s], stride, self.out_shortcut,
                            name=f"layer{s + 1}_{b}")(h, train)
        if self.bn_before_fc:
            h = nn.relu(_bn("bn", train)(h))
        h = jnp.mean(h, axis=(1, 2))
        if features:
            return h
        return nn.Dense(self.num_classes, name="linear")(h)


class DMPreActBlock(nn.Module):
    features: int
    stride: int
    activation: str = "swish"

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = _act(self.activation)
        pad = ((0, 1), (0, 1)) if self.stride == 2 else _SAME
        h = act(_bn("batchnorm_0", train)(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = _conv(self.features, 3, self.stride, pad, "shortcut")(x)
        h = _conv(self.features, 3, self.stride, pad, "conv_2d_1")(h)
        h = _conv(self.features, 3, 1, _SAME, "conv_2d_2")(act(_bn("batchnorm_1", train)(h)))
        return h + shortcut


class DMPreActResNet(nn.Module):
    """RobustBench ``dm_wide_resnet.DMPreActResNet`` (depth 18: layers (2, 2, 2, 2))."""

    num_classes: int = 10
    layers: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    activation: str = "swish"

    @nn.compact
    def __call__(self, x, features: bool = False, train: bool = False):
        act = _act(self.activation)
        h = _conv(self.widths[0], 3, 1, _SAME, "conv_2d")(x)
        for s, b, stride in _strides(self.layers):
            h = DMPreActBlock(self.widths[s], stride, self.activation,
                              name=f"layer_{s}_{b}")(h, train)
        h = act(_bn("batchnorm", train)(h))
        h = jnp.mean(h, axis=(1, 2))
        if features:
            return h
        return nn.Dense(self.num_classes, name="logits")(h)


def convert_state_dict(sd: Mapping[str, np.ndarray], module) -> dict:
    """RobustBench PreActResNet / DMPreActResNet state dict -> flax variables for ``module``."""
    dm = isinstance(module, DMPreActResNet)
    params, stats = {}, {}
    stem = "conv_2d" if dm else "conv1"
    params[stem] = conv(sd, stem, bias=False)
    in_ch = module.widths[0]
    for s, b, stride in _strides(module.layers):
        name = f"layer_{s}_{b}" if dm else f"layer{s + 1}_{b}"
        prefix = f"layer_{s}.{b}" if dm else f"layer{s + 1}.{b}"
        bns = ("batchnorm_0", "batchnorm_1") if dm else ("bn1", "bn2")
        convs = ("conv_2d_1", "conv_2d_2") if dm else ("conv1", "conv2")
        project = stride != 1 or in_ch != module.widths[s]
        params[name], stats[name] = convert_block(
            sd, prefix, bns, convs,
            ("shortcut", "shortcut" + ("" if dm else ".0")) if project else None)
        in_ch = module.widths[s]
    if dm:
        params["batchnorm"], stats["batchnorm"] = batch_norm(sd, "batchnorm")
    elif module.bn_before_fc:
        params["bn"], stats["bn"] = batch_norm(sd, "bn")
    head = "logits" if dm else "linear"
    params[head] = dense(sd, head)
    return {"params": params, "batch_stats": stats}


def _entry(name: str, cls, mean, std, classes=CIFAR10_CLASSES) -> tuple[str, Entry]:
    def make(num_classes: int = len(classes), **overrides):
        return cls(num_classes=num_classes, **overrides)

    return name, Entry(make, ModelSpec(name, CIFAR_SHAPE, len(classes), mean, std,
                                       class_names=classes))


ENTRIES: dict[str, Entry] = dict([
    # Wong 2020's and Rice 2020's checkpoints hold their mean/std as ``mu``/``sigma``
    # buffers; ``models.load`` takes them from the checkpoint.
    _entry("preact_resnet18", PreActResNet, CIFAR_MEAN, CIFAR_STD),
    _entry("dm_preact_resnet18", DMPreActResNet, CIFAR_MEAN, CIFAR_STD),
    _entry("dm_preact_resnet18_cifar100", DMPreActResNet, CIFAR100_MEAN, CIFAR100_STD,
           CIFAR100_CLASSES),
])
