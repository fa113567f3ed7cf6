"""oneDNN convolutions (robustjax.kernels) vs XLA:CPU's own, in one interleaved run.

Part 1: single convolutions at the ResNet-18 (CIFAR, batch 128) layer shapes, the small CNN's
strided layers and a ConvNeXt depthwise 7x7: forward and the input gradient (what attacks
need), GFLOP/s, and the max difference to XLA's result. Part 2: zoo models' forward pass and
input gradient at batch 8 (224x224), images/s. Both paths are jitted
(called inside ``kernels.use_onednn(False)`` for XLA's), params and inputs passed as
arguments.

    PYTHONPATH=. python benchmarks/conv_kernels_speed.py [--reps 5] [--models a,b] [--no-layers]

Results: benchmarks/results/conv_kernels.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from robustjax import kernels
from robustjax.models.registry import create

DN = ("NHWC", "HWIO", "NHWC")
LAYERS = [  # (name, batch, H, Cin, Cout, k, stride, groups)
    ("stem 3->64 3x3", 128, 32, 3, 64, 3, 1, 1),
    ("64->64 3x3", 128, 32, 64, 64, 3, 1, 1),
    ("64->128 3x3/2", 128, 32, 64, 128, 3, 2, 1),
    ("64->128 1x1/2", 128, 32, 64, 128, 1, 2, 1),
    ("128->128 3x3", 128, 16, 128, 128, 3, 1, 1),
    ("256->256 3x3", 128, 8, 256, 256, 3, 1, 1),
    ("512->512 3x3", 128, 4, 512, 512, 3, 1, 1),
    ("CNN 3->16 4x4/2", 128, 32, 3, 16, 4, 2, 1),
    ("CNN 16->32 4x4/2", 128, 16, 16, 32, 4, 2, 1),
    ("depthwise 96 7x7", 8, 56, 96, 96, 7, 1, 96),
]


def _time(fn, args, reps):
    jax.block_until_ready(fn(*args))
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t0)
    return out


def _both(make):
    """(oneDNN, XLA) jitted versions of ``make()`` (the switch is part of jit's cache key)."""
    fast, slow_jit = jax.jit(make()), jax.jit(make())

    def slow(*args):
        with kernels.use_onednn(False):
            return slow_jit(*args)

    return fast, slow


def bench_layers(reps):
    rng = np.random.default_rng(0)
    print("\n## Single convolutions (GFLOP/s; input gradient = backward data)")
    print("| layer | batch | fwd oneDNN | fwd XLA | speed-up | input-grad oneDNN | "
          "input-grad XLA | speed-up | max |diff| |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, b, h, cin, cout, k, s, g in LAYERS:
        p = k // 2 if k % 2 else (k - s) // 2
        x = jnp.asarray(rng.standard_normal((b, h, h, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, cin // g, cout)) * 0.1, jnp.float32)

        def conv(x, w):
            return kernels.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)),
                                                dimension_numbers=DN, feature_group_count=g)

        fwd = _both(lambda: conv)
        grad = _both(lambda: lambda x, w: jax.grad(lambda x: jnp.sum(conv(x, w) ** 2))(x))
        y = fwd[1](x, w)
        flops = 2 * y.size * k * k * cin // g
        diff = max(float(jnp.abs(fwd[0](x, w) - y).max()),
                   float(jnp.abs(grad[0](x, w) - grad[1](x, w)).max()))
        t = {}
        for r in range(reps):  # interleaved
            for key, fn in (("f1", fwd[0]), ("f0", fwd[1]), ("g1", grad[0]), ("g0", grad[1])):
                t.setdefault(key, []).extend(_time(fn, (x, w), 1))
        gf = {k_: flops / statistics.median(v) / 1e9 for k_, v in t.items()}
        # the gradient program also runs the forward pass: count both
        gf["g1"], gf["g0"] = 2 * gf["g1"], 2 * gf["g0"]
        print(f"| {name} | {b} | {gf['f1']:.0f} | {gf['f0']:.0f} | {gf['f1'] / gf['f0']:.1f}x | "
              f"{gf['g1']:.0f} | {gf['g0']:.0f} | {gf['g1'] / gf['g0']:.1f}x | {diff:.1e} |")


def bench_models(names, reps, batch=8):
    print(f"\n## Zoo models, batch {batch}, 224x224 (images/s)")
    print("| model | forward oneDNN | forward XLA | speed-up | input-grad oneDNN | "
          "input-grad XLA | speed-up | max |logit diff| |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        model = create(name, key=jax.random.PRNGKey(0))
        x = jax.random.uniform(jax.random.PRNGKey(1), (batch,) + tuple(model.spec.input_shape))
        fwd = _both(lambda: lambda p, x: model.apply_fn(p, x))
        grad = _both(lambda: lambda p, x: jax.grad(
            lambda x: jnp.sum(jax.nn.log_softmax(model.apply_fn(p, x))[:, 0]))(x))
        diff = float(jnp.abs(fwd[0](model.params, x) - fwd[1](model.params, x)).max())
        t = {}
        for r in range(reps):
            for key, fn in (("f1", fwd[0]), ("f0", fwd[1]), ("g1", grad[0]), ("g0", grad[1])):
                t.setdefault(key, []).extend(_time(fn, (model.params, x), 1))
        ips = {k_: batch / statistics.median(v) for k_, v in t.items()}
        print(f"| {name} | {ips['f1']:.1f} | {ips['f0']:.1f} | {ips['f1'] / ips['f0']:.1f}x | "
              f"{ips['g1']:.1f} | {ips['g0']:.1f} | {ips['g1'] / ips['g0']:.1f}x | {diff:.1e} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", default="convnext_tiny,resnet50,efficientnet_lite0,inception_v3")
    ap.add_argument("--no-layers", action="store_true")
    args = ap.parse_args()
    status = kernels.status()
    if not status.available:
        raise SystemExit(f"the oneDNN kernels are not available: {status.reason}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}; kernels: {status.library}")
    if not args.no_layers:
        bench_layers(args.reps)
    if args.models:
        bench_models([m for m in args.models.split(",") if m], args.reps)


if __name__ == "__main__":
    main()
