"""Sequential ReLU networks shared by robustjax and the auto_LiRPA peer (same weights in both).

A network is a list of layers ``(kind, options)`` plus flat float32 arrays named
``"{index}_{name}"``: ``conv`` (HWIO ``kernel``, ``bias``; ``stride``, ``pad``), ``bn``
(eval-mode BatchNorm: ``scale``, ``bias``, ``mean``, ``var``, eps 1e-5), ``relu``,
``flatten`` (NHWC order here; the peer permutes the next dense layer's rows for NCHW) and
``dense`` (``kernel [in, out]``, ``bias``). ``save``/``load`` keep both in one ``.npz`` so the
PyTorch side (``certify_lirpa_peer.py``) needs neither JAX nor this module.

Architectures: ``cnn`` is the 28x28 CNN of ``benchmarks/certify_speed.py`` (conv 16 4x4/2,
conv 32 4x4/2, dense 100, dense 10); ``cnn7`` the CNN-7 of Shi et al. 2021 ("Fast Certified
Robust Training with Short Warmup"): 3x3 convs 64, 64, 128 (stride 2), 128, 128 with
BatchNorm, dense 512 with BatchNorm, dense 10, on 32x32x3; ``tiny`` and ``tiny_bn`` are the
fixture nets (8x8x1).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

ARCHS = {
    "cnn": ((28, 28, 1), [("conv", 16, 4, 2, 1), ("relu",), ("conv", 32, 4, 2, 1), ("relu",),
                          ("flatten",), ("dense", 100), ("relu",), ("dense", 10)]),
    "cnn7": ((32, 32, 3), [("conv", 64, 3, 1, 1), ("bn",), ("relu",), ("conv", 64, 3, 1, 1),
                           ("bn",), ("relu",), ("conv", 128, 3, 2, 1), ("bn",), ("relu",),
                           ("conv", 128, 3, 1, 1), ("bn",), ("relu",), ("conv", 128, 3, 1, 1),
                           ("bn",), ("relu",), ("flatten",), ("dense", 512), ("bn",), ("relu",),
                           ("dense", 10)]),
    "tiny": ((8, 8, 1), [("conv", 3, 3, 2, 1), ("relu",), ("conv", 4, 3, 2, 1), ("relu",),
                         ("flatten",), ("dense", 10), ("relu",), ("dense", 5)]),
    "tiny_bn": ((8, 8, 1), [("conv", 4, 3, 1, 1), ("bn",), ("relu",), ("conv", 4, 3, 2, 1),
                            ("bn",), ("relu",), ("flatten",), ("dense", 8), ("bn",), ("relu",),
                            ("dense", 5)]),
}


def init(arch: str, key) -> dict:
    """He-normal weights, small random biases and BatchNorm statistics; float32 arrays."""
    shape, layers = ARCHS[arch]
    params, (h, w, c) = {}, shape
    flat = None
    for i, layer in enumerate(layers):
        key, k1, k2, k3, k4 = jax.random.split(key, 5)
        if layer[0] == "conv":
            _, out, k, stride, pad = layer
            params[f"{i}_kernel"] = jax.random.normal(k1, (k, k, c, out)) * np.sqrt(2 / (k * k * c))
            params[f"{i}_bias"] = 0.1 * jax.random.normal(k2, (out,))
            h, w, c = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1, out
        elif layer[0] == "bn":
            n = c if flat is None else flat
            params[f"{i}_scale"] = 1 + 0.1 * jax.random.normal(k1, (n,))
            params[f"{i}_bias"] = 0.1 * jax.random.normal(k2, (n,))
            params[f"{i}_mean"] = 0.1 * jax.random.normal(k3, (n,))
            params[f"{i}_var"] = jax.random.uniform(k4, (n,), minval=0.5, maxval=1.5)
        elif layer[0] == "flatten":
            flat = h * w * c
        elif layer[0] == "dense":
            params[f"{i}_kernel"] = jax.random.normal(k1, (flat, layer[1])) * np.sqrt(2 / flat)
            params[f"{i}_bias"] = 0.1 * jax.random.normal(k2, (layer[1],))
            flat = layer[1]
    return {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}


def apply(arch: str):
    """``apply_fn(params, x [b, H, W, C] in [0, 1]) -> logits [b, k]`` for ``arch``."""
    _, layers = ARCHS[arch]

    def apply_fn(params, x):
        h = x
        for i, layer in enumerate(layers):
            if layer[0] == "conv":
                _, _, _, stride, pad = layer
                h = jax.lax.conv_general_dilated(
                    h, params[f"{i}_kernel"], (stride, stride), ((pad, pad), (pad, pad)),
                    dimension_numbers=("NHWC", "HWIO", "NHWC")) + params[f"{i}_bias"]
            elif layer[0] == "bn":
                inv = params[f"{i}_scale"] * jax.lax.rsqrt(params[f"{i}_var"] + 1e-5)
                h = (h - params[f"{i}_mean"]) * inv + params[f"{i}_bias"]
            elif layer[0] == "relu":
                h = jax.nn.relu(h)
            elif layer[0] == "flatten":
                h = h.reshape((h.shape[0], -1))
            else:
                h = h @ params[f"{i}_kernel"] + params[f"{i}_bias"]
        return h

    return apply_fn


def save(path, arch: str, params: dict, **arrays):
    np.savez(path, arch=json.dumps([arch, ARCHS[arch][0], ARCHS[arch][1]]),
             **{f"p_{k}": np.asarray(v) for k, v in params.items()},
             **{k: np.asarray(v) for k, v in arrays.items()})


def load(path):
    """``(arch, params, other arrays)`` from ``save``'s file."""
    data = np.load(path)
    arch = json.loads(str(data["arch"]))[0]
    params = {k[2:]: jnp.asarray(data[k]) for k in data.files if k.startswith("p_")}
    rest = {k: data[k] for k in data.files if k != "arch" and not k.startswith("p_")}
    return arch, params, rest
