"""Small models for tests, the embedded default and certified training.

* ``MLP``: flatten -> [Dense -> ReLU]* -> Dense.
* ``CNN``: [Conv -> ReLU]* -> flatten -> Dense -> ReLU -> Dense; no BatchNorm, so every layer
  is one that bound propagation handles exactly. The default sizes are the "small" CNN of
  Gowal et al. 2018 (IBP): conv 16 4x4/2, conv 32 4x4/2, dense 100.
* ``ResNet18CIFAR``: the CIFAR-style ResNet-18 (3x3 stem, no max-pool; He et al. 2016),
  BatchNorm in inference mode by default (running statistics in the ``batch_stats``
  collection); ``train=True`` normalises with batch statistics (``robustjax.train.modes``).

All modules take *normalised* NHWC input; ``robustjax.models.wrap`` adds the [0, 1] ->
normalised step so that a ``Model.apply_fn`` always sees pixels.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from robustjax.models.layers import Conv


class MLP(nn.Module):
    num_classes: int = 10
    hidden: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, x, features: bool = False):
        h = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"dense{i}")(h))
        if features:
            return h
        return nn.Dense(self.num_classes, name="head")(h)


class CNN(nn.Module):
    num_classes: int = 10
    channels: Sequence[int] = (16, 32)
    kernel: int = 4
    stride: int = 2
    hidden: int = 100

    @nn.compact
    def __call__(self, x, features: bool = False):
        # Explicit symmetric padding: flax's 'SAME' pads stride-2 convs asymmetrically, which
        # would not match PyTorch/IBP reference models.
        pad = (self.kernel - 1) // 2
        h = x
        for i, c in enumerate(self.channels):
            h = Conv(c, (self.kernel, self.kernel), strides=self.stride,
                     padding=((pad, pad), (pad, pad)), name=f"conv{i}")(h)
            h = nn.relu(h)
        h = h.reshape((h.shape[0], -1))
        h = nn.relu(nn.Dense(self.hidden, name="dense0")(h))
        if features:
            return h
        return nn.Dense(self.num_classes, name="head")(h)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                         epsilon=1e-5, name=name)
        h = Conv(self.features, (3, 3), strides=self.stride, padding=((1, 1), (1, 1)),
                 use_bias=False, name="conv1")(x)
        h = nn.relu(norm("bn1")(h))
        h = Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                 name="conv2")(h)
        h = norm("bn2")(h)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1), strides=self.stride, use_bias=False,
                     name="shortcut_conv")(x)
            x = norm("shortcut_bn")(x)
        return nn.relu(h + x)


class ResNet18CIFAR(nn.Module):
    num_classes: int = 10
    widths: Sequence[int] = (64, 128, 256, 512)
    blocks: Sequence[int] = (2, 2, 2, 2)

    @nn.compact
    def __call__(self, x, features: bool = False, train: bool = False):
        h = Conv(self.widths[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                 name="stem_conv")(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 name="stem_bn")(h))
        for stage, (width, n) in enumerate(zip(self.widths, self.blocks)):
            for b in range(n):
                stride = 2 if (stage > 0 and b == 0) else 1
                h = BasicBlock(width, stride, name=f"layer{stage + 1}_{b}")(h, train)
        h = jnp.mean(h, axis=(1, 2))
        if features:
            return h
        return nn.Dense(self.num_classes, name="head")(h)
