"""Schedules: everything that changes over training is an optax schedule ``step -> value``.

A config field that may change over training (eps, step size, beta, temperature, the attack's
step count) takes a number (constant) or any optax schedule (``optax.linear_schedule``,
``optax.cosine_decay_schedule``, ``optax.join_schedules`` ...). ``step`` is the optimiser step
(``TrainState.step``). Helpers:

* ``eps_ramp(eps, ramp_steps, warmup_steps)``: 0 for ``warmup_steps``, then linear to ``eps``;
* ``per_epoch(values, steps_per_epoch, epochs)``: one value per epoch (piecewise constant),
  with a length check;
* ``value_at(schedule, step)`` evaluates a number or a schedule; ``check_schedule`` validates
  one at construction time, with an error that says what is wrong.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

Schedule = Union[float, int, Callable[[jax.Array], jax.Array]]


def check_schedule(value, name: str, *, integer: bool = False, minimum: Optional[float] = 0.0
                   ) -> None:
    """Raise a TypeError/ValueError unless ``value`` is a number or a scalar schedule.

    A schedule is probed at step 0 (it must return a scalar); numbers must be ``>= minimum``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or an optax schedule, got a bool")
    if isinstance(value, numbers.Number):
        if integer and not float(value).is_integer():
            raise TypeError(f"{name} must be an integer (or an integer schedule), got {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        return
    if isinstance(value, (list, tuple, np.ndarray)):
        raise TypeError(
            f"{name} must be a number or an optax schedule (step -> value), got a "
            f"{type(value).__name__} of {len(value)} values. For one value per epoch use "
            f"robustjax.train.schedules.per_epoch(values, steps_per_epoch, epochs).")
    if not callable(value):
        raise TypeError(f"{name} must be a number or an optax schedule (step -> value), got "
                        f"{type(value).__name__}")
    try:
        probe = jnp.asarray(value(jnp.zeros((), jnp.int32)))
    except Exception as e:  # noqa: BLE001 - report what the schedule did
        raise TypeError(f"{name}: calling the schedule at step 0 failed ({e}); a schedule is a "
                        f"function step -> scalar, like optax.linear_schedule(...)") from None
    if probe.shape != ():
        raise ValueError(f"{name}: the schedule must return a scalar, got shape {probe.shape}")


def value_at(schedule: Schedule, step, dtype=jnp.float32) -> jax.Array:
    """The value of a number or schedule at ``step`` (a traced or concrete int)."""
    if callable(schedule):
        return jnp.asarray(schedule(step), dtype)
    return jnp.asarray(schedule, dtype)


def is_constant(schedule: Schedule) -> bool:
    return not callable(schedule)


def eps_ramp(eps: float, ramp_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """``0`` for ``warmup_steps``, then linear to ``eps`` over ``ramp_steps``, then ``eps``."""
    if ramp_steps < 0 or warmup_steps < 0:
        raise ValueError(f"ramp_steps and warmup_steps must be >= 0, got {ramp_steps}, "
                         f"{warmup_steps}")
    return optax.linear_schedule(0.0, eps, max(ramp_steps, 1), transition_begin=warmup_steps)


def per_epoch(values: Sequence[float], steps_per_epoch: int, epochs: Optional[int] = None
              ) -> optax.Schedule:
    """Piecewise-constant schedule: ``values[e]`` during epoch ``e`` (the last value after).

    ``epochs`` (the number of training epochs) is checked against ``len(values)``.
    """
    values = list(values)
    if not values:
        raise ValueError("per_epoch needs at least one value")
    if epochs is not None and len(values) != epochs:
        raise ValueError(f"per_epoch got {len(values)} values for {epochs} epochs: give exactly "
                         f"one value per epoch")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    table = jnp.asarray(values)

    def schedule(step):
        e = jnp.clip(jnp.asarray(step) // steps_per_epoch, 0, len(values) - 1)
        return table[e]

    return schedule
