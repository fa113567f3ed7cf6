"""Random resizing and padding (Xie et al. 2018, "Mitigating adversarial effects through
randomization", Sec. 3).

Xie et al. resize a 299x299 image to ``rnd x rnd`` with ``rnd`` uniform in ``[299, 331)`` and
zero-pad it to 331x331 at a uniform random offset (``top`` in ``[0, 331 - rnd]``, the same for
``left``), then classify the 331x331 image. Here, for an ``H x W`` input, the padded size is
``round(H * ratio) x round(W * ratio)`` (``ratio = 331 / 299`` by default) and ``rnd`` is drawn
in ``[H, round(H * ratio))`` (the same for W; the draws are per image). Because a robustjax
``Model`` has one fixed input shape, the padded image is then resized back to ``H x W``: the
defense is a random shrink by at most ``299 / 331`` and a random shift, with a zero border.

Each resize is one linear map per axis (bilinear with half-pixel centres, or nearest), so the
whole transform is ``x -> A x B^T`` per image and channel with random ``A`` [H, H] and ``B``
[W, W]: differentiable in ``x``, random in the key. No antialiasing: the scales are within
10% of 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

METHODS = ("bilinear", "nearest")


def _interp_rows(out_size: int, in_size: int, start, length, method: str):
    """[b, out_size, in_size] map that resizes ``in_size`` to ``length`` pixels placed at
    ``start`` (both [b] ints) of an ``out_size`` canvas of zeros."""
    i = jnp.arange(out_size, dtype=jnp.float32)[None, :]
    start = start.astype(jnp.float32)[:, None]
    length = length.astype(jnp.float32)[:, None]
    inside = (i >= start) & (i < start + length)
    cols = jnp.arange(in_size, dtype=jnp.float32)[None, None, :]
    if method == "nearest":
        src = jnp.floor((i - start) * in_size / length)
        w = (cols == jnp.clip(src, 0, in_size - 1)[..., None]).astype(jnp.float32)
    else:
        src = jnp.clip((i - start + 0.5) * in_size / length - 0.5, 0.0, in_size - 1.0)
        w = jnp.maximum(0.0, 1.0 - jnp.abs(cols - src[..., None]))
    return jnp.where(inside[..., None], w, 0.0)


def _resize_back(out_size: int, in_size: int, b: int, method: str):
    """[b, out_size, in_size] plain resize of ``in_size`` pixels to ``out_size``."""
    zero = jnp.zeros((b,), jnp.int32)
    return _interp_rows(out_size, in_size, zero, jnp.full((b,), out_size, jnp.int32), method)


def _axis_map(key, n: int, ratio: float, b: int, method: str):
    """Random resize-and-pad of one axis of length ``n``, resized back: [b, n, n]."""
    padded = max(int(round(n * ratio)), n + 1)
    k_size, k_off = jax.random.split(key)
    rnd = jax.random.randint(k_size, (b,), n, padded)  # in [n, padded)
    offset = jax.random.randint(k_off, (b,), 0, padded - rnd + 1)  # in [0, padded - rnd]
    grow = _interp_rows(padded, n, offset, rnd, method)  # [b, padded, n]
    back = _resize_back(n, padded, b, method)  # [b, n, padded]
    return jnp.einsum("bop,bpi->boi", back, grow)


def random_resize_pad(x, key, *, ratio: float = 331 / 299, method: str = "bilinear"):
    """Xie et al.'s random resize + zero pad of ``x`` [b, H, W, C] in [0, 1], resized back to
    ``H x W`` -> [b, H, W, C] float32 in [0, 1]; the draws come from ``key`` (per image)."""
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [batch, H, W, C], got shape {tuple(x.shape)}")
    if key is None:
        raise ValueError("random_resize_pad is random: pass a PRNG key (jax.random.key(0))")
    if not ratio > 1.0:
        raise ValueError(f"ratio (padded size / input size) must be > 1, got {ratio!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    b, h, w, _ = x.shape
    k_h, k_w = jax.random.split(key)
    rows = _axis_map(k_h, h, ratio, b, method)
    cols = _axis_map(k_w, w, ratio, b, method)
    out = jnp.einsum("bih,bhwc,bjw->bijc", rows, x, cols)
    return jnp.clip(out, 0.0, 1.0)


__all__ = ["random_resize_pad"]
