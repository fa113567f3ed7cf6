"""Inception-V3 (Szegedy et al. 2016) in Flax, with PyTorch (torchvision / timm) weight porting.

Architecture (torchvision ``Inception3`` = timm ``InceptionV3``, eval mode): every conv is
``BasicConv2d`` = conv (no bias) -> BatchNorm (eps **1e-3**) -> ReLU; stem
1a 3x3/2, 2a 3x3, 2b 3x3 pad 1, max-pool 3/2, 3b 1x1, 4a 3x3, max-pool 3/2; Mixed_5b-5d
(InceptionA), 6a (B), 6b-6e (C, 7x7 factorised), 7a (D), 7b-7c (E); global average pool ->
Linear(2048, classes). The 3x3/1 average pools of the A, C and E blocks pad by 1 and *count the
padding* in the mean (PyTorch's ``count_include_pad=True``). Input 299x299 (anything >= 75 runs).

Checkpoint names are torchvision's, which timm shares (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_var``, ``fc.weight``). torchvision's auxiliary classifier
(``AuxLogits.*``, training only) is listed in ``IGNORED_KEYS`` and not ported.

Preprocessing and torchvision's ``transform_input``: the torchvision weights
(``inception_v3_google``, ported from TensorFlow) expect pixels scaled to [-1, 1]. torchvision
keeps ImageNet mean/std in its transforms and, for these weights, sets ``transform_input=True``,
which maps ImageNet-normalised input back to ``(pixel - 0.5) / 0.5`` inside the network. timm
instead declares mean = std = 0.5 for the same weights and has no ``transform_input``. The two are
the same function of the pixels; robustjax does what timm does: the spec has mean = std = 0.5
(applied by ``wrap``) and the module has no ``transform_input``.

Example::

    from robustjax.models import loading
    model = loading.load("inception_v3", "inception_v3_google-0cc3c7bd.pth")
    logits = model.apply_fn(model.params, x)  # x: [b, 299, 299, 3] in [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from robustjax.models import loading
from robustjax.models.layers import Conv
from robustjax.models.registry import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    Entry,
    imagenet_class_names,
)
from robustjax.types import ModelSpec

BN_EPS = 1e-3
IGNORED_KEYS = ("AuxLogits.",)


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps 1e-3, running statistics) -> ReLU."""

    features: int
    kernel: Sequence[int] = (1, 1)
    stride: int = 1
    padding: Sequence[int] = (0, 0)  # (pad_h, pad_w), symmetric as in PyTorch

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = Conv(self.features, tuple(self.kernel), strides=self.stride,
                 padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    # F.avg_pool2d(x, 3, stride=1, padding=1): the zero padding counts in the mean.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=True)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def _c(x, n, k=(1, 1), s=1, p=(0, 0), *, name):
    return BasicConv2d(n, k, s, p, name=name)(x)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = _c(x, 64, name="branch1x1")
        b5 = _c(_c(x, 48, name="branch5x5_1"), 64, (5, 5), p=(2, 2), name="branch5x5_2")
        b3 = _c(x, 64, name="branch3x3dbl_1")
        b3 = _c(b3, 96, (3, 3), p=(1, 1), name="branch3x3dbl_2")
        b3 = _c(b3, 96, (3, 3), p=(1, 1), name="branch3x3dbl_3")
        bp = _c(_avg_pool_3x3(x), self.pool_features, name="branch_pool")
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = _c(x, 384, (3, 3), s=2, name="branch3x3")
        bd = _c(x, 64, name="branch3x3dbl_1")
        bd = _c(bd, 96, (3, 3), p=(1, 1), name="branch3x3dbl_2")
        bd = _c(bd, 96, (3, 3), s=2, name="branch3x3dbl_3")
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = _c(x, 192, name="branch1x1")
        b7 = _c(x, c7, name="branch7x7_1")
        b7 = _c(b7, c7, (1, 7), p=(0, 3), name="branch7x7_2")
        b7 = _c(b7, 192, (7, 1), p=(3, 0), name="branch7x7_3")
        bd = _c(x, c7, name="branch7x7dbl_1")
        bd = _c(bd, c7, (7, 1), p=(3, 0), name="branch7x7dbl_2")
        bd = _c(bd, c7, (1, 7), p=(0, 3), name="branch7x7dbl_3")
        bd = _c(bd, c7, (7, 1), p=(3, 0), name="branch7x7dbl_4")
        bd = _c(bd, 192, (1, 7), p=(0, 3), name="branch7x7dbl_5")
        bp = _c(_avg_pool_3x3(x), 192, name="branch_pool")
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = _c(_c(x, 192, name="branch3x3_1"), 320, (3, 3), s=2, name="branch3x3_2")
        b7 = _c(x, 192, name="branch7x7x3_1")
        b7 = _c(b7, 192, (1, 7), p=(0, 3), name="branch7x7x3_2")
        b7 = _c(b7, 192, (7, 1), p=(3, 0), name="branch7x7x3_3")
        b7 = _c(b7, 192, (3, 3), s=2, name="branch7x7x3_4")
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    @nn.compact
    def __call__(self, x):
        b1 = _c(x, 320, name="branch1x1")
        b3 = _c(x, 384, name="branch3x3_1")
        b3 = jnp.concatenate([_c(b3, 384, (1, 3), p=(0, 1), name="branch3x3_2a"),
                              _c(b3, 384, (3, 1), p=(1, 0), name="branch3x3_2b")], axis=-1)
        bd = _c(x, 448, name="branch3x3dbl_1")
        bd = _c(bd, 384, (3, 3), p=(1, 1), name="branch3x3dbl_2")
        bd = jnp.concatenate([_c(bd, 384, (1, 3), p=(0, 1), name="branch3x3dbl_3a"),
                              _c(bd, 384, (3, 1), p=(1, 0), name="branch3x3dbl_3b")], axis=-1)
        bp = _c(_avg_pool_3x3(x), 192, name="branch_pool")
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# (name, block, constructor argument) in forward order after the stem
_MIXED = (("Mixed_5b", InceptionA, 32), ("Mixed_5c", InceptionA, 64),
          ("Mixed_5d", InceptionA, 64), ("Mixed_6a", InceptionB, None),
          ("Mixed_6b", InceptionC, 128), ("Mixed_6c", InceptionC, 160),
          ("Mixed_6d", InceptionC, 160), ("Mixed_6e", InceptionC, 192),
          ("Mixed_7a", InceptionD, None), ("Mixed_7b", InceptionE, None),
          ("Mixed_7c", InceptionE, None))
_STEM = (("Conv2d_1a_3x3", 32, 3, 2, 0), ("Conv2d_2a_3x3", 32, 3, 1, 0),
         ("Conv2d_2b_3x3", 64, 3, 1, 1), ("pool", 0, 0, 0, 0),
         ("Conv2d_3b_1x1", 80, 1, 1, 0), ("Conv2d_4a_3x3", 192, 3, 1, 0), ("pool", 0, 0, 0, 0))


class InceptionV3(nn.Module):
    """Inception-V3 classifier; ``__call__(x, features=False)`` with normalised NHWC ``x``.

    ``features=True`` returns the globally average-pooled ``Mixed_7c`` output, ``[b, 2048]``.
    """

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, features: bool = False):
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"Inception-V3 needs images of at least 75x75, got "
                             f"{x.shape[1]}x{x.shape[2]}")
        h = x
        for name, n, k, s, p in _STEM:
            if name == "pool":
                h = _max_pool_3x3_s2(h)
            else:
                h = _c(h, n, (k, k), s, (p, p), name=name)
        for name, block, arg in _MIXED:
            h = (block(arg, name=name) if arg is not None else block(name=name))(h)
        h = jnp.mean(h, axis=(1, 2))
        if features:
            return h
        return nn.Dense(self.num_classes, name="fc")(h)


def _inception_v3(num_classes: int = 1000) -> InceptionV3:
    return InceptionV3(num_classes=num_classes)


# timm pretrained_cfg (tv_in1k / tf_in1k weights): 299, crop 0.875, bicubic, mean = std = 0.5.
ENTRIES: dict[str, Entry] = {
    "inception_v3": Entry(_inception_v3, ModelSpec(
        "inception_v3", (299, 299, 3), 1000, INCEPTION_MEAN, INCEPTION_STD,
        class_names=imagenet_class_names(), crop_pct=0.875, interpolation="bicubic")),
}


def _conv_bn(sd, prefix: str, params: dict, stats: dict, name: str) -> None:
    bn_params, bn_stats = loading.batch_norm(sd, f"{prefix}.bn")
    params[name] = {"conv": loading.conv(sd, f"{prefix}.conv", bias=False), "bn": bn_params}
    stats[name] = {"bn": bn_stats}


def convert_state_dict(sd: Mapping[str, np.ndarray], module: InceptionV3) -> dict:
    """torchvision/timm-named Inception-V3 state dict -> flax ``{"params", "batch_stats"}``.

    The flax submodule names equal the PyTorch ones, so ``Mixed_5b.branch1x1.conv.weight`` goes
    to ``params/Mixed_5b/branch1x1/conv/kernel`` and ``...bn.running_var`` to
    ``batch_stats/Mixed_5b/branch1x1/bn/var``.
    """
    del module  # fixed architecture; only the head size varies, and it is read from ``fc``
    params: dict = {}
    stats: dict = {}
    for name, _, _, _, _ in _STEM:
        if name != "pool":
            _conv_bn(sd, name, params, stats, name)
    for block_name, block, arg in _MIXED:
        params[block_name], stats[block_name] = {}, {}
        for conv_name in _BLOCK_CONVS[block]:
            _conv_bn(sd, f"{block_name}.{conv_name}", params[block_name], stats[block_name],
                     conv_name)
    params["fc"] = loading.dense(sd, "fc")
    return {"params": params, "batch_stats": stats}


_BLOCK_CONVS = {
    InceptionA: ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
                 "branch3x3dbl_3", "branch_pool"),
    InceptionB: ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    InceptionC: ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1",
                 "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5",
                 "branch_pool"),
    InceptionD: ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2",
                 "branch7x7x3_3", "branch7x7x3_4"),
    InceptionE: ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
                 "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}
