"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s") in Flax, with PyTorch weight porting.

Sizes atto ... xlarge as in timm (``depths``, ``dims``); ImageNet-1k heads (``convnext_<size>``)
and the ImageNet-22k heads of the facebookresearch release (``convnext_<size>_22k``, 21841
classes, tiny ... xlarge only).

Architecture (timm ``ConvNeXt``, eval mode): stem = conv 4x4/4 + LayerNorm; 4 stages, stages
1-3 start with LayerNorm + conv 2x2/2; each block is
``x + gamma * fc2(gelu(fc1(LN(dwconv7x7(x)))))`` (depthwise 7x7 with padding 3, exact erf GELU, layer-scale ``gamma``); head = global average
pool -> LayerNorm -> Linear. All LayerNorms use eps 1e-6.

The module takes *normalised* NHWC input (``robustjax.models.wrap`` adds the [0, 1] pixel ->
ImageNet mean/std step); ``features=True`` returns the head-normalised pooled features (the input
of the final Linear, timm's ``forward_head(pre_logits=True)``), shape ``[b, dims[-1]]``.

Checkpoint names: timm (``stem.0``, ``stages.i.downsample.1``, ``stages.i.blocks.j.conv_dw``,
``...mlp.fc1``, ``head.norm``, ``head.fc``) are canonical; the original facebookresearch names
(``downsample_layers.*``, ``stages.i.j.dwconv``, ``pwconv1``, final ``norm``, ``head``) are
renamed by :func:`canonicalize_keys`. The small sizes (atto ... nano) use timm's ``conv_mlp``
layout, where fc1/fc2 are 1x1 convolutions ``(out, in, 1, 1)``; both layouts are accepted.

Example::

    from robustjax.models import loading
    model = loading.load("convnext_tiny", "convnext_tiny_1k_224_ema.pth")
    logits = model.apply_fn(model.params, x)  # x: [b, 224, 224, 3] in [0, 1]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from robustjax.models import loading
from robustjax.models.layers import Conv, maybe_remat
from robustjax.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Entry,
    imagenet_class_names,
)
from robustjax.types import ModelSpec

_layer_norm = loading.timm_layer_norm


class ConvNeXtBlock(nn.Module):
    """``x + gamma * fc2(gelu(fc1(norm(conv_dw(x)))))``; NHWC in and out."""

    dim: int
    mlp_ratio: int = 4
    ls_init_value: float = 1e-6

    @nn.compact
    def __call__(self, x):
        h = Conv(self.dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=self.dim,
                 name="conv_dw")(x)
        h = _layer_norm("norm")(h)
        h = nn.Dense(self.mlp_ratio * self.dim, name="fc1")(h)
        h = nn.gelu(h, approximate=False)  # PyTorch nn.GELU() is the exact erf form
        h = nn.Dense(self.dim, name="fc2")(h)
        gamma = self.param("gamma", nn.initializers.constant(self.ls_init_value), (self.dim,))
        return x + gamma * h


class ConvNeXt(nn.Module):
    """ConvNeXt classifier; ``__call__(x, features=False)`` with normalised NHWC ``x``.

    ``remat``: rematerialise every block in the backward pass (``layers.maybe_remat``): less
    memory for attacks and training on big batches, the same parameters and outputs.
    """

    num_classes: int = 1000
    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    ls_init_value: float = 1e-6
    remat: bool = False

    @nn.compact
    def __call__(self, x, features: bool = False):
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths {tuple(self.depths)} and dims {tuple(self.dims)} must have "
                             f"the same length")
        h = Conv(self.dims[0], (4, 4), strides=4, padding=((0, 0), (0, 0)),
                 name="stem_conv")(x)
        h = _layer_norm("stem_norm")(h)
        block = maybe_remat(ConvNeXtBlock, self.remat)
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            if i > 0:
                h = _layer_norm(f"stage{i}_down_norm")(h)
                h = Conv(dim, (2, 2), strides=2, padding=((0, 0), (0, 0)),
                         name=f"stage{i}_down_conv")(h)
            for j in range(depth):
                h = block(dim, ls_init_value=self.ls_init_value, name=f"stage{i}_block{j}")(h)
        h = jnp.mean(h, axis=(1, 2))
        h = _layer_norm("head_norm")(h)
        if features:
            return h
        return nn.Dense(self.num_classes, name="head_fc")(h)


# name -> (depths, dims); as timm's convnext_<size> constructors.
SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
SIZES_22K = ("tiny", "small", "base", "large", "xlarge")  # facebookresearch in22k releases


def _factory(depths, dims):
    def make(num_classes: int = 1000, **overrides) -> ConvNeXt:
        kwargs = {"depths": depths, "dims": dims, **overrides}
        return ConvNeXt(num_classes=num_classes, **kwargs)

    make.__name__ = f"convnext_{'_'.join(map(str, dims))}"
    return make


def _spec(name: str, num_classes: int) -> ModelSpec:
    # timm pretrained_cfg of the fb_in1k / fb_in22k / d1_in1k weights: 224, crop 0.875, bicubic,
    # ImageNet mean/std. The 21841 ImageNet-22k classes have no names in robustjax.
    names = imagenet_class_names() if num_classes == 1000 else None
    return ModelSpec(name, (224, 224, 3), num_classes, IMAGENET_MEAN, IMAGENET_STD,
                     class_names=names, crop_pct=0.875, interpolation="bicubic")


ENTRIES: dict[str, Entry] = {}
for _size, (_depths, _dims) in SIZES.items():
    ENTRIES[f"convnext_{_size}"] = Entry(_factory(_depths, _dims),
                                         _spec(f"convnext_{_size}", 1000))
    if _size in SIZES_22K:
        ENTRIES[f"convnext_{_size}_22k"] = Entry(_factory(_depths, _dims),
                                                 _spec(f"convnext_{_size}_22k", 21841))


# --- checkpoint conversion ----------------------------------------------------------------------

_FB_RULES = (  # facebookresearch ConvNeXt names -> timm names, applied in order
    (re.compile(r"^downsample_layers\.0\."), "stem."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), r"stages.\1.blocks.\2."),
    (re.compile(r"^downsample_layers\.(\d+)\."), r"stages.\1.downsample."),
    (re.compile(r"\.dwconv\."), ".conv_dw."),
    (re.compile(r"\.pwconv(\d)\."), r".mlp.fc\1."),
    (re.compile(r"^head\."), "head.fc."),
    (re.compile(r"^norm\."), "head.norm."),
)


def canonicalize_keys(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename facebookresearch ConvNeXt keys to timm's; timm-named dicts pass through unchanged.

    A dict is taken as facebookresearch-named when it has ``downsample_layers.0.0.weight``
    (the stem conv); then every rule of ``_FB_RULES`` is applied to every key.
    """
    if "downsample_layers.0.0.weight" not in sd:
        return dict(sd)
    out = {}
    for key, value in sd.items():
        for pattern, repl in _FB_RULES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _pointwise(sd, prefix: str) -> dict:
    """fc1/fc2 as ``nn.Linear`` (out, in) or as timm's conv_mlp 1x1 conv (out, in, 1, 1)."""
    w = sd[f"{prefix}.weight"]
    if np.ndim(w) == 4:
        w = w[:, :, 0, 0]  # a view: keeps zero-stride placeholder arrays unallocated
    return {"kernel": np.transpose(w), "bias": sd[f"{prefix}.bias"]}


def convert_state_dict(sd: Mapping[str, np.ndarray], module: ConvNeXt) -> dict:
    """timm-named ConvNeXt state dict (PyTorch layouts) -> flax ``{"params": ...}`` (numpy)."""
    p = {"stem_conv": loading.conv(sd, "stem.0"), "stem_norm": loading.layer_norm(sd, "stem.1")}
    for i, depth in enumerate(module.depths):
        if i > 0:
            p[f"stage{i}_down_norm"] = loading.layer_norm(sd, f"stages.{i}.downsample.0")
            p[f"stage{i}_down_conv"] = loading.conv(sd, f"stages.{i}.downsample.1")
        for j in range(depth):
            src = f"stages.{i}.blocks.{j}"
            p[f"stage{i}_block{j}"] = {
                "conv_dw": loading.conv(sd, f"{src}.conv_dw"),
                "norm": loading.layer_norm(sd, f"{src}.norm"),
                "fc1": _pointwise(sd, f"{src}.mlp.fc1"),
                "fc2": _pointwise(sd, f"{src}.mlp.fc2"),
                "gamma": sd[f"{src}.gamma"],
            }
    p["head_norm"] = loading.layer_norm(sd, "head.norm")
    p["head_fc"] = loading.dense(sd, "head.fc")
    return {"params": p}
