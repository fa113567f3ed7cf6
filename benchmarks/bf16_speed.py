"""bfloat16 vs float32 (robustjax.precision): PGD-10 speed on ResNet-18, attack sweep accuracy.

Part 1: PGD-10 (Linf 8/255, step 2/255) on the CIFAR ResNet-18 (``robustjax.models``,
random init: no CIFAR-10 weights or data are installed offline) at ``--batch`` images of
32x32x3, float32 vs ``with_policy("bfloat16")``: images/s, timed interleaved (fp32, bf16,
fp32, ...) in one process so both see the same machine load, best of ``--reps``. With random
weights robust accuracy means nothing; the agreement of the two attacks' adversarial
predictions and the max pixel difference of their iterates are reported instead.

Part 2: the report's attack sweep (``robustjax.report.attacks`` FULL settings: 256 mnist5k
test images, eps 0.05/0.1/0.2/0.3, FGSM, PGD-20 step 0.025, APGD-CE 100 iterations, Square
1,000 queries) on the embedded default, float32 vs bfloat16: robust accuracy (clean-correct
and not broken, as the report counts it) and seconds per attack.

    .venv/bin/python benchmarks/bf16_speed.py --batch 128 --reps 3
    .venv/bin/python benchmarks/bf16_speed.py --skip-resnet   # sweep only

Writes ``benchmarks/results/bf16_speed.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import data, models
from robustjax.attacks import ATTACKS


def cpu_flags() -> list[str]:
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni", "avx2")))


def time_interleaved(fns: dict, args: dict, reps: int) -> dict:
    """Best wall seconds of each function, called alternately ``reps`` times after a warm-up."""
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args[name]))
    best = {name: float("inf") for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args[name]))
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def resnet_part(batch: int, reps: int) -> dict:
    fp32 = models.create("resnet18_cifar")
    bf16 = fp32.with_policy("bfloat16")
    x = jax.random.uniform(jax.random.PRNGKey(0), (batch, 32, 32, 3))
    y = jnp.arange(batch, dtype=jnp.int32) % 10
    key = jax.random.PRNGKey(1)
    pgd, config = ATTACKS["pgd"]
    cfg = config(eps=8 / 255, step_size=2 / 255, steps=10)

    def runner(model):
        return jax.jit(lambda p, x, y, k: pgd(model.apply_fn, p, x, y, k, cfg).x_adv)

    fns = {"float32": runner(fp32), "bfloat16": runner(bf16)}
    args = {"float32": (fp32.params, x, y, key), "bfloat16": (bf16.params, x, y, key)}
    seconds = time_interleaved(fns, args, reps)
    adv = {n: fns[n](*args[n]) for n in fns}
    pred = {n: np.asarray(jnp.argmax(fp32.apply_fn(fp32.params, adv[n]), -1)) for n in adv}
    return {"batch": batch, "reps": reps,
            "seconds": seconds,
            "images_per_s": {n: batch / s for n, s in seconds.items()},
            "speedup_bf16": seconds["float32"] / seconds["bfloat16"],
            "adv_prediction_agreement": float(np.mean(pred["float32"] == pred["bfloat16"])),
            "max_abs_xadv_difference": float(jnp.max(jnp.abs(adv["float32"] - adv["bfloat16"])))}


def sweep_part(n: int) -> dict:
    fp32 = models.embedded_default()
    bf16 = fp32.with_policy("bfloat16")
    x, y = data.load("mnist5k", "test")
    x, y = jnp.asarray(x[:n], jnp.float32), jnp.asarray(y[:n], jnp.int32)
    key = jax.random.PRNGKey(0)
    eps_grid = (0.05, 0.1, 0.2, 0.3)
    out = {"n": n, "eps": eps_grid, "float32": {}, "bfloat16": {}, "seconds": {}}
    for name, model in (("float32", fp32), ("bfloat16", bf16)):
        f, p = model.apply_fn, model.params
        clean_ok = np.asarray(jnp.argmax(f(p, x), -1) == y)
        rows = {"clean": float(clean_ok.mean())}
        secs = {}
        setups = {  # the report's FULL settings (robustjax.report.attacks)
            "FGSM": ("fgsm", {}),
            "PGD-20": ("pgd", dict(step_size=0.025, steps=20)),
            "APGD-CE (100 it.)": ("apgd", dict(steps=100)),
            "Square (1000 queries)": ("square", dict(n_queries=1000)),
        }
        for i, (attack_name, (registry_name, kwargs)) in enumerate(setups.items()):
            attack, config = ATTACKS[registry_name]
            accs, t0 = [], time.perf_counter()
            for j, e in enumerate(eps_grid):
                cfg = config(eps=e, **kwargs)
                res = attack(f, p, x, y, jax.random.fold_in(key, 10 * i + j), cfg)
                success = np.asarray(res.success)
                accs.append(float((clean_ok & ~success).mean()))
            secs[attack_name] = time.perf_counter() - t0
            rows[attack_name] = accs
        out[name] = rows
        out["seconds"][name] = secs
    out["max_abs_accuracy_difference"] = max(
        abs(a - b) for k in out["float32"] if k != "clean"
        for a, b in zip(out["float32"][k], out["bfloat16"][k]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                         / "bf16_speed.json"))
    args = ap.parse_args()
    result = {"machine": {"processor": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(),
                          "jax": jax.__version__, "backend": jax.default_backend(),
                          "devices": [str(d) for d in jax.devices()],
                          "load_average": os.getloadavg()}}
    if not args.skip_resnet:
        result["resnet18_pgd10"] = resnet_part(args.batch, args.reps)
        print(json.dumps(result["resnet18_pgd10"], indent=1), flush=True)
    if not args.skip_sweep:
        result["default_sweep"] = sweep_part(args.examples)
        print(json.dumps(result["default_sweep"], indent=1), flush=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
