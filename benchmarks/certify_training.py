"""Certified training on mnist5k: normal vs IBP vs CROWN-IBP, verified accuracy at eps=0.1.

Run: ``PYTHONPATH=. python benchmarks/certify_training.py`` (a few minutes on 2 CPU cores).
Prints a markdown table; the numbers go into benchmarks/results/certify.md.
"""

from __future__ import annotations

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import data
from robustjax.certify import api
from robustjax.certify.training import CertifiedTrainingConfig, certified_loss
from robustjax.models.registry import create
from robustjax.train import accuracy, fit

EPS = 0.1
EPS_TRAIN = 0.15
BATCH = 50


def train(kind: str, x, y, key):
    model = create("cnn", key=jax.random.PRNGKey(0))  # IBP-small: conv16, conv32, dense100
    steps_per_epoch = len(x) // BATCH
    if kind == "normal":
        epochs, loss_fn = 4, None
    elif kind == "ibp":
        epochs = 8
        loss_fn = certified_loss(CertifiedTrainingConfig(
            eps=EPS_TRAIN, method="ibp", warmup_steps=steps_per_epoch,
            ramp_steps=4 * steps_per_epoch, kappa_end=0.5))
    else:
        epochs = 8
        # CROWN-IBP's backward pass costs ~50x an IBP step on 2 cores: a 2-epoch ramp (beta
        # 1 -> 0 with eps), after which the CROWN pass is skipped.
        loss_fn = certified_loss(CertifiedTrainingConfig(
            eps=EPS_TRAIN, method="crown_ibp", warmup_steps=steps_per_epoch,
            ramp_steps=2 * steps_per_epoch, kappa_end=0.5, beta_start=1.0, beta_end=0.0))
    total = epochs * steps_per_epoch
    sched = optax.cosine_decay_schedule(1e-3, total)
    kwargs = {} if loss_fn is None else {"loss_fn": loss_fn}
    t = time.perf_counter()
    params, _ = fit(model.apply_fn, model.params, optax.adam(sched), x, y, epochs=epochs,
                    batch_size=BATCH, key=key, **kwargs)
    return model, params, time.perf_counter() - t


def main():
    x, y = data.load("mnist5k", "train")
    xt, yt = data.load("mnist5k", "test")
    key = jax.random.PRNGKey(0)
    rows = []
    for kind in ("normal", "ibp", "crown_ibp"):
        model, params, seconds = train(kind, x, y, key)
        cert = {m: jax.jit(lambda p, a, b, m=m: api.certify(model.apply_fn, p, a, b, EPS, m,
                                                            chunk_size=100 if m != "crown" else 4))
                for m in ("ibp", "crown_ibp", "crown")}
        row = {"model": kind, "train s": seconds, "clean": accuracy(model.apply_fn, params, xt, yt)}
        # The test split is sorted by class: CROWN runs on every 5th digit (200, all classes).
        sub = slice(None, None, 5)
        row["clean (200)"] = accuracy(model.apply_fn, params, xt[sub], yt[sub])
        for m, fn in cert.items():
            for name, (xs, ys) in (("1000", (xt, yt)), ("200", (xt[sub], yt[sub]))):
                if m == "crown" and name == "1000":
                    continue
                flags = np.concatenate([np.asarray(fn(params, jnp.asarray(xs[i:i + 100]),
                                                      jnp.asarray(ys[i:i + 100])))
                                        for i in range(0, len(xs), 100)])
                row[f"verified {m} ({name})"] = flags.mean()
        rows.append(row)
        print(row, flush=True)
    header = list(rows[0])
    print(f"\nmachine: {platform.processor() or platform.machine()}, jax {jax.__version__}, "
          f"{jax.devices()[0].platform}")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                                for v in r.values()) + " |")


if __name__ == "__main__":
    main()
