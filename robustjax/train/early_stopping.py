"""Early stopping on a held-out robust split (Rice et al. 2020, "Overfitting in adversarially
robust deep learning"): robust test accuracy peaks shortly after the first learning-rate decay
and then falls, so the checkpoint with the best PGD accuracy on held-out data is kept.

``robust_accuracy_fn(apply_fn, x_val, y_val, config, key)`` returns ``eval_fn(params) ->
float`` for ``robustjax.train.fit(eval_fn=..., keep_best=True, patience=...)``: the accuracy
under ``robustjax.attacks.pgd`` (Rice et al. select on PGD-10 at the training eps) with the
same key every epoch, so epochs are compared on the same random starts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import PGDConfig, pgd
from robustjax.data import batches


def robust_accuracy_fn(apply_fn, x_val, y_val, config: PGDConfig, key: jax.Array,
                       batch_size: int = 500):
    """``eval_fn(params) -> PGD robust accuracy on (x_val, y_val)`` (eval mode)."""
    if len(x_val) == 0:
        raise ValueError("the held-out split is empty")
    attack = jax.jit(functools.partial(pgd, apply_fn, config=config))
    predict = jax.jit(lambda p, xb: jnp.argmax(apply_fn(p, xb), -1))

    def eval_fn(params) -> float:
        correct = 0
        for i, (xb, yb) in enumerate(batches(x_val, y_val, batch_size)):
            x_adv = attack(params, xb, yb, jax.random.fold_in(key, i)).x_adv
            correct += int(np.sum(np.asarray(predict(params, x_adv)) == yb))
        return correct / len(x_val)

    return eval_fn
