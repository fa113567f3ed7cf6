"""Adversarial-training throughput: robustjax vs the same loop in PyTorch (CPU), ResNet-18.

Issue 14, performance: PGD-AT (10-step PGD inner loop, eps 8/255, step 2/255, random start,
the attack in eval mode, the update in train mode with BatchNorm statistics updated) on the
CIFAR-sized ResNet-18 at batch 128, images/s. Also fast AT (one FGSM step from a random start,
Wong et al. 2020) and a standard (clean cross-entropy) step, whose cost is one forward and one
backward pass including the weight gradient, so the three rows separate the attack's cost from
the update's.

Both frameworks hold the same weights (robustjax's initialisation copied into torch, logits
checked) and train with the same optimiser: SGD, momentum 0.9, weight decay 5e-4, lr 0.1
(``optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))``, torch's
``SGD(weight_decay=5e-4, momentum=0.9)``). robustjax is timed twice, with convolutions on
robustjax's oneDNN kernels (the default) and on XLA's (``kernels.use_onednn(False)``).
Variants are interleaved round-robin in one process, one warm-up call each (compilation is
reported apart), median of the reps; every timed robustjax call blocks on its result.

    PYTHONPATH=. python benchmarks/train_speed.py [--batch 128] [--reps 3] [--json out.json]

Results: benchmarks/results/train_speed.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from robustjax import kernels, models, train

from attacks_pgd_speed import torch_twin  # noqa: E402  (same folder; run with PYTHONPATH=.)

EPS, ALPHA, STEPS, LR, WD, MOMENTUM = 8 / 255, 2 / 255, 10, 0.1, 5e-4, 0.9


# ------------------------------------------------------------------------ the torch loops


def torch_pgd(model, x, y):
    x_adv = torch.clamp(x + torch.empty_like(x).uniform_(-EPS, EPS), 0.0, 1.0)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), [x_adv])
        x_adv = x_adv.detach() + ALPHA * torch.sign(grad)
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0)
    return x_adv.detach()


def torch_fgsm_rs(model, x, y):
    delta = torch.empty_like(x).uniform_(-EPS, EPS)
    x0 = torch.clamp(x + delta, 0.0, 1.0).requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x0), y), [x0])
    x_adv = x0.detach() + 1.25 * EPS * torch.sign(grad)
    return torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0).detach()


def torch_step(model, opt, x, y, attack):
    if attack is not None:
        model.eval()
        x = attack(model, x, y)
    model.train()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


# ---------------------------------------------------------------------------- timing


def robustjax_step(model, loss_fn, onednn: bool):
    opt = optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM))
    step = jax.jit(functools.partial(train.train_step, apply_fn=model.apply_fn, optimizer=opt,
                                     loss_fn=loss_fn, train_apply_fn=model.train_apply_fn))
    state = train.init_state(model.params, opt)
    holder = {"state": state, "i": 0}

    def call(x, y):
        with kernels.use_onednn(onednn):
            key = jax.random.fold_in(jax.random.PRNGKey(0), holder["i"])
            holder["state"], loss = step(holder["state"], x, y, key)
            holder["i"] += 1
            return float(jax.block_until_ready(loss))

    return call


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-xla", action="store_true",
                    help="leave out robustjax on XLA's own convolutions (the slowest variants)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = models.create("resnet18_cifar", num_classes=10, key=jax.random.PRNGKey(0))
    if model.train_apply_fn is None:
        raise SystemExit("resnet18_cifar has no train mode")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, args.batch).astype(np.int32)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y).long()

    tmodel = torch_twin("resnet18_cifar", model.params, model.spec)
    with torch.no_grad():
        diff = float(np.max(np.abs(tmodel(xt).numpy() - np.asarray(model.apply_fn(model.params,
                                                                                  xj)))))
    topt = torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)

    pgd_cfg = train.PGDATConfig(eps=EPS, step_size=ALPHA, steps=STEPS)
    fast_cfg = train.FastATConfig(eps=EPS)
    variants = {
        "PGD-AT robustjax (oneDNN)": robustjax_step(model, train.pgd_at_loss(pgd_cfg), True),
        "PGD-AT robustjax (XLA conv)": robustjax_step(model, train.pgd_at_loss(pgd_cfg), False),
        "PGD-AT torch": lambda a, b: torch_step(tmodel, topt, xt, yt, torch_pgd),
        "fast AT robustjax (oneDNN)": robustjax_step(model, train.fast_at_loss(fast_cfg), True),
        "fast AT torch": lambda a, b: torch_step(tmodel, topt, xt, yt, torch_fgsm_rs),
        "standard robustjax (oneDNN)": robustjax_step(model, train.cross_entropy_loss, True),
        "standard robustjax (XLA conv)": robustjax_step(model, train.cross_entropy_loss, False),
        "standard torch": lambda a, b: torch_step(tmodel, topt, xt, yt, None),
    }
    if args.no_xla:
        variants = {k: v for k, v in variants.items() if "(XLA conv)" not in k}
    warm, times = {}, {k: [] for k in variants}
    for name, fn in variants.items():
        t0 = time.perf_counter()
        fn(xj, yj)
        warm[name] = time.perf_counter() - t0
        print(f"warm-up {name}: {warm[name]:.1f} s", flush=True)
    for rep in range(args.reps):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn(xj, yj)
            times[name].append(time.perf_counter() - t0)
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
            f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch / v for k, v in med.items()}

    def peer(name):
        return name if name.endswith("torch") else name.split(" robustjax")[0] + " torch"

    lines = [f"### ResNet-18 (CIFAR), batch {args.batch}, {args.reps} reps; "
             f"max |logit diff| torch vs jax {diff:.2e}",
             "| variant | s/step | images/s | vs torch (same recipe) | vs PGD-AT (same "
             "framework) | warm-up s |", "|---|---|---|---|---|---|"]
    for name in variants:
        fw_pgd = ("PGD-AT torch" if name.endswith("torch") else
                  "PGD-AT robustjax (XLA conv)" if "XLA" in name else "PGD-AT robustjax (oneDNN)")
        fw_pgd = fw_pgd if fw_pgd in med else name
        lines.append(f"| {name} | {med[name]:.2f} | {ips[name]:.1f} | "
                     f"{ips[name] / ips[peer(name)]:.2f} | {med[name] / med[fw_pgd]:.2f} | "
                     f"{warm[name]:.1f} |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": f"{platform.processor() or platform.machine()}, "
                                  f"torch {torch.__version__} ({args.threads} threads), "
                                  f"jax {jax.__version__}", "batch": args.batch,
                       "logit_diff": diff, "seconds": times, "warm_up": warm}, f, indent=1)


if __name__ == "__main__":
    main()
