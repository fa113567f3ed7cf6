"""Ablation training speed: 8 runs of the small CNN on mnist5k, vmapped vs one after another.

The 8 runs are the shipped ablation's four variants (full PGD-AT + weight decay + random crop
recipe, without adversarial training, without weight decay, without the crop) at two seeds:
trained by ``robustjax.experiments.train_group`` in vmapped programs (one per group), against
the same 8 runs trained one by one with ``robustjax.train.fit`` (``train_reference``). Same
steps, same keys, back to back in one process (on the CPU the two standard runs form their
own attack-free group unless ``--merge``); both timings include compilation (what a user
waits for) and the steady-state time of the last epoch is reported too. The runs' parameters
are compared at the end (max abs difference over all runs and leaves).

Model: the embedded default's CNN (conv 32 4x4/2, conv 64 4x4/2, dense 128), PGD-AT with 10
steps of 0.05 at eps 0.3, Adam, cosine lr 1e-3, batch 50 (80 steps per epoch on the 4,000
training digits). Short: ``--epochs 2`` by default.

Run: ``PYTHONPATH=. python benchmarks/ablation_speed.py [--epochs 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import data, models
from robustjax.experiments import Recipe, group_runs, train_group, train_reference

ARCH = dict(channels=(32, 64), hidden=128)


def runs(epochs):
    full = Recipe(loss="pgd_at", eps=0.3, step_size=0.05, attack_steps=10, weight_decay=5e-4,
                  crop=2, epochs=epochs, batch_size=50, eps_ramp=True, ramp_warmup_epochs=0,
                  ramp_epochs=1)
    variants = {"full": full, "-adversarial_training": dataclasses.replace(full, loss="standard"),
                "-weight_decay": dataclasses.replace(full, weight_decay=0.0),
                "-random_crop": dataclasses.replace(full, crop=0)}
    return [(name, r, seed) for name, r in variants.items() for seed in (0, 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--merge", action="store_true",
                    help="one program for all 8 runs (the standard runs compute the attack they "
                         "ignore); default: the backend's grouping (CPU: standard runs apart)")
    args = ap.parse_args()
    x, y = data.load("mnist5k", "train")
    todo = runs(args.epochs)
    inits = {s: models.create("cnn", 10, key=jax.random.PRNGKey(s), **ARCH) for s in (0, 1)}
    apply_fn = inits[0].apply_fn
    recipes = [r for _, r, _ in todo]
    seeds = [s for _, _, s in todo]
    groups = group_runs(recipes, "pgd_at", merge_standard=args.merge)
    print(f"{len(groups)} group(s): {[len(idx) for _, idx in groups]} runs", flush=True)
    vm_params, vm_total, vm_last = [None] * len(todo), 0.0, 0.0
    for static, idx in groups:
        start = time.perf_counter()
        trained, hist = train_group(apply_fn, [inits[seeds[i]].params for i in idx],
                                    [recipes[i] for i in idx], [seeds[i] for i in idx], x, y,
                                    static)
        jax.block_until_ready(trained)
        vm_total += time.perf_counter() - start
        secs = hist["seconds"]
        vm_last += secs[-1] - (secs[-2] if len(secs) > 1 else 0.0)
        for i, p in zip(idx, trained):
            vm_params[i] = p
    print(f"vmapped: {vm_total:.1f} s total, last epoch {vm_last:.1f} s", flush=True)
    xt, yt = data.load("mnist5k", "test")
    predict = jax.jit(lambda p, xb: jnp.argmax(apply_fn(p, xb), -1))

    seq_total, seq_last, diffs, agree, acc = 0.0, 0.0, [], [], []
    for i, (name, recipe, seed) in enumerate(todo):
        start = time.perf_counter()
        params, hist = train_reference(apply_fn, inits[seed].params, recipe, x, y, seed)
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        seq_total += seconds
        s = hist["seconds"]
        seq_last += s[-1] - (s[-2] if len(s) > 1 else 0.0)
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                   zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(vm_params[i])))
        diffs.append(diff)
        same = float(np.mean(np.asarray(predict(params, xt)) == np.asarray(predict(vm_params[i],
                                                                                    xt))))
        agree.append(same)
        acc.append((float(np.mean(np.asarray(predict(params, xt)) == yt)),
                    float(np.mean(np.asarray(predict(vm_params[i], xt)) == yt))))
        print(f"sequential {name} seed {seed}: {seconds:.1f} s, max |param diff| vs vmapped "
              f"{diff:.2e}, test predictions equal {100 * same:.1f}%, clean acc seq/vmap "
              f"{acc[-1][0]:.3f}/{acc[-1][1]:.3f}", flush=True)
    out = {"machine": f"{platform.processor() or platform.machine()}, "
                      f"{jax.device_count()} {jax.default_backend()} device(s)",
           "epochs": args.epochs, "steps_per_run": static.epochs * (len(x) // 50), "runs": 8,
           "vmapped_s": vm_total, "sequential_s": seq_total, "speedup": seq_total / vm_total,
           "vmapped_last_epoch_s": vm_last, "sequential_last_epoch_s": seq_last,
           "speedup_last_epoch": seq_last / vm_last, "max_param_diff": max(diffs),
           "param_diff_per_run": diffs, "prediction_agreement_per_run": agree,
           "clean_accuracy_seq_vmap_per_run": acc, "groups": [len(i) for _, i in groups],
           "merge_standard": args.merge}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
