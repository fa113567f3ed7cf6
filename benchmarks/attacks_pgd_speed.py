"""PGD-10 Linf throughput: robustjax vs hand-written JAX vs torchattacks (PyTorch CPU).

The same weights run in both frameworks (checked: max |logit difference| printed). All
variants are interleaved in one process (round-robin, median of the reps), params and inputs
are passed as arguments (never closed-over constants, which XLA would fold), and every timed
call is preceded by one warm-up call. A second part times eps sweeps.

    PYTHONPATH=. python benchmarks/attacks_pgd_speed.py                # everything
    PYTHONPATH=. python benchmarks/attacks_pgd_speed.py --quick        # small smoke run
    XLA_FLAGS=... PYTHONPATH=. python benchmarks/attacks_pgd_speed.py --models cnn

Results: benchmarks/results/attacks_speed.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import gradient as G
from robustjax.attacks import search as S
from robustjax.models.registry import create

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10


# ------------------------------------------------------------------------ PyTorch twins


def torch_twin(name, variables, spec):
    """The same network in PyTorch, weights copied from the flax variables."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    p = variables["params"]
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    conv_w = lambda k: t(np.transpose(np.asarray(k), (3, 2, 0, 1)))  # noqa: E731
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)

    if name == "cnn":
        class Net(tnn.Module):
            def __init__(self):
                super().__init__()
                self.w = tnn.ParameterDict({
                    "c0": tnn.Parameter(conv_w(p["conv0"]["kernel"])),
                    "b0": tnn.Parameter(t(p["conv0"]["bias"])),
                    "c1": tnn.Parameter(conv_w(p["conv1"]["kernel"])),
                    "b1": tnn.Parameter(t(p["conv1"]["bias"])),
                    "d0": tnn.Parameter(t(p["dense0"]["kernel"])),
                    "e0": tnn.Parameter(t(p["dense0"]["bias"])),
                    "h": tnn.Parameter(t(p["head"]["kernel"])),
                    "e1": tnn.Parameter(t(p["head"]["bias"]))})

            def forward(self, x):
                w = self.w
                h = (x - mean) / std
                h = F.relu(F.conv2d(h, w["c0"], w["b0"], 2, 1))
                h = F.relu(F.conv2d(h, w["c1"], w["b1"], 2, 1))
                h = h.permute(0, 2, 3, 1).flatten(1)  # flax flattens HWC
                h = F.relu(h @ w["d0"] + w["e0"])
                return h @ w["h"] + w["e1"]

        return Net().eval()

    s = variables["batch_stats"]

    def conv(name_, stride, pad):
        layer = tnn.Conv2d(1, 1, 1, bias=False)
        layer.weight = tnn.Parameter(conv_w(name_["kernel"]))
        layer.stride, layer.padding = (stride, stride), (pad, pad)
        return layer

    def bn(par, st):
        layer = tnn.BatchNorm2d(np.asarray(par["scale"]).shape[0], eps=1e-5)
        layer.weight = tnn.Parameter(t(par["scale"]))
        layer.bias = tnn.Parameter(t(par["bias"]))
        layer.running_mean, layer.running_var = t(st["mean"]), t(st["var"])
        return layer

    class Block(tnn.Module):
        def __init__(self, pp, ss, stride):
            super().__init__()
            self.conv1, self.bn1 = conv(pp["conv1"], stride, 1), bn(pp["bn1"], ss["bn1"])
            self.conv2, self.bn2 = conv(pp["conv2"], 1, 1), bn(pp["bn2"], ss["bn2"])
            self.short = None
            if "shortcut_conv" in pp:
                self.short = tnn.Sequential(conv(pp["shortcut_conv"], stride, 0),
                                            bn(pp["shortcut_bn"], ss["shortcut_bn"]))

        def forward(self, x):
            h = F.relu(self.bn1(self.conv1(x)))
            h = self.bn2(self.conv2(h))
            return F.relu(h + (x if self.short is None else self.short(x)))

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv(p["stem_conv"], 1, 1)
            self.bn = bn(p["stem_bn"], s["stem_bn"])
            blocks = []
            for stage in range(4):
                for b in range(2):
                    n = f"layer{stage + 1}_{b}"
                    blocks.append(Block(p[n], s[n], 2 if (stage > 0 and b == 0) else 1))
            self.blocks = tnn.Sequential(*blocks)
            self.head = tnn.Linear(1, 1)
            self.head.weight = tnn.Parameter(t(np.asarray(p["head"]["kernel"]).T))
            self.head.bias = tnn.Parameter(t(p["head"]["bias"]))

        def forward(self, x):
            h = F.relu(self.bn(self.stem((x - mean) / std)))
            return self.head(self.blocks(h).mean((2, 3)))

    return ResNet().eval()


# ---------------------------------------------------------------- hand-written JAX PGD


def _ce(apply_fn, params, x, y):
    logp = jax.nn.log_softmax(apply_fn(params, x))
    return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=1))


def hand_variants(apply_fn):
    grad = jax.grad(functools.partial(_ce, apply_fn), argnums=1)

    def step(params, x, xa, y):
        xa = xa + ALPHA * jnp.sign(grad(params, xa, y))
        return jnp.clip(jnp.clip(xa, x - EPS, x + EPS), 0.0, 1.0)

    def start(x, key):
        return jnp.clip(x + jax.random.uniform(key, x.shape, x.dtype, -EPS, EPS), 0.0, 1.0)

    @jax.jit
    def unrolled(params, x, y, key):
        xa = start(x, key)
        for _ in range(STEPS):
            xa = step(params, x, xa, y)
        return xa

    @jax.jit
    def fori(params, x, y, key):
        return jax.lax.fori_loop(0, STEPS, lambda i, xa: step(params, x, xa, y), start(x, key))

    jstep, jstart = jax.jit(step), jax.jit(start)

    def python_loop(params, x, y, key):
        xa = jstart(x, key)
        for _ in range(STEPS):
            xa = jstep(params, x, xa, y)
        return xa

    return {"hand unrolled": unrolled, "hand fori": fori, "hand python-loop": python_loop}


def timeit(fn, reps):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_pgd(model_name, batch, reps, with_torch=True, skip=()):
    shape = (32, 32, 3)
    model = create(model_name, input_shape=shape, key=jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x_np = rng.uniform(0, 1, (batch,) + shape).astype(np.float32)
    x, key = jnp.asarray(x_np), jax.random.PRNGKey(1)
    y = jnp.argmax(model(x), -1).astype(jnp.int32)
    variants = {}
    for loop in ("unroll", "fori"):
        cfg = G.PGDConfig(eps=EPS, step_size=ALPHA, steps=STEPS, loop=loop)
        f = jax.jit(G.pgd, static_argnums=0)
        variants[f"robustjax loop={loop}"] = functools.partial(
            lambda f, cfg: f(model.apply_fn, model.params, x, y, key, cfg).x_adv, f, cfg)
    for loop in ("auto", "python"):  # eager calls: what a notebook user gets
        eager_cfg = G.PGDConfig(eps=EPS, step_size=ALPHA, steps=STEPS, loop=loop)
        variants[f"robustjax eager loop={loop}"] = functools.partial(
            lambda cfg: G.pgd(model.apply_fn, model.params, x, y, key, cfg).x_adv, eager_cfg)
    for name, f in hand_variants(model.apply_fn).items():
        variants[name] = functools.partial(lambda f: f(model.params, x, y, key), f)
    calls = {k: (lambda v=v: jax.block_until_ready(v())) for k, v in variants.items()
             if not any(sk in k for sk in skip)}
    info = {}
    if with_torch:
        import torch
        import torchattacks

        net = torch_twin(model_name, model.params, model.spec)
        xt = torch.tensor(np.transpose(x_np, (0, 3, 1, 2)))
        with torch.no_grad():
            diff = np.abs(net(xt).numpy() - np.asarray(model(x))).max()
        info["max |logit diff| torch vs jax"] = float(diff)
        atk = torchattacks.PGD(net, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
        yt = torch.tensor(np.asarray(y)).long()
        # PyTorch's OpenMP threads spin-wait: on a shared 2-core machine 1 thread was ~10x
        # faster than 2 for the small CNN. Time both; ratios use the faster.
        def torch_call(n):
            torch.set_num_threads(n)
            return atk(xt, yt)

        for n in sorted({1, os.cpu_count() or 1}):
            calls[f"torchattacks {n} thr"] = functools.partial(torch_call, n)
    compile_s = {}
    for k, c in calls.items():  # warm-up (compile)
        t0 = time.perf_counter()
        c()
        compile_s[k] = time.perf_counter() - t0
    times = {k: [] for k in calls}
    for _ in range(reps):  # interleaved round-robin
        for k, c in calls.items():
            times[k] += timeit(c, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {k: batch / med[k] for k in calls}, compile_s, info


def bench_sweep(batch, reps):
    """8 eps values on the small CNN: separate calls vs one program per strategy."""
    shape = (32, 32, 3)
    model = create("cnn", input_shape=shape, key=jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(2), (batch,) + shape)
    y = jnp.argmax(model(x), -1).astype(jnp.int32)
    key = jax.random.PRNGKey(3)
    eps = jnp.arange(1, 9, dtype=jnp.float32) / 255
    sweep = jax.jit(S.eps_sweep, static_argnums=(0, 1), static_argnames="strategy")
    rows = {}
    for attack, cfg, strategies in [
        (G.fgsm, G.FGSMConfig(), ("shared", "loop", "unroll", "map", "vmap")),
        (G.pgd, G.PGDConfig(steps=STEPS), ("loop", "unroll", "map", "vmap")),
    ]:
        single = jax.jit(attack, static_argnums=0)
        calls = {"8 separate calls": lambda a=attack, c=cfg, s=single: [
            jax.block_until_ready(s(model.apply_fn, model.params, x, y, key, S.with_eps(c, e)))
            for e in eps]}
        for st in strategies:
            # "loop" is eager by design (one compiled attack per eps); the others are one program
            fn = S.eps_sweep if st == "loop" else sweep
            calls[st] = functools.partial(
                lambda a, c, st, fn: jax.block_until_ready(
                    fn(a, model.apply_fn, model.params, x, y, key, c, eps, strategy=st)),
                attack, cfg, st, fn)
        for c in calls.values():
            c()
        times = {k: [] for k in calls}
        for _ in range(reps):
            for k, c in calls.items():
                times[k] += timeit(c, 1)
        base = statistics.median(times["8 separate calls"])
        rows[attack.__name__] = {k: (statistics.median(v), base / statistics.median(v))
                                 for k, v in times.items()}
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="cnn,resnet18_cifar")
    ap.add_argument("--batches", default="16,128")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-pgd", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated substrings of variants to skip")
    ap.add_argument("--reuse-buffers", action="store_true",
                    help="robustjax.runtime.reuse_large_buffers() first (glibc malloc keeps "
                    "large buffers mapped; applies to every library in this process)")
    args = ap.parse_args()
    if args.reuse_buffers:
        from robustjax.runtime import reuse_large_buffers

        print(f"# reuse_large_buffers: {reuse_large_buffers()}")
    from robustjax import kernels

    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} ({jax.default_backend()}), "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, convolutions: "
          f"{'oneDNN' if kernels.status().available else 'XLA'} (ROBUSTJAX_ONEDNN=0 for XLA's)")
    batches = [int(b) for b in args.batches.split(",")]
    skip = tuple(v for v in args.skip.split(",") if v)
    for model_name in ([] if args.no_pgd else args.models.split(",")):
        for batch in batches:
            # small programs are noisy on a shared machine: many reps; ResNet-18 at 128 takes
            # ~20 s a call per variant, so fewer
            reps = 1 if args.quick else {("cnn", 16): 3 * args.reps, ("cnn", 128): 2 * args.reps,
                                         ("resnet18_cifar", 16): args.reps}.get(
                                             (model_name, batch), max(2, args.reps // 2))
            ips, comp, info = bench_pgd(model_name, 4 if args.quick else batch, reps, skip=skip)
            best_hand = max(v for k, v in ips.items() if k.startswith("hand"))
            best_torch = max(v for k, v in ips.items() if k.startswith("torchattacks"))
            print(f"\n## PGD-10 Linf, {model_name}, batch {batch}, {reps} reps; {info}")
            print("| variant | images/s | vs best hand JAX | vs best torchattacks | warm-up s |")
            print("|---|---|---|---|---|")
            for k, v in ips.items():
                print(f"| {k} | {v:.1f} | {v / best_hand:.2f} | "
                      f"{v / best_torch:.2f} | {comp[k]:.1f} |")
    if not args.no_sweep:
        rows = bench_sweep(16 if args.quick else 128, 1 if args.quick else 3)
        for name, r in rows.items():
            print(f"\n## eps sweep, {name}, 8 eps, cnn, batch 128")
            print("| strategy | seconds | speed-up vs 8 separate calls |")
            print("|---|---|---|")
            for k, (t, s) in r.items():
                print(f"| {k} | {t:.3f} | {s:.2f} |")


if __name__ == "__main__":
    main()
