"""Training: a pure ``train_step`` and a ``fit`` loop on any optax optimizer.

Only the ``"params"`` collection of a flax variables dict is trained. Other collections
(``batch_stats``) are updated in train mode when the model gives a ``train_apply_fn``
(``robustjax.train.modes``) and carried unchanged otherwise.

A loss is ``loss_fn(apply_fn, params, x, y, key, step) -> scalar``; ``cross_entropy_loss`` is
the default. Robust losses (``robustjax.train.adversarial``, ``certified``, ``distillation``)
use the same signature and keep their attack inside, so the same loop trains them. The
optimizer is any ``optax.GradientTransformation``, passed unchanged: weight decay, clipping,
schedules and parameter averaging (``robustjax.train.averaging``) are members of its chain::

    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(5e-4),
                      optax.sgd(schedule, momentum=0.9), averaging.parameter_ema(0.999))
    params, history = fit(model.apply_fn, model.params, opt, x, y, epochs=10, batch_size=128,
                          key=key, loss_fn=pgd_at_loss(PGDATConfig()),
                          train_apply_fn=model.train_apply_fn)
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import validation
from robustjax.data import batches
from robustjax.train import averaging, modes, sharding
from robustjax.types import ApplyFn, Model

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
               loss_fn: LossFn = cross_entropy_loss,
               train_apply_fn: Optional[Callable] = None) -> tuple[TrainState, jax.Array]:
    """One optimizer step; pure, jit it with ``apply_fn``/``optimizer``/``loss_fn`` static.

    With ``train_apply_fn`` (``Model.train_apply_fn``) the loss sees the model in train mode
    and the batch statistics in ``state.params`` are updated (``robustjax.train.modes``).
    Returns the new state and the loss *before* the update.
    """
    trainable, rest = _split(state.params)
    use_train_mode = train_apply_fn is not None and rest

    def objective(tr):
        variables = _join(tr, rest)
        if not use_train_mode:
            return loss_fn(apply_fn, variables, x, y, key, state.step), rest
        fn = modes.TrainModeApply(apply_fn, train_apply_fn)
        loss = loss_fn(fn, variables, x, y, key, state.step)
        return loss, fn.updated(rest)

    (loss, new_rest), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return TrainState(_join(trainable, new_rest), opt_state, state.step + 1), loss


def accuracy(apply_fn: ApplyFn, params, x, y, batch_size: int = 500) -> float:
    """Top-1 accuracy over a dataset, in batches."""
    predict = jax.jit(lambda p, xb: jnp.argmax(apply_fn(p, xb), -1))
    correct = 0
    for xb, yb in batches(x, y, batch_size):
        correct += int(np.sum(np.asarray(predict(params, xb)) == yb))
    return correct / max(len(x), 1)


def evaluated_params(state: TrainState):
    """The parameters to evaluate: the chain's running average if it has one, else the last."""
    averaged = averaging.averaged_params(state.opt_state)
    if averaged is None:
        return state.params
    _, rest = _split(state.params)
    return _join(averaged, rest)


def fit(apply_fn: ApplyFn, params, optimizer: optax.GradientTransformation, x, y, *,
        epochs: int, batch_size: int, key: jax.Array, loss_fn: LossFn = cross_entropy_loss,
        train_apply_fn: Optional[Callable] = None, shuffle_seed: int = 0,
        eval_data: Optional[tuple] = None,
        eval_fn: Optional[Callable[[Any], float]] = None, keep_best: bool = False,
        patience: Optional[int] = None, progress: Optional[Callable] = None,
        log: Optional[Callable[[str], None]] = None, mesh=None, fsdp: bool = False):
    """Train ``params`` for ``epochs`` passes over ``(x, y)``.

    Batches are drawn in a deterministic shuffled order (``shuffle_seed + epoch``); incomplete
    last batches are dropped so the step compiles once. The step key is
    ``fold_in(key, step)``.

    Robust overfitting (Rice et al. 2020): ``eval_fn(params) -> float`` (higher is better,
    e.g. ``early_stopping.robust_accuracy_fn`` on a held-out split) is evaluated after every
    epoch; ``keep_best`` returns the parameters of the best epoch (early stopping by
    checkpoint selection) and ``patience`` stops after that many epochs without improvement.
    If the optimizer chain holds a parameter average (``averaging.parameter_ema`` / ``swa``),
    evaluation and the returned parameters use the average.

    Sharded training (``robustjax.train.sharding``): ``mesh`` (a ``jax.sharding.Mesh`` with
    axis ``"batch"``, ``robustjax.parallel.data_mesh()``) runs each step data parallel over its
    devices, the same numbers as one device to float32 rounding; ``fsdp=True`` also shards the
    parameters and optimiser state over it. ``batch_size`` must divide over the devices.

    Returns ``(params, history)``: history has per-epoch mean ``loss``, ``eval_accuracy`` (if
    ``eval_data``), ``eval_metric`` (if ``eval_fn``), ``seconds``, and ``best_epoch``.
    """
    # NHWC images the model takes, finite pixels in [0, 1], labels inside its classes: before
    # any step compiles (robustjax.validation)
    validation.check_model_inputs(apply_fn, params, x, y)
    if len(x) < batch_size:
        raise validation.InputError(f"batch_size {batch_size} is larger than the dataset "
                                    f"({len(x)}); pass a smaller batch_size or more data")
    if (keep_best or patience is not None) and eval_fn is None:
        raise ValueError("keep_best and patience need eval_fn (the held-out metric to select on)")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 epochs, got {patience}")
    if modes.has_batch_stats(params) and train_apply_fn is None:
        warnings.warn("params hold batch statistics but no train_apply_fn was given: BatchNorm "
                      "stays in inference mode and its statistics are not updated. Pass "
                      "train_apply_fn=model.train_apply_fn (or use train.fit_model).",
                      stacklevel=2)
    place = sharding.placement(mesh, fsdp=fsdp)
    step = functools.partial(train_step, apply_fn=apply_fn, optimizer=optimizer,
                             loss_fn=loss_fn, train_apply_fn=train_apply_fn)
    state = init_state(params, optimizer)
    if place is None:
        step_fn = jax.jit(step)
    else:
        place.check_batch_size(batch_size)
        step_fn, state = place.jit_step(step, state), place.put_state(state)
    history = {"loss": [], "eval_accuracy": [], "eval_metric": [], "seconds": [],
               "best_epoch": None}
    best, best_params, since_best = -np.inf, None, 0
    start = time.perf_counter()
    epoch_iter = range(epochs)
    if progress is not None:
        epoch_iter = progress(epoch_iter, desc="training", total=epochs)
    for epoch in epoch_iter:
        losses = []
        for xb, yb in batches(x, y, batch_size, shuffle_seed=shuffle_seed + epoch,
                              drop_remainder=True):
            step_key = jax.random.fold_in(key, int(state.step))
            if place is not None:
                xb, yb = place.put_batch(xb, yb)
            state, loss = step_fn(state, xb, yb, step_key)
            losses.append(loss)
        history["loss"].append(float(np.mean(jax.device_get(losses))))
        current = evaluated_params(state)
        msg = f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}"
        if eval_data is not None:
            history["eval_accuracy"].append(accuracy(apply_fn, current, *eval_data))
            msg += f", eval accuracy {history['eval_accuracy'][-1]:.4f}"
        stop = False
        if eval_fn is not None:
            metric = float(eval_fn(current))
            history["eval_metric"].append(metric)
            msg += f", eval metric {metric:.4f}"
            if metric > best:
                best, since_best, history["best_epoch"] = metric, 0, epoch
                if keep_best:
                    best_params = jax.device_get(current)
            else:
                since_best += 1
                stop = patience is not None and since_best >= patience
        history["seconds"].append(time.perf_counter() - start)
        if log is not None:
            log(msg)
        if stop:
            break
    final = evaluated_params(state)
    if keep_best and best_params is not None:
        final = jax.tree_util.tree_map(jnp.asarray, best_params)
    return final, history


def fit_model(model: Model, optimizer: optax.GradientTransformation, x, y, **kwargs):
    """``fit`` for a ``Model`` (its ``train_apply_fn`` included) -> ``(Model, history)``."""
    import dataclasses

    params, history = fit(model.apply_fn, model.params, optimizer, x, y,
                          train_apply_fn=model.train_apply_fn, **kwargs)
    return dataclasses.replace(model, params=params), history
