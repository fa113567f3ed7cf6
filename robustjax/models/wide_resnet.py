"""Wide residual networks for CIFAR (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

Two variants, as RobustBench ships them (``robustbench/model_zoo/architectures``):

* ``WideResNet`` (``wide_resnet.py``, the TRADES code; Carmon 2019, Zhang 2019, ... entries):
  3x3 stem conv to 16 channels, three groups of ``(depth - 4) / 6`` pre-activation blocks
  (BN-ReLU-conv3x3-BN-ReLU-conv3x3, stride 1/2/2, ``16k, 32k, 64k`` channels for width ``k``);
  a block whose channels change takes its 1x1 projection shortcut from the *activated* input.
  Convolutions pad 1 on every side. Final BN-ReLU, 8x8 average pool (global at 32x32), linear
  head. No normalisation inside (RobustBench feeds [0, 1] pixels).
* ``DMWideResNet`` (``dm_wide_resnet.py``, DeepMind's: Gowal 2020, Rebuffi 2021, ... entries):
  the same blocks with Swish (RobustBench's entries) or ReLU, strided convolutions padded
  ``(0, 1)`` (TensorFlow's "SAME"), the shortcut wherever channels change, a head with bias,
  and the CIFAR-10 mean/std inside the model (non-persistent buffers, so not in checkpoints;
  here they are the spec's normalisation). ``*_cifar100`` entries: 100 classes and
  DeepMind's CIFAR-100 mean/std.

BatchNorm: eps 1e-5, inference statistics unless ``train=True``. Input: *normalised* NHWC
float32 (``robustjax.models.wrap`` normalises); ``features=True`` returns the pooled
``[b, 64 * width]`` features. Flax names follow the PyTorch keys (``block1.layer.0.conv1`` ->
``block1_0/conv1``; ``layer.1.block.0.conv_0`` -> ``layer_1_0/conv_0``).

Example::

    model = robustjax.models.load("dm_wrn_70_16", "Gowal2020Uncovering_70_16.pt")
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from robustjax.models.layers import Conv
from robustjax.models.loading import batch_norm, conv, dense
from robustjax.models.registry import CIFAR_MEAN, CIFAR_SHAPE, CIFAR_STD, Entry
from robustjax.types import ModelSpec

ACTIVATIONS = {"relu": nn.relu, "swish": nn.swish}

# Pixels [0, 1] in, as RobustBench's classic WideResNet entries take them.
_IDENTITY = ((0.0,), (1.0,))


def group_sizes(depth: int) -> int:
    """Blocks per group of a WRN of ``depth`` layers: ``(depth - 4) / 6``."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, "
                         f"40, 70, 106, ...), got {depth}")
    return (depth - 4) // 6


def channels(width: int) -> tuple[int, int, int, int]:
    return (16, 16 * width, 32 * width, 64 * width)


def _bn(name: str, train: bool):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _conv(features: int, k: int, stride: int, padding, name: str):
    return Conv(features, (k, k), strides=stride, padding=padding, use_bias=False, name=name)


def _act(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Block(nn.Module):
    """One pre-activation block; ``dm`` selects DeepMind's padding and names."""

    features: int
    stride: int
    dm: bool = False
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = _act(self.activation)
        names = (("batchnorm_0", "conv_0", "batchnorm_1", "conv_1") if self.dm else
                 ("bn1", "conv1", "bn2", "conv2"))
        project = x.shape[-1] != self.features
        if self.stride != 1 and not project:
            raise ValueError("a strided WideResNet block must change the number of channels")
        h = act(_bn(names[0], train)(x))
        if project:  # the projection (and the residual branch) start from the activated input
            x = h
        same = ((1, 1), (1, 1))
        pad = ((0, 1), (0, 1)) if (self.dm and self.stride == 2) else same
        h = _conv(self.features, 3, self.stride, pad, names[1])(h)
        h = act(_bn(names[2], train)(h))
        h = _conv(self.features, 3, 1, same, names[3])(h)
        if project:
            x = _conv(self.features, 1, self.stride, ((0, 0), (0, 0)),
                      "shortcut" if self.dm else "convShortcut")(x)
        return x + h


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` (classic, RobustBench ``wide_resnet.WideResNet``)."""

    num_classes: int = 10
    depth: int = 28
    width: int = 10
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, features: bool = False, train: bool = False):
        n, ch = group_sizes(self.depth), channels(self.width)
        h = _conv(ch[0], 3, 1, ((1, 1), (1, 1)), "conv1")(x)
        for g in range(3):
            for b in range(n):
                h = Block(ch[g + 1], (1, 2, 2)[g] if b == 0 else 1, False, self.activation,
                          name=f"block{g + 1}_{b}")(h, train)
        h = _act(self.activation)(_bn("bn1", train)(h))
        h = jnp.mean(h, axis=(1, 2))
        if features:
            return h
        return nn.Dense(self.num_classes, name="fc")(h)


class DMWideResNet(nn.Module):
    """WRN-``depth``-``width`` (DeepMind, RobustBench ``dm_wide_resnet.DMWideResNet``)."""

    num_classes: int = 10
    depth: int = 28
    width: int = 10
    activation: str = "swish"

    @nn.compact
    def __call__(self, x, features: bool = False, train: bool = False):
        n, ch = group_sizes(self.depth), channels(self.width)
        h = _conv(ch[0], 3, 1, ((1, 1), (1, 1)), "init_conv")(x)
        for g in range(3):
            for b in range(n):
                h = Block(ch[g + 1], (1, 2, 2)[g] if b == 0 else 1, True, self.activation,
                          name=f"layer_{g}_{b}")(h, train)
        h = _act(self.activation)(_bn("batchnorm", train)(h))
        h = jnp.mean(h, axis=(1, 2))
        if features:
            return h
        return nn.Dense(self.num_classes, name="logits")(h)


# Keys of parameters RobustBench's classic WideResNet creates but never uses in forward
# (``sub_block1=True`` in the TRADES-derived entries).
IGNORED_KEYS = ("sub_block1.",)


def convert_block(sd: Mapping[str, np.ndarray], prefix: str, bns, convs, shortcut=None):
    """One pre-activation block of a RobustBench state dict -> ``(params, batch_stats)``.

    ``bns``/``convs``: the block's BatchNorm and (bias-free) convolution names, the same in
    flax and under ``prefix`` in the state dict; ``shortcut``: ``(flax name, key under
    prefix)`` of the projection, or None.
    """
    p, st = {}, {}
    for bn_name in bns:
        p[bn_name], st[bn_name] = batch_norm(sd, f"{prefix}.{bn_name}")
    for conv_name in convs:
        p[conv_name] = conv(sd, f"{prefix}.{conv_name}", bias=False)
    if shortcut is not None:
        p[shortcut[0]] = conv(sd, f"{prefix}.{shortcut[1]}", bias=False)
    return p, st


def convert_state_dict(sd: Mapping[str, np.ndarray], module) -> dict:
    """RobustBench WideResNet / DMWideResNet state dict -> flax variables for ``module``."""
    dm = isinstance(module, DMWideResNet)
    n, ch = group_sizes(module.depth), channels(module.width)
    params, stats = {}, {}
    stem = "init_conv" if dm else "conv1"
    params[stem] = conv(sd, stem, bias=False)
    in_ch = ch[0]
    for g in range(3):
        for b in range(n):
            name = f"layer_{g}_{b}" if dm else f"block{g + 1}_{b}"
            prefix = f"layer.{g}.block.{b}" if dm else f"block{g + 1}.layer.{b}"
            bns = ("batchnorm_0", "batchnorm_1") if dm else ("bn1", "bn2")
            convs = ("conv_0", "conv_1") if dm else ("conv1", "conv2")
            short = "shortcut" if dm else "convShortcut"
            params[name], stats[name] = convert_block(
                sd, prefix, bns, convs, (short, short) if in_ch != ch[g + 1] else None)
            in_ch = ch[g + 1]
    head_bn, head = ("batchnorm", "logits") if dm else ("bn1", "fc")
    params[head_bn], stats[head_bn] = batch_norm(sd, head_bn)
    params[head] = dense(sd, head)
    return {"params": params, "batch_stats": stats}


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# CIFAR-100's fine labels in index order (alphabetical), and the mean/std DeepMind's CIFAR-100
# models normalise with (``dm_wide_resnet.CIFAR100_MEAN`` / ``CIFAR100_STD``).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm")
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _entry(cls, depth: int, width: int, cifar100: bool = False) -> tuple[str, Entry]:
    dm = cls is DMWideResNet
    name = f"{'dm_' if dm else ''}wrn_{depth}_{width}{'_cifar100' if cifar100 else ''}"
    classes = CIFAR100_CLASSES if cifar100 else CIFAR10_CLASSES
    mean, std = ((CIFAR100_MEAN, CIFAR100_STD) if cifar100 else (CIFAR_MEAN, CIFAR_STD)) if dm \
        else _IDENTITY

    def make(num_classes: int = len(classes), **overrides):
        return cls(num_classes=num_classes, **{"depth": depth, "width": width, **overrides})

    return name, Entry(make, ModelSpec(name, CIFAR_SHAPE, len(classes), mean, std,
                                       class_names=classes))


# The sizes RobustBench's CIFAR-10 and CIFAR-100 leaderboards use; any other 6n+4 depth and
# width is an override (``create("wrn_28_10", depth=16, width=4)``).
ENTRIES: dict[str, Entry] = dict(
    [_entry(WideResNet, d, w) for d, w in ((28, 10), (34, 10), (34, 20), (70, 16))]
    + [_entry(DMWideResNet, d, w) for d, w in ((28, 10), (34, 20), (70, 16), (106, 16))]
    + [_entry(DMWideResNet, d, w, cifar100=True) for d, w in ((28, 10), (70, 16))])
