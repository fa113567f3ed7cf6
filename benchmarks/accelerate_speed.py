"""PGD-10 on one ResNet-18 written three ways: plain flax, robustjax layers, plain + accelerate.

Four calls: the plain-flax model's raw ``apply_fn`` passed straight to ``attacks.pgd`` with the
entry points' automatic acceleration switched off (``entry.auto_accelerate(False)``: XLA's
convolutions, the issue's baseline) and on (the default: ``robustjax.entry`` accelerates it);
the same weights on robustjax's layers; and the plain model accelerated by hand
(``kernels.accelerate``, what ``models.wrap`` does).

Issue 18, item 1: a model written with plain ``flax.linen.Conv`` calls ``lax`` convolutions,
which XLA:CPU runs on its own kernels. ``robustjax.kernels.accelerate`` rewrites the traced
function so they run on robustjax's oneDNN kernels; ``models.wrap`` applies it by default.
Same weights in all three (the plain module is robustjax's ``ResNet18CIFAR`` with flax's own
``nn.Conv`` in place of ``robustjax.models.layers.Conv``: the same parameter tree), the same
PGD-10 (Linf eps 8/255, step 2/255, random start, ``attacks.pgd`` eager default call), and
torchattacks' PGD on the same weights in PyTorch 2.13 CPU. Interleaved round-robin, one warm-up
call each, median of the reps.

    PYTHONPATH=. python benchmarks/accelerate_speed.py [--batches 16 128] [--reps 3]

Results: benchmarks/results/accelerate.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchattacks

from robustjax import attacks, entry, kernels, models
from robustjax.models import small

from attacks_pgd_speed import torch_twin  # noqa: E402  (same folder; run with PYTHONPATH=.)

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10


@contextlib.contextmanager
def plain_flax_convs():
    """Build robustjax's ResNet18CIFAR with flax's own ``nn.Conv`` (lax convolutions)."""
    saved = small.Conv
    small.Conv = nn.Conv
    try:
        yield
    finally:
        small.Conv = saved


def plain_model(ref, accelerate: bool):
    """ResNet18CIFAR with flax's ``nn.Conv``, wrapped as ``models.wrap`` does.

    flax looks ``Conv`` up when the module is *applied*, so the swap holds around every call
    (every trace) of this model's apply_fn and nowhere else; ``accelerate=True`` is what
    ``models.wrap`` does to a user's module by default.
    """
    raw = models.wrap(small.ResNet18CIFAR(num_classes=10), ref.params, ref.spec,
                      accelerate=False).apply_fn

    def apply_fn(params, x):
        with plain_flax_convs():
            return raw(params, x)

    fn = kernels.accelerate(apply_fn) if accelerate else apply_fn
    return dataclasses.replace(ref, apply_fn=fn)


def bench(batch, reps):
    ref = models.create("resnet18_cifar", num_classes=10, key=jax.random.PRNGKey(0))
    plain, accelerated = plain_model(ref, False), plain_model(ref, True)
    x0 = jnp.zeros((2, 32, 32, 3), jnp.float32)
    counts = {name: kernels.count_convolutions(jax.make_jaxpr(m.apply_fn)(ref.params, x0))
              for name, m in (("plain flax, auto_accelerate off", plain),
                              ("robustjax layers", ref),
                              ("plain flax + accelerate", accelerated))}
    counts["plain flax, raw apply_fn (default)"] = kernels.count_convolutions(
        jax.make_jaxpr(entry.model_function(plain.apply_fn))(ref.params, x0))
    rng = np.random.default_rng(0)
    x_np = rng.uniform(0, 1, (batch, 32, 32, 3)).astype(np.float32)
    x, key = jnp.asarray(x_np), jax.random.PRNGKey(1)
    y = jnp.argmax(ref.apply_fn(ref.params, x), -1).astype(jnp.int32)
    cfg = attacks.PGDConfig(eps=EPS, step_size=ALPHA, steps=STEPS)
    calls = {}

    def run(m, auto=True):
        with entry.auto_accelerate(auto):
            return jax.block_until_ready(attacks.pgd(m.apply_fn, m.params, x, y, key, cfg).x_adv)

    calls["plain flax, auto_accelerate off"] = lambda: run(plain, auto=False)
    calls["plain flax, raw apply_fn (default)"] = lambda: run(plain)
    for name, m in (("robustjax layers", ref), ("plain flax + accelerate", accelerated)):
        calls[name] = (lambda m=m: run(m))
    net = torch_twin("resnet18_cifar", ref.params, ref.spec)
    xt = torch.tensor(np.transpose(x_np, (0, 3, 1, 2)))
    yt = torch.tensor(np.asarray(y)).long()
    atk = torchattacks.PGD(net, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
    for n in (1, 2):
        calls[f"torchattacks {n} thr"] = (lambda n=n: (torch.set_num_threads(n), atk(xt, yt)))
    # same adversarial examples from the three JAX forms (float32 rounding apart)
    adv = {k: np.asarray(attacks.pgd(m.apply_fn, m.params, x, y, key, cfg).x_adv)
           for k, m in (("acc", accelerated), ("ref", ref), ("raw", plain))}
    agree = float(np.mean(np.abs(adv["acc"] - adv["ref"]) < 1e-4))
    agree_raw = float(np.mean(np.abs(adv["raw"] - adv["ref"]) < 1e-4))
    warm = {}
    for k, c in calls.items():
        t0 = time.perf_counter()
        c()
        warm[k] = time.perf_counter() - t0
    times = {k: [] for k in calls}
    for _ in range(reps):
        for k, c in calls.items():
            t0 = time.perf_counter()
            c()
            times[k].append(time.perf_counter() - t0)
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    best_torch = max(v for k, v in ips.items() if k.startswith("torch"))
    lines = [f"### PGD-10 Linf, ResNet-18 (CIFAR), batch {batch}, {reps} reps; pixels of the "
             f"accelerated (by hand / by the entry point) vs robustjax-layers x_adv within 1e-4: "
             f"{100 * agree:.2f}% / {100 * agree_raw:.2f}%",
             "| variant | convolutions (xla / onednn) | images/s | vs robustjax layers | "
             "vs best torchattacks | warm-up s |", "|---|---|---|---|---|---|"]
    for k in calls:
        c = counts.get(k)
        conv = f"{c['xla']} / {c['onednn']}" if c else "-"
        lines.append(f"| {k} | {conv} | {ips[k]:.1f} | {ips[k] / ips['robustjax layers']:.2f} | "
                     f"{ips[k] / best_torch:.2f} | {warm[k]:.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    for b in args.batches:
        print(bench(b, args.reps), flush=True)
        print()


if __name__ == "__main__":
    main()
