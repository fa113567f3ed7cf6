"""Parameter averaging as optax chain members: EMA and SWA.

Averaged weights counter robust overfitting (Rice et al. 2020; Chen et al. 2021, "Robust
overfitting may be mitigated by properly learned smoothening"; Gowal et al. 2020 use an EMA of
the weights with decay 0.995). Both are ``optax.GradientTransformation``s that leave the
updates unchanged and keep an average of the *parameters after the update* in their state.
They must be the **last** member of the chain (they need the final update)::

    opt = optax.chain(optax.sgd(0.1, momentum=0.9), parameter_ema(0.999))
    ...
    averaged_params(opt_state)   # the EMA weights (what ``train.fit`` evaluates and returns)

* ``parameter_ema(decay)``: ``a_t = decay a_{t-1} + (1 - decay) theta_t``; with ``debias`` the
  Adam-style correction ``a_t / (1 - decay^t)`` (``a_0 = 0``) is returned, so early averages are
  not pulled towards zero; without it ``a_0 = theta_0``.
* ``swa(start, every)`` (Izmailov et al. 2018, "Averaging weights leads to wider optima"):
  the equal-weight mean of ``theta_t`` at steps ``t >= start`` with ``(t - start) % every ==
  0``; before ``start`` the average is the current parameters. BatchNorm statistics of the
  averaged weights should be re-estimated on training data afterwards (Izmailov et al.).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax


class ParameterAverageState(NamedTuple):
    """State of ``parameter_ema`` / ``swa``: the running average and its step/sample counts."""

    average: Any
    count: jax.Array
    samples: jax.Array
    debias_decay: jax.Array  # ema with debias: decay (for 1 - decay^count); else 0


def parameter_ema(decay: float = 0.999, debias: bool = True) -> optax.GradientTransformation:
    """Exponential moving average of the parameters (last member of a chain)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")

    def init_fn(params):
        avg = jax.tree_util.tree_map(jnp.zeros_like if debias else jnp.asarray, params)
        return ParameterAverageState(avg, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                                     jnp.asarray(decay if debias else 0.0, jnp.float32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("parameter_ema needs params: call optimizer.update(g, s, params)")
        new = optax.apply_updates(params, updates)
        avg = jax.tree_util.tree_map(lambda a, p: decay * a + (1.0 - decay) * p,
                                     state.average, new)
        return updates, state._replace(average=avg, count=state.count + 1,
                                       samples=state.samples + 1)

    return optax.GradientTransformation(init_fn, update_fn)


def swa(start: int, every: int = 1) -> optax.GradientTransformation:
    """Stochastic weight averaging from step ``start`` every ``every`` steps (last member)."""
    if start < 0 or every < 1:
        raise ValueError(f"swa needs start >= 0 and every >= 1, got start={start}, every={every}")

    def init_fn(params):
        avg = jax.tree_util.tree_map(jnp.asarray, params)
        return ParameterAverageState(avg, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                                     jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("swa needs params: call optimizer.update(g, s, params)")
        new = optax.apply_updates(params, updates)
        t = state.count + 1  # the step whose parameters ``new`` are
        take = (t >= start) & ((t - start) % every == 0)
        n = state.samples
        # Until the first sample the "average" tracks the current weights (weight 1).
        w = jnp.where(n == 0, 1.0, jnp.where(take, 1.0 / (n + 1).astype(jnp.float32), 0.0))
        avg = jax.tree_util.tree_map(lambda a, p: a + w * (p - a), state.average, new)
        return updates, state._replace(average=avg, count=t,
                                       samples=n + take.astype(jnp.int32))

    return optax.GradientTransformation(init_fn, update_fn)


def _find(opt_state) -> Optional[ParameterAverageState]:
    if isinstance(opt_state, ParameterAverageState):
        return opt_state
    if isinstance(opt_state, (tuple, list)):
        for s in opt_state:
            found = _find(s)
            if found is not None:
                return found
    if isinstance(opt_state, dict):
        for s in opt_state.values():
            found = _find(s)
            if found is not None:
                return found
    return None


def averaged_params(opt_state) -> Optional[Any]:
    """The averaged parameters held by a chain's ``parameter_ema``/``swa`` state, or None."""
    state = _find(opt_state)
    if state is None:
        return None
    d = state.debias_decay
    correction = jnp.where(d > 0, 1.0 - d ** jnp.maximum(state.count, 1), 1.0)
    return jax.tree_util.tree_map(lambda a: a / correction.astype(a.dtype), state.average)
