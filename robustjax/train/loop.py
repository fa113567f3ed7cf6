"""Training: a pure ``train_step`` and a small ``fit`` loop on any optax optimizer.

Only the ``"params"`` collection of a flax variables dict is trained; other collections
(``batch_stats`` of BatchNorm in inference mode) are carried along unchanged.

A loss is ``loss_fn(apply_fn, params, x, y, key, step) -> scalar``; ``cross_entropy_loss`` is
the default. Robust losses (adversarial, IBP, CROWN-IBP) use the same signature, so the same
loop trains them.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax.data import batches
from robustjax.types import ApplyFn, check_batch

LossFn = Callable[..., jax.Array]


def cross_entropy_loss(apply_fn: ApplyFn, params, x, y, key, step) -> jax.Array:
    """Mean softmax cross-entropy of ``apply_fn(params, x)`` against integer labels ``y``."""
    del key, step
    logits = apply_fn(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


def _split(variables):
    if isinstance(variables, dict) and "params" in variables:
        rest = {k: v for k, v in variables.items() if k != "params"}
        return variables["params"], rest
    return variables, None


def _join(trainable, rest):
    return trainable if rest is None else {"params": trainable, **rest}


def init_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    trainable, _ = _split(params)
    return TrainState(params, optimizer.init(trainable), jnp.zeros((), jnp.int32))


def train_step(state: TrainState, x, y, key, *, apply_fn: ApplyFn,
               optimizer: optax.GradientTransformation,
               loss_fn: LossFn = cross_entropy_loss) -> tuple[TrainState, jax.Array]:
    """One optimizer step; pure, jit it with ``apply_fn``/``optimizer``/``loss_fn`` static.

    Returns the new state and the loss *before* the update.
    """
    trainable, rest = _split(state.params)

    def objective(tr):
        return loss_fn(apply_fn, _join(tr, rest), x, y, key, state.step)

    loss, grads = jax.value_and_grad(objective)(trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return TrainState(_join(trainable, rest), opt_state, state.step + 1), loss


def accuracy(apply_fn: ApplyFn, params, x, y, batch_size: int = 500) -> float:
    """Top-1 accuracy over a dataset, in batches."""
    predict = jax.jit(lambda p, xb: jnp.argmax(apply_fn(p, xb), -1))
    correct = 0
    for xb, yb in batches(x, y, batch_size):
        correct += int(np.sum(np.asarray(predict(params, xb)) == yb))
    return correct / max(len(x), 1)


def fit(apply_fn: ApplyFn, params, optimizer: optax.GradientTransformation, x, y, *,
        epochs: int, batch_size: int, key: jax.Array, loss_fn: LossFn = cross_entropy_loss,
        shuffle_seed: int = 0, eval_data: Optional[tuple] = None,
        progress: Optional[Callable] = None, log: Optional[Callable[[str], None]] = None):
    """Train ``params`` for ``epochs`` passes over ``(x, y)``.

    Batches are drawn in a deterministic shuffled order (``shuffle_seed + epoch``); incomplete
    last batches are dropped so the step compiles once. Returns ``(params, history)`` where
    history has per-epoch mean loss, eval accuracy (if ``eval_data``) and wall time.
    """
    check_batch(x, y)
    if len(x) < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({len(x)})")
    step_fn = jax.jit(functools.partial(train_step, apply_fn=apply_fn, optimizer=optimizer,
                                        loss_fn=loss_fn))
    state = init_state(params, optimizer)
    history = {"loss": [], "eval_accuracy": [], "seconds": []}
    start = time.perf_counter()
    epoch_iter = range(epochs)
    if progress is not None:
        epoch_iter = progress(epoch_iter, desc="training", total=epochs)
    for epoch in epoch_iter:
        losses = []
        for xb, yb in batches(x, y, batch_size, shuffle_seed=shuffle_seed + epoch,
                              drop_remainder=True):
            step_key = jax.random.fold_in(key, int(state.step))
            state, loss = step_fn(state, xb, yb, step_key)
            losses.append(loss)
        history["loss"].append(float(np.mean(jax.device_get(losses))))
        if eval_data is not None:
            history["eval_accuracy"].append(accuracy(apply_fn, state.params, *eval_data))
        history["seconds"].append(time.perf_counter() - start)
        if log is not None:
            msg = f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}"
            if eval_data is not None:
                msg += f", eval accuracy {history['eval_accuracy'][-1]:.4f}"
            log(msg)
    return state.params, history
