"""Why PGD on ResNet-18 trails PyTorch on XLA:CPU at batch 128: per-layer convolution speed and
the XLA CPU options that could change it (issue 4's performance part).

    PYTHONPATH=. python benchmarks/xla_cpu_conv_probe.py layers     # JAX vs PyTorch per conv
    PYTHONPATH=. python benchmarks/xla_cpu_conv_probe.py flags      # PGD step under XLA_FLAGS

``layers`` times the forward convolution and its input gradient (what PGD needs) for every
3x3 / 1x1 shape of ResNet-18 on CIFAR at batch 128, in JAX and in PyTorch (2 threads, same
shapes), and prints GFLOP/s. ``flags`` runs one jitted PGD step of ``resnet18_cifar`` at batch
128 in a fresh process per XLA_FLAGS setting and prints images/s and the gradient checksum (a
flag that changes the checksum changed the numerics). Results: benchmarks/results/attacks_speed.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

LAYERS = [(32, 3, 64, 3, 1), (32, 64, 64, 3, 1), (32, 64, 128, 3, 2), (16, 128, 128, 3, 1),
          (16, 128, 256, 3, 2), (8, 256, 256, 3, 1), (8, 256, 512, 3, 2), (4, 512, 512, 3, 1),
          (32, 64, 128, 1, 2)]
FLAGS = ["", "--xla_cpu_use_onednn=true",
         "--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
         "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
         "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
         "--xla_cpu_use_xnnpack=true",
         "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
         "--xla_cpu_multi_thread_eigen=false"]


def _median_ms(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def layers(batch=128):
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    print("| H, Cin -> Cout, k, stride | JAX fwd GF/s | JAX input-grad GF/s | torch fwd GF/s | torch input-grad GF/s |")
    print("|---|---|---|---|---|")
    for h, cin, cout, k, s in LAYERS:
        gflop = 2 * batch * (h // s) ** 2 * cout * cin * k * k / 1e9
        x = jax.random.normal(jax.random.key(0), (batch, h, h, cin))
        w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.05

        def conv(x, w):
            return jax.lax.conv_general_dilated(x, w, (s, s), [(k // 2, k // 2)] * 2,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        fwd = jax.jit(conv)
        g = jnp.ones_like(fwd(x, w))
        bwd = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
        jf = _median_ms(lambda: fwd(x, w).block_until_ready())
        jb = _median_ms(lambda: bwd(x, w, g).block_until_ready())
        tx = torch.randn(batch, cin, h, h, requires_grad=True)
        tw = torch.randn(cout, cin, k, k) * 0.05
        tg = torch.ones_like(F.conv2d(tx, tw, stride=s, padding=k // 2))

        def tfwd():
            with torch.no_grad():
                F.conv2d(tx, tw, stride=s, padding=k // 2)

        def tboth():
            torch.autograd.grad(F.conv2d(tx, tw, stride=s, padding=k // 2), tx, tg)

        tf = _median_ms(tfwd)
        tb = max(_median_ms(tboth) - tf, 1e-3)
        print(f"| {h}, {cin} -> {cout}, {k}, {s} | {gflop / jf * 1e3:.0f} | {gflop / jb * 1e3:.0f} "
              f"| {gflop / tf * 1e3:.0f} | {gflop / tb * 1e3:.0f} |", flush=True)


STEP = r"""
import json, os, time, jax, jax.numpy as jnp, numpy as np
from robustjax.models.registry import create
m = create("resnet18_cifar", input_shape=(32, 32, 3), num_classes=10)
x = jax.random.uniform(jax.random.key(1), (128, 32, 32, 3)); y = jnp.arange(128) % 10
def loss(xa, params, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(m.apply_fn(params, xa)), y[:, None], 1))
@jax.jit
def step(params, x, xa, y):
    xa = xa + 2 / 255 * jnp.sign(jax.grad(loss)(xa, params, y))
    return jnp.clip(jnp.clip(xa, x - 8 / 255, x + 8 / 255), 0, 1)
step(m.params, x, x, y).block_until_ready(); ts = []
for _ in range(3):
    t = time.perf_counter(); step(m.params, x, x, y).block_until_ready(); ts.append(time.perf_counter() - t)
g = jax.jit(jax.grad(loss))(x, m.params, y)
print(json.dumps(dict(img_s=128 / float(np.median(ts)), checksum=float(jnp.abs(g).sum()))))
"""


def flags():
    print("| XLA_FLAGS | PGD step images/s (ResNet-18, batch 128) | gradient checksum |")
    print("|---|---|---|")
    for flag in FLAGS:
        env = dict(os.environ, XLA_FLAGS=flag)
        out = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True)
        if out.returncode:
            print(f"| `{flag}` | failed: {out.stderr.strip().splitlines()[-1]} | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| `{flag or '(none)'}` | {r['img_s']:.1f} | {r['checksum']:.6f} |", flush=True)


if __name__ == "__main__":
    {"layers": layers, "flags": flags}[sys.argv[1] if len(sys.argv) > 1 else "layers"]()
