"""Sparse / L0 attacks vs torchattacks on the standard shared-weights pair.

The embedded default model (``robustjax.models.embedded_default()``, the mnist5k CNN) and its
PyTorch twin (``benchmarks/attacks_pgd_speed.torch_twin``), N test images of mnist5k:

* one-pixel (``robustjax.attacks.one_pixel``, DE/rand/1 as in Su et al.) vs
  ``torchattacks.OnePixel`` (scipy-style DE, best1bin): the same number of pixels, population
  and generations; success rate and median L0 over several seeds each, and queries/s (every
  image the model scores counts as one query; torchattacks' are counted by a forward hook).
* JSMA (``robustjax.attacks.jsma``) vs ``torchattacks.JSMA``, targeted at ``(y + 1) mod 10``,
  theta 1, gamma 0.1: both deterministic, so examples are compared one by one.
* Sparse-RS (L0 pixels and patches): no peer implementation installs from PyPI (the authors'
  code is a GitHub repository), so its rows give the seed spread alone, next to one-pixel's
  at a comparable L0.

Run: ``PYTHONPATH=. python benchmarks/attacks_sparse_crosscheck.py [--n 100] [--seeds 3]``.
Writes ``benchmarks/results/attacks_sparse.md``.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.attacks_pgd_speed import torch_twin
from robustjax import data
from robustjax.attacks.jsma import JSMAConfig, jsma
from robustjax.attacks.one_pixel import OnePixelConfig, one_pixel
from robustjax.attacks.sparse_rs import SparseRSConfig, sparse_rs
from robustjax.models import embedded_default

ROOT = pathlib.Path(__file__).resolve().parent


def summary(success, l0):
    s = np.asarray(success, bool)
    med = float(np.median(np.asarray(l0)[s])) if s.any() else float("nan")
    return 100.0 * s.mean(), med


def spread(vals):
    v = np.asarray(vals, float)
    return f"{v.mean():.1f} (min {v.min():.1f}, max {v.max():.1f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pixels", type=int, default=3)
    ap.add_argument("--popsize", type=int, default=90)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rs-k", type=int, default=10)
    ap.add_argument("--rs-queries", type=int, default=1000)
    ap.add_argument("--strategies", default="rand1,best1")
    ap.add_argument("--only-one-pixel", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results" / "attacks_sparse.md"))
    args = ap.parse_args()

    import torch
    import torchattacks

    torch.set_num_threads(1)  # 1 thread was the faster on the shared 2-core machine (PGD speed)
    model = embedded_default()
    x_all, y_all = data.load("mnist5k", "test")
    pick = np.random.default_rng(0).permutation(len(y_all))[:args.n]
    x, y = jnp.asarray(x_all[pick]), jnp.asarray(y_all[pick])
    clean = np.asarray(jnp.argmax(model.apply_fn(model.params, x), -1)) == np.asarray(y)
    x, y = x[clean], y[clean]              # attack the correctly classified ones
    n = int(clean.sum())
    net = torch_twin("cnn", model.params, model.spec)
    xt = torch.tensor(np.transpose(np.asarray(x), (0, 3, 1, 2)))
    yt = torch.tensor(np.asarray(y)).long()
    with torch.no_grad():
        logit_err = float(np.abs(net(xt).numpy() - np.asarray(model.apply_fn(model.params, x))
                                 ).max())
    scored = [0]
    net.register_forward_hook(lambda mod, inp, out: scored.__setitem__(0, scored[0]
                                                                      + inp[0].shape[0]))

    def l0_torch(adv):
        return (adv != xt).any(1).flatten(1).sum(1).numpy()

    def succ_torch(adv, target=None):
        with torch.no_grad():
            pred = net(adv).argmax(1)
        return (pred == target).numpy() if target is not None else (pred != yt).numpy()

    rows = []
    # ---------------------------------------------------------------- one-pixel
    theirs, fooled_t = [], np.zeros(n, bool)
    q_theirs = t_theirs = 0.0
    for s in range(args.seeds):
        np.random.seed(s)  # torchattacks' DE draws from numpy's global generator
        atk = torchattacks.OnePixel(net, pixels=args.pixels, steps=args.steps,
                                    popsize=args.popsize, inf_batch=args.popsize)
        scored[0] = 0
        t = time.perf_counter()
        adv = atk(xt, yt)
        t_theirs += time.perf_counter() - t
        q_theirs += scored[0]
        ok = succ_torch(adv)
        fooled_t |= ok
        theirs.append(summary(ok, l0_torch(adv)))
        print("torchattacks one-pixel seed", s, theirs[-1], flush=True)
    for strategy in args.strategies.split(","):
        cfg = OnePixelConfig(pixels=args.pixels, popsize=args.popsize, max_iter=args.steps,
                             strategy=strategy)
        run = jax.jit(functools.partial(one_pixel, model.apply_fn, config=cfg))
        jax.block_until_ready(run(model.params, x, y, jax.random.key(99)))   # compile
        ours, fooled = [], np.zeros(n, bool)
        q_ours = t_ours = 0.0
        for s in range(args.seeds):
            t = time.perf_counter()
            res = jax.block_until_ready(run(model.params, x, y, jax.random.key(s)))
            t_ours += time.perf_counter() - t
            q_ours += float(np.sum(res.queries))
            fooled |= np.asarray(res.success)
            ours.append(summary(res.success, res.norm))
            print("one-pixel", strategy, "seed", s, ours[-1], flush=True)
        rows.append((f"one-pixel ({strategy})", f"{args.pixels} px, population {args.popsize}"
                     f", {args.steps} generations; fooled in any seed: {fooled.sum()} / "
                     f"{fooled_t.sum()}, by both {np.sum(fooled & fooled_t)}",
                     spread([o[0] for o in ours]), spread([o[0] for o in theirs]),
                     spread([o[1] for o in ours]), spread([o[1] for o in theirs]),
                     f"{q_ours / t_ours:,.0f} / {q_theirs / t_theirs:,.0f} "
                     f"(**{(q_ours / t_ours) / (q_theirs / t_theirs):.1f}x**)"))
        print(rows[-1], flush=True)
    if args.only_one_pixel:
        return write(args, rows, n, logit_err)

    # --------------------------------------------------------------------- JSMA
    target = (y + 1) % 10
    jcfg = JSMAConfig(theta=1.0, gamma=0.1, targeted=True)
    jrun = jax.jit(functools.partial(jsma, model.apply_fn, config=jcfg))
    jax.block_until_ready(jrun(model.params, x, target, jax.random.key(0)))
    t = time.perf_counter()
    jres = jax.block_until_ready(jrun(model.params, x, target, jax.random.key(0)))
    tj = time.perf_counter() - t
    tgt_t = torch.tensor(np.asarray(target)).long()
    jatk = torchattacks.JSMA(net, theta=1.0, gamma=0.1)
    jatk.set_mode_targeted_by_function(lambda images, labels: tgt_t)
    t = time.perf_counter()
    jadv = jatk(xt, yt)
    tt = time.perf_counter() - t
    js, jl = summary(jres.success, jres.norm)
    ts, tl = summary(succ_torch(jadv, tgt_t), l0_torch(jadv))
    x_adv_t = np.transpose(jadv.numpy(), (0, 2, 3, 1))
    same = np.all(np.abs(np.asarray(jres.x_adv) - x_adv_t) < 1e-6, axis=(1, 2, 3))
    rows.append(("JSMA (targeted y+1)", "theta 1, gamma 0.1 (deterministic)", f"{js:.1f}",
                 f"{ts:.1f}", f"{jl:.0f}", f"{tl:.0f}",
                 f"{tj:.1f} s / {tt:.1f} s (**{tt / tj:.1f}x**); identical x_adv on "
                 f"{same.sum()} of {n}"))
    print(rows[-1], flush=True)

    # ---------------------------------------------------------------- Sparse-RS
    for norm, k in (("l0", args.rs_k), ("patches", 16)):
        rcfg = SparseRSConfig(k=k, norm=norm, n_queries=args.rs_queries)
        rrun = jax.jit(functools.partial(sparse_rs, model.apply_fn, config=rcfg))
        jax.block_until_ready(rrun(model.params, x, y, jax.random.key(99)))
        outs, q, tt_ = [], 0.0, 0.0
        for s in range(args.seeds):
            t = time.perf_counter()
            r = jax.block_until_ready(rrun(model.params, x, y, jax.random.key(s)))
            tt_ += time.perf_counter() - t
            q += float(np.sum(r.queries))
            outs.append(summary(r.success, r.norm) + (float(np.median(r.queries)),))
        label = f"k = {k} pixels" if norm == "l0" else "4 x 4 patch"
        rows.append((f"Sparse-RS {norm}", f"{label}, {args.rs_queries} queries",
                     spread([o[0] for o in outs]), "-", spread([o[1] for o in outs]), "-",
                     f"{q / tt_:,.0f} / - (median queries {spread([o[2] for o in outs])})"))
        print(rows[-1], flush=True)

    write(args, rows, n, logit_err)


def write(args, rows, n, logit_err):
    import os

    import torch
    import torchattacks

    lines = [
        "# Sparse / L0 attacks vs torchattacks",
        "",
        f"`PYTHONPATH=. python benchmarks/attacks_sparse_crosscheck.py --n {args.n} --seeds "
        f"{args.seeds} --pixels {args.pixels} --popsize {args.popsize} --steps {args.steps} "
        f"--rs-k {args.rs_k} --rs-queries {args.rs_queries} --strategies {args.strategies}"
        f"{' --only-one-pixel' if args.only_one_pixel else ''}`",
        "",
        f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end (shared with other jobs); "
        f"jax {jax.__version__}, torch {torch.__version__}, torchattacks "
        f"{torchattacks.__version__} (1 thread).",
        f"Model: the embedded default mnist5k CNN and its PyTorch twin (max |logit diff| "
        f"{logit_err:.1e}); {n} correctly classified test images of the first {args.n} of a "
        f"fixed permutation. Success = misclassified (targeted: predicted target); median L0 "
        f"in pixels over the successful examples. Seeds: robustjax `jax.random.key(s)`, "
        f"torchattacks `np.random.seed(s)`, s = 0..{args.seeds - 1}; mean (min, max).",
        "",
        "| attack | setting | success % robustjax | success % torchattacks | median L0 robustjax "
        "| median L0 torchattacks | queries/s robustjax / torchattacks (time for JSMA) |",
        "|---|---|---|---|---|---|---|",
    ] + ["| " + " | ".join(r) + " |" for r in rows] + [
        "",
        "Notes: the one-pixel implementations are different DE variants (robustjax: the "
        "paper's DE/rand/1 or DE/best/1, F 0.5, no crossover, Gaussian colour start; "
        "torchattacks: scipy's best1bin with F dithered in [0.5, 1), recombination 1, uniform "
        "start), so they agree statistically at best. "
        "torchattacks runs DE image by image, robustjax scores the whole population of every "
        "image in one batched forward pass per generation. JSMA: torchattacks moves feature 0 "
        "when no pair qualifies; robustjax stops that example instead.",
    ]
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
