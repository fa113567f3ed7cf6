"""Random crop and horizontal flip as one pure, jittable, vmappable function.

``random_crop_flip(key, x, crop, flip)``: each image is zero-padded by ``crop`` pixels on every
side and a window of the original size is cut at a uniformly random offset (the CIFAR "pad 4,
random crop 32" augmentation), then mirrored left-right with probability 1/2 when ``flip`` is
1. ``crop`` and ``flip`` may be traced (one value per vmapped run): the crop is a shift by an
integer offset in ``[-crop, crop]`` with zero fill, computed with a gather, so ``crop = 0`` and
``flip = 0`` return ``x`` exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _shift(img, dy, dx):
    """``out[i, j] = img[i + dy, j + dx]`` (zero outside); img ``[H, W, C]``."""
    h, w = img.shape[0], img.shape[1]
    rows = jnp.arange(h) + dy
    cols = jnp.arange(w) + dx
    valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    out = img[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)]
    return jnp.where(valid[..., None], out, jnp.zeros_like(out))


def random_crop_flip(key: jax.Array, x: jax.Array, crop, flip) -> jax.Array:
    """Augment a batch ``x`` float32 ``[B, H, W, C]`` in [0, 1] -> same shape and range.

    Args:
      key: PRNG key (one draw of offsets and flips per call).
      x: the batch.
      crop: padding in pixels, a Python int or a traced integer/float scalar (>= 0).
      flip: 0/1 (or bool), traced or not: flip each image with probability 1/2.

    Example:
      >>> xa = jax.jit(random_crop_flip)(jax.random.key(0), x, 2, 0)
    """
    b = x.shape[0]
    k_off, k_flip = jax.random.split(key)
    crop = jnp.asarray(crop, jnp.float32)
    u = jax.random.uniform(k_off, (b, 2))
    offsets = (jnp.floor(u * (2 * crop + 1)) - crop).astype(jnp.int32)
    shifted = jax.vmap(_shift)(x, offsets[:, 0], offsets[:, 1])
    do_flip = (jax.random.uniform(k_flip, (b,)) < 0.5) & (jnp.asarray(flip) > 0)
    return jnp.where(do_flip[:, None, None, None], shifted[:, :, ::-1], shifted)
