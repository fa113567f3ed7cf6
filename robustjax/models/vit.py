"""Vision Transformer (Dosovitskiy et al. 2021) in Flax, with PyTorch (timm) weight porting.

Sizes Ti/S/B/L (embed dim 192/384/768/1024, depth 12/12/12/24, heads 3/6/12/16) with patch 16
or 32 at 224x224, ImageNet-1k heads: ``vit_tiny_patch16_224`` ... ``vit_large_patch32_224``
(timm names; timm itself has no ``vit_tiny_patch32_224`` constructor, the architecture is
``vit_tiny_patch16_224`` with ``patch_size=32``).

Architecture (timm ``VisionTransformer``, eval mode, class-token pooling): patch embedding
conv p x p / p -> prepend ``cls_token`` -> add ``pos_embed`` -> pre-norm blocks
``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` (fused qkv, softmax(q k^T / sqrt(d_head)) v,
exact erf GELU) -> final LayerNorm -> token 0 -> Linear. LayerNorm eps 1e-6.

The module takes *normalised* NHWC input (timm augreg weights: mean = std = 0.5, i.e. pixels
scaled to [-1, 1]); ``features=True`` returns token 0 after the final norm, ``[b, embed_dim]``.
The position embedding is learned for one image size: other sizes raise (no interpolation).

Example::

    from robustjax.models import loading
    model = loading.load("vit_base_patch32_224", "B_32_augreg.safetensors")
    logits = model.apply_fn(model.params, x)  # x: [b, 224, 224, 3] in [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robustjax.models import loading
from robustjax.models.layers import Conv, maybe_remat
from robustjax.models.registry import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    Entry,
    imagenet_class_names,
)
from robustjax.types import ModelSpec

_layer_norm = loading.timm_layer_norm


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, as timm's ``Attention``."""

    dim: int
    num_heads: int

    @nn.compact
    def __call__(self, x):
        b, n, _ = x.shape
        head_dim = self.dim // self.num_heads
        qkv = nn.Dense(3 * self.dim, name="qkv")(x)
        # PyTorch: reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [b, heads, n, head_dim]
        attn = jnp.einsum("bhqd,bhkd->bhqk", q * head_dim ** -0.5, k)
        attn = jax.nn.softmax(attn, axis=-1)
        out = jnp.einsum("bhqk,bhkd->bhqd", attn, v)
        out = out.transpose(0, 2, 1, 3).reshape(b, n, self.dim)
        return nn.Dense(self.dim, name="proj")(out)


class Block(nn.Module):
    dim: int
    num_heads: int
    mlp_ratio: float = 4.0

    @nn.compact
    def __call__(self, x):
        x = x + Attention(self.dim, self.num_heads, name="attn")(_layer_norm("norm1")(x))
        h = nn.Dense(int(self.dim * self.mlp_ratio), name="fc1")(_layer_norm("norm2")(x))
        h = nn.gelu(h, approximate=False)
        return x + nn.Dense(self.dim, name="fc2")(h)


class ViT(nn.Module):
    """ViT classifier with class-token pooling; ``__call__(x, features=False)``, NHWC ``x``."""

    num_classes: int = 1000
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    remat: bool = False  # rematerialise every block in the backward pass (layers.maybe_remat)

    @nn.compact
    def __call__(self, x, features: bool = False):
        if x.shape[1:3] != (self.img_size, self.img_size):
            raise ValueError(f"this ViT was built for {self.img_size}x{self.img_size} images "
                             f"(its position embedding is fixed), got {x.shape[1]}x{x.shape[2]}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        p = self.patch_size
        h = Conv(self.embed_dim, (p, p), strides=p, padding=((0, 0), (0, 0)),
                 name="patch_embed")(x)
        b, gh, gw, d = h.shape
        h = h.reshape(b, gh * gw, d)  # row-major over (h, w), as PyTorch's flatten(2)
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, gh * gw + 1, d))
        h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(h.dtype), h], axis=1)
        h = h + pos
        block = maybe_remat(Block, self.remat)
        for i in range(self.depth):
            h = block(d, self.num_heads, self.mlp_ratio, name=f"block{i}")(h)
        h = _layer_norm("norm")(h)[:, 0]
        if features:
            return h
        return nn.Dense(self.num_classes, name="head")(h)


# name -> (embed_dim, depth, num_heads), as timm's vit_<size>_patch*_224 constructors.
SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
         "large": (1024, 24, 16)}
PATCHES = (16, 32)


def _factory(patch: int, dim: int, depth: int, heads: int):
    def make(num_classes: int = 1000, **overrides) -> ViT:
        kwargs = {"patch_size": patch, "embed_dim": dim, "depth": depth, "num_heads": heads,
                  **overrides}
        return ViT(num_classes=num_classes, **kwargs)

    make.__name__ = f"vit_{dim}_{depth}_p{patch}"
    return make


ENTRIES: dict[str, Entry] = {}
for _size, (_dim, _depth, _heads) in SIZES.items():
    for _patch in PATCHES:
        _name = f"vit_{_size}_patch{_patch}_224"
        # timm pretrained_cfg of the augreg weights: 224, crop 0.9, bicubic, mean = std = 0.5.
        ENTRIES[_name] = Entry(
            _factory(_patch, _dim, _depth, _heads),
            ModelSpec(_name, (224, 224, 3), 1000, INCEPTION_MEAN, INCEPTION_STD,
                      class_names=imagenet_class_names(), crop_pct=0.9, interpolation="bicubic"))


def convert_state_dict(sd: Mapping[str, np.ndarray], module: ViT) -> dict:
    """timm-named ViT state dict (PyTorch layouts) -> flax ``{"params": ...}`` (numpy)."""
    p = {"patch_embed": loading.conv(sd, "patch_embed.proj"),
         "cls_token": sd["cls_token"], "pos_embed": sd["pos_embed"]}
    for i in range(module.depth):
        src = f"blocks.{i}"
        p[f"block{i}"] = {
            "norm1": loading.layer_norm(sd, f"{src}.norm1"),
            "attn": {"qkv": loading.dense(sd, f"{src}.attn.qkv"),
                     "proj": loading.dense(sd, f"{src}.attn.proj")},
            "norm2": loading.layer_norm(sd, f"{src}.norm2"),
            "fc1": loading.dense(sd, f"{src}.mlp.fc1"),
            "fc2": loading.dense(sd, f"{src}.mlp.fc2"),
        }
    p["norm"] = loading.layer_norm(sd, "norm")
    p["head"] = loading.dense(sd, "head")
    return {"params": p}
