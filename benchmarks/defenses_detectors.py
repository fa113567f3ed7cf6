"""Detection of PGD and FGSM adversarial examples: AUROC and TPR at 5% FPR per detector.

Setting (issue 14, "Detectors"): the embedded default MNIST CNN; PGD Linf eps 0.3, 40 steps of
0.01 (random start) and FGSM Linf eps 0.3. Detectors are fitted on mnist5k train (shuffled:
Mahalanobis on 2,000 clean images with their labels; the spectral detector on 1,000 clean
images vs the same attack's adversarial versions of 1,000 other training images; feature
squeezing needs no fit) and evaluated on mnist5k test. Negatives: the test images the model
classifies correctly; positives: the adversarial versions of those that the attack turns into
misclassifications (failed attacks are not counted: they are not adversarial examples).

Two TPRs at 5% FPR: ``tpr@5`` takes the threshold from the test clean scores themselves (the
ROC curve's point, what ``tpr_at_fpr`` reports); ``tpr@5 (train thr)`` / ``fpr (train thr)``
use a threshold set on 1,000 held-out clean *training* images, as a deployment would (the
paper's protocol for feature squeezing).

``--digits`` also runs scikit-learn digits (8x8) with a small MLP trained here (eps 0.3 there
too; spectral detector with 4 rings, non-local means off).

    python benchmarks/defenses_detectors.py [--digits] [--out benchmarks/results/...md]
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import platform
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from robustjax import data, metrics  # noqa: E402
from robustjax.attacks import FGSMConfig, PGDConfig, fgsm, pgd  # noqa: E402
from robustjax.defenses import detectors as D  # noqa: E402
from robustjax.models import create, embedded_default  # noqa: E402

ATTACKS = {"PGD-40 eps 0.3": (pgd, PGDConfig(eps=0.3, step_size=0.01, steps=40)),
           "FGSM eps 0.3": (fgsm, FGSMConfig(eps=0.3))}


def in_batches(fn, *arrays, size=250):
    outs = [fn(*(a[i:i + size] for a in arrays)) for i in range(0, len(arrays[0]), size)]
    return jax.tree_util.tree_map(lambda *p: np.concatenate([np.asarray(q) for q in p]), *outs)


def attack_fn(apply_fn, attack, cfg):
    run = jax.jit(functools.partial(attack, apply_fn, config=cfg))
    key = jax.random.PRNGKey(0)

    def go(params, x, y):
        res = in_batches(lambda xb, yb: run(params, xb, yb, key), x, y)
        return res.x_adv, res.success

    return go


def train_mlp(x, y, steps=600, hidden=(128,)):
    model = create("mlp", num_classes=10, input_shape=x.shape[1:], hidden=hidden,
                   key=jax.random.PRNGKey(0))
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, state, xb, yb):
        g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply_fn(p, xb), yb).mean())(params)
        u, state = opt.update(g, state, params)
        return optax.apply_updates(params, u), state

    params, state = model.params, opt.init(model.params)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        params, state = step(params, state, x[idx], y[idx])
    return model.apply_fn, model.embed_fn, params


def evaluate(name, apply_fn, embed_fn, params, train, test, fs_cfg, sp_cfg, log):
    (xtr, ytr), (xte, yte) = train, test
    perm = np.random.default_rng(0).permutation(len(xtr))
    n = len(xtr) // 4
    fit_idx, spec_a, spec_b, thr_idx = (perm[:2 * n], perm[:n], perm[n:2 * n],
                                        perm[2 * n:3 * n])
    predict = jax.jit(lambda p, z: jax.numpy.argmax(apply_fn(p, z), -1))
    ok = in_batches(lambda z: predict(params, z), xte) == yte
    log(f"{name}: clean test accuracy {ok.mean():.4f} ({ok.sum()} negatives)")
    fs = D.fit_feature_squeezing(apply_fn, params, xtr[:8], fs_cfg)
    maha = D.fit_mahalanobis(embed_fn, params, xtr[fit_idx], ytr[fit_idx])
    maha_pre = D.fit_mahalanobis(embed_fn, params, xtr[fit_idx], ytr[fit_idx],
                                 D.MahalanobisConfig(epsilon=0.002))
    rows = []
    for attack_name, (attack, cfg) in ATTACKS.items():
        t0 = time.perf_counter()
        go = attack_fn(apply_fn, attack, cfg)
        x_adv, success = go(params, xte, yte)
        pos = success & ok
        fit_adv, _ = go(params, xtr[spec_b], ytr[spec_b])
        log(f"  {attack_name}: {pos.sum()} successful of {ok.sum()} "
            f"({time.perf_counter() - t0:.1f} s)")
        spec = D.fit_spectral(xtr[spec_a], fit_adv, sp_cfg)
        scorers = {
            "feature squeezing": lambda z: D.score_feature_squeezing(apply_fn, params, z, fs),
            "mahalanobis": lambda z: D.score_mahalanobis(embed_fn, params, z, maha),
            "mahalanobis (eps 0.002)": lambda z: D.score_mahalanobis(embed_fn, params, z,
                                                                     maha_pre),
            "spectral": lambda z: D.score_spectral(z, spec),
        }
        for det, score in scorers.items():
            s_clean = in_batches(score, xte[ok])
            s_adv = in_batches(score, x_adv[pos])
            t_train = D.threshold_at_fpr(in_batches(score, xtr[thr_idx]), 0.05)
            rows.append({
                "data": name, "attack": attack_name, "detector": det,
                "positives": int(pos.sum()), "negatives": int(ok.sum()),
                "auroc": metrics.auroc(s_clean, s_adv),
                "tpr5": metrics.tpr_at_fpr(s_clean, s_adv, 0.05),
                "tpr5_train": float(np.mean(np.asarray(D.detect(s_adv, t_train)))),
                "fpr_train": float(np.mean(np.asarray(D.detect(s_clean, t_train)))),
            })
            log(f"    {det:24s} AUROC {rows[-1]['auroc']:.4f}  TPR@5% {rows[-1]['tpr5']:.4f}"
                f"  (train thr: TPR {rows[-1]['tpr5_train']:.4f}, FPR "
                f"{rows[-1]['fpr_train']:.4f})")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--digits", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    start = time.perf_counter()
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    model = embedded_default(log=log)
    rows = evaluate("mnist5k (embedded default CNN)", model.apply_fn, model.embed_fn,
                    model.params, data.load("mnist5k", "train"), data.load("mnist5k", "test"),
                    D.FeatureSqueezingConfig.for_dataset("mnist"), D.SpectralConfig(), log)
    if args.digits:
        tr, te = data.load("digits", "train"), data.load("digits", "test")
        apply_fn, embed_fn, params = train_mlp(*tr)
        rows += evaluate("digits (MLP 64-128-10, trained here)", apply_fn, embed_fn, params,
                         tr, te, D.FeatureSqueezingConfig(bit_depth=1, median_size=2, nlm=None),
                         D.SpectralConfig(num_bins=4), log)
    seconds = time.perf_counter() - start
    if args.out:
        table = ["| data | attack | detector | pos / neg | AUROC | TPR@5%FPR | "
                 "TPR (train thr) | FPR (train thr) |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            table.append(f"| {r['data']} | {r['attack']} | {r['detector']} | "
                         f"{r['positives']} / {r['negatives']} | {r['auroc']:.3f} | "
                         f"{r['tpr5']:.3f} | {r['tpr5_train']:.3f} | {r['fpr_train']:.3f} |")
        machine = (f"{platform.machine()}, {jax.device_count()} JAX {jax.default_backend()} "
                   f"device(s), jax {jax.__version__}")
        pathlib.Path(args.out).write_text(
            "# defenses: adversarial-example detectors\n\n"
            f"Command: `python benchmarks/defenses_detectors.py{' --digits' if args.digits else ''}"
            f" --out {args.out}`; machine: {machine}; total {seconds:.0f} s.\n\n"
            + "\n".join(table) + "\n\nLog:\n\n```\n" + "\n".join(lines) + "\n```\n")
    print(f"done in {seconds:.0f} s")


if __name__ == "__main__":
    main()
