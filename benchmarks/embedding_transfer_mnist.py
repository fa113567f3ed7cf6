"""Black-box encoder attack: a surrogate encoder attacks a victim encoder's downstream SVM.

Victim encoder: the embedded default MNIST CNN's 128-d penultimate features
(``Model.embed_fn``); a linear SVM (scikit-learn ``SVC(kernel="linear")``) is trained on the
victim's clean, L2-normalised embeddings of ``--train`` mnist5k train digits. Surrogate encoder:
the report's second CNN (``report.blackbox.surrogate_model``: other width, other seed, 64-d
features). On ``--n`` test digits, Linf, 10 steps of step eps/4, random start:

* white-box: ``embedding_pgd`` on the victim encoder (cosine distance, away from the clean);
* transfer: ``embedding_pgd`` on the surrogate encoder, the images then embedded by the victim;
* control: uniform random signs of the same eps (``clip(x + eps * s)``).

Reported: the SVM's accuracy on the victim's embeddings and the victim's mean cosine shift
(``embedding_shift``). The SVM itself is never attacked.

Run: ``PYTHONPATH=. python benchmarks/embedding_transfer_mnist.py``. Writes
``benchmarks/results/embedding_transfer_mnist.md``.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import data
from robustjax.attacks import embedding as E
from robustjax.models import embedded_default
from robustjax.report import base, blackbox

ROOT = pathlib.Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    from sklearn.svm import SVC

    t_start = time.perf_counter()
    victim = embedded_default()
    ctx = base.ReportContext(model=victim, x=None, y=None, key=jax.random.PRNGKey(0),
                             out_dir=ROOT, quick=False)
    surrogate, _, how = blackbox.surrogate_model(ctx)
    x_tr, y_tr = data.load("mnist5k", "train")
    x_te, y_te = data.load("mnist5k", "test")
    rng = np.random.default_rng(0)
    tr = rng.permutation(len(x_tr))[:args.train]
    te = rng.permutation(len(x_te))[:args.n]
    x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], jnp.asarray(x_te[te]), y_te[te]
    v_embed = jax.jit(victim.embed_fn)

    def feats(images):
        z = np.asarray(v_embed(victim.params, jnp.asarray(images)))
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    svm = SVC(kernel="linear").fit(feats(x_tr), y_tr)
    acc_clean = float(np.mean(svm.predict(feats(x_te)) == y_te))
    attack_v = jax.jit(lambda p, x, z, k, c: E.embedding_pgd(victim.embed_fn, p, x, z, k, c))
    attack_s = jax.jit(lambda p, x, z, k, c: E.embedding_pgd(surrogate.embed_fn, p, x, z, k, c))
    shift = jax.jit(lambda p, x, xa: E.embedding_shift(victim.embed_fn, p, x, xa))
    z_v = v_embed(victim.params, x_te)
    z_s = surrogate.embed_fn(surrogate.params, x_te)
    rows = []
    for i, eps in enumerate(args.eps):
        cfg = E.EmbeddingPGDConfig(eps=eps, step_size=eps / 4, steps=args.steps)
        key = jax.random.PRNGKey(i)
        cases = {
            "white-box (victim encoder)": attack_v(victim.params, x_te, z_v, key, cfg).x_adv,
            "transfer (surrogate encoder)": attack_s(surrogate.params, x_te, z_s, key,
                                                     cfg).x_adv,
            "random signs (control)": jnp.clip(x_te + eps * jnp.sign(jax.random.uniform(
                key, x_te.shape, minval=-1, maxval=1)), 0, 1),
        }
        for name, xa in cases.items():
            acc = float(np.mean(svm.predict(feats(xa)) == y_te))
            cos = float(jnp.mean(shift(victim.params, x_te, xa)))
            rows.append((eps, name, acc, cos))
            print(rows[-1], flush=True)
    lines = [
        "# Black-box encoder attack on MNIST: surrogate encoder -> victim encoder + SVM", "",
        f"`PYTHONPATH=. python benchmarks/embedding_transfer_mnist.py` "
        f"({time.perf_counter() - t_start:.0f} s on the shared 2-core CPU). Victim: the embedded "
        f"default CNN's 128-d features; linear SVM on {args.train} clean train digits' "
        f"victim embeddings. Surrogate: the report's second CNN "
        f"({blackbox.SURROGATE_OVERRIDES}, {how}), 64-d features. {args.n} test digits; "
        f"embedding PGD (cosine, away), Linf, {args.steps} steps of eps/4, random start.", "",
        f"SVM accuracy on clean test embeddings: **{acc_clean:.3f}**.", "",
        "| eps | images from | SVM accuracy (victim embeddings) | mean cosine shift on the "
        "victim |", "|---|---|---|---|"]
    lines += [f"| {e:g} | {n} | {a:.3f} | {c:.3f} |" for e, n, a, c in rows]
    out = ROOT / "results" / "embedding_transfer_mnist.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
